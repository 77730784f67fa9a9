"""Accuracy and CPU cost of the DSP tools on labelled synthetic music, beside librosa and naive madmom.

    python -m training.bench dsp [--n 40] [--duration 30] [--out .cache/bench]

Renders (once; reruns reuse them) a deterministic set of labelled clips with
`training.synth` (tempo 60-180 BPM, 3/4 and 4/4, all 24 keys, many GM
instrument families, with and without drums, chord loops with known times),
then scores, with mir_eval, three systems run in this same process:

- ours: `model.dsp.MusicAnalyzer` (what the tools use);
- naive madmom: each madmom tool on its own from the file path, the way its
  documentation shows (TempoEstimationProcessor for tempo);
- librosa: beat_track for tempo and beats, a Krumhansl key profile on CQT
  chroma, and major/minor chord templates on beat-synchronous chroma.

CPU seconds are process time per clip (all threads), averaged over the set.
The table is printed and written as markdown (and JSON) under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.audio import load_audio
from model.dsp.analyzer import MusicAnalyzer
from model.dsp.pitch_names import NEUTRAL as PITCH_CLASSES
from training.synth import SongLabels, generate_set

TARGETS = {
    "tempo Acc1": ">= 0.95", "tempo Acc2": "1.00", "downbeat F": ">= 0.93", "meter accuracy": ">= 0.95",
    "key MIREX": ">= 0.92", "chord majmin": ">= 0.93", "full analyze": "<= 3 s", "cache hit (decode+hash+read)": "<= 0.02 s",
    "cache hit, warm server (decode+hash+memory)": "<= 0.02 s",
}
ACCURACY_ROWS = ["tempo Acc1", "tempo Acc2", "beat F", "downbeat F", "meter accuracy", "key MIREX", "key exact", "chord majmin"]
TIME_ROWS = ["tempo", "beats + downbeats", "key", "chords", "full analyze", "cache hit (decode+hash+read)",
             "cache hit, warm server (decode+hash+memory)"]


# ---- systems: each returns per-clip estimates and CPU seconds per tool ----------------------


def run_ours(paths: list[Path], cache_dir: Path) -> tuple[list[dict], dict]:
    from agent_tools.cache import ResultCache
    from model.dsp.results import ClipAnalysis

    analyzer = MusicAnalyzer()
    analyzer.warm_up()
    analyzer.analyze(load_audio(paths[0]))  # first calls allocate buffers: keep them out of the timings
    cache = ResultCache(cache_dir)
    estimates, times = [], defaultdict(list)
    for path in paths:
        clip = load_audio(path)
        for tool, call in (("tempo", analyzer.tempo), ("beats + downbeats", analyzer.beats), ("key", analyzer.key),
                           ("chords", analyzer.chords), ("full analyze", analyzer.analyze)):
            analyzer.forget()  # each tool alone, as if it were the only call on this clip
            start = time.process_time()
            result = call(clip)
            times[tool].append(time.process_time() - start)
        cache.put("analysis", clip.sha256, {}, result)
        cache.clear_memory()  # a fresh server process: the hit comes from disk
        start = time.process_time()
        hit = cache.get("analysis", load_audio(path).sha256, {}, ClipAnalysis)  # decode + hash + lookup
        times["cache hit (decode+hash+read)"].append(time.process_time() - start)
        assert hit is not None and hit.sha256 == clip.sha256
        start = time.process_time()  # the same request again: a long-lived server answers from memory
        hit = cache.get("analysis", load_audio(path).sha256, {}, ClipAnalysis)
        times["cache hit, warm server (decode+hash+memory)"].append(time.process_time() - start)
        assert hit is not None and hit.sha256 == clip.sha256
        estimates.append(dict(
            bpm=result.tempo.bpm, beats=result.beats.beats_s, downbeats=result.beats.downbeats_s,
            beats_per_bar=result.beats.beats_per_bar, key=result.key.key,
            chords=[(s.start_s, s.end_s, s.label) for s in result.chords.segments],
        ))
    return estimates, times


def run_naive_madmom(paths: list[Path]) -> tuple[list[dict], dict]:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor
    from madmom.features.chords import (
        CNNChordFeatureProcessor,
        CRFChordRecognitionProcessor,
    )
    from madmom.features.downbeats import (
        DBNDownBeatTrackingProcessor,
        RNNDownBeatProcessor,
    )
    from madmom.features.key import CNNKeyRecognitionProcessor, key_prediction_to_label
    from madmom.features.tempo import TempoEstimationProcessor
    from madmom.processors import SequentialProcessor

    beat_rnn = RNNBeatProcessor()
    tempo = SequentialProcessor([beat_rnn, TempoEstimationProcessor(fps=100)])
    beats = SequentialProcessor([beat_rnn, DBNBeatTrackingProcessor(fps=100)])
    downbeats = SequentialProcessor([RNNDownBeatProcessor(), DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)])
    key = CNNKeyRecognitionProcessor()
    chords = SequentialProcessor([CNNChordFeatureProcessor(), CRFChordRecognitionProcessor()])
    estimates, times = [], defaultdict(list)
    for path in paths:
        name = str(path)
        out = {}
        for tool, call in (("tempo", lambda: tempo(name)), ("beats", lambda: beats(name)),
                           ("beats + downbeats", lambda: downbeats(name)), ("key", lambda: key(name)),
                           ("chords", lambda: chords(name))):
            start = time.process_time()
            out[tool] = call()
            times[tool].append(time.process_time() - start)
        times["full analyze"].append(sum(times[t][-1] for t in ("tempo", "beats", "beats + downbeats", "key", "chords")))
        bar = out["beats + downbeats"]
        estimates.append(dict(
            bpm=float(out["tempo"][0][0]) if len(out["tempo"]) else None,
            beats=list(out["beats"]),
            downbeats=list(bar[bar[:, 1] == 1, 0]) if len(bar) else [],
            beats_per_bar=int(bar[:, 1].max()) if len(bar) else None,
            key=key_prediction_to_label(out["key"]),
            chords=[(float(s), float(e), str(lab)) for s, e, lab in out["chords"]],
        ))
    times.pop("beats")
    return estimates, times


KRUMHANSL_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KRUMHANSL_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def run_librosa(paths: list[Path]) -> tuple[list[dict], dict]:
    import librosa

    rate, hop = 22050, 512
    templates, names = [], []
    for quality, third in (("maj", 4), ("min", 3)):
        for root in range(12):
            t = np.zeros(12)
            t[[root, (root + third) % 12, (root + 7) % 12]] = 1
            templates.append(t / np.linalg.norm(t))
            names.append(f"{PITCH_CLASSES[root]}:{quality}")
    templates = np.array(templates)
    estimates, times = [], defaultdict(list)
    for path in paths:
        y = load_audio(path).resampled(rate).samples
        start = time.process_time()
        bpm, beat_frames = librosa.beat.beat_track(y=y, sr=rate, hop_length=hop)
        times["tempo"].append(time.process_time() - start)
        times["beats + downbeats"].append(times["tempo"][-1])
        beats = librosa.frames_to_time(beat_frames, sr=rate, hop_length=hop)

        start = time.process_time()
        chroma = librosa.feature.chroma_cqt(y=y, sr=rate, hop_length=hop)
        mean = chroma.mean(axis=1) - chroma.mean()
        scores = [np.corrcoef(mean, np.roll(p, t))[0, 1] for p in (KRUMHANSL_MAJOR, KRUMHANSL_MINOR) for t in range(12)]
        best = int(np.argmax(scores))
        key = f"{PITCH_CLASSES[best % 12]} {'minor' if best >= 12 else 'major'}"
        times["key"].append(time.process_time() - start)

        start = time.process_time()
        chroma = librosa.feature.chroma_cqt(y=y, sr=rate, hop_length=hop)
        synced = librosa.util.sync(chroma, beat_frames, aggregate=np.median)
        labels = [names[int(np.argmax(templates @ (c / (np.linalg.norm(c) + 1e-9))))] for c in synced.T]
        edges = np.r_[0.0, beats, len(y) / rate]
        chords = [(float(a), float(b), label) for a, b, label in zip(edges[:-1], edges[1:], labels)]
        times["chords"].append(time.process_time() - start)
        times["full analyze"].append(times["tempo"][-1] + times["key"][-1] + times["chords"][-1])
        estimates.append(dict(bpm=float(np.atleast_1d(bpm)[0]), beats=list(beats), downbeats=None,
                              beats_per_bar=None, key=key, chords=chords))
    return estimates, times


# ---- scoring ----------------------------------------------------------------------------


def score(labels: list[SongLabels], estimates: list[dict]) -> dict[str, float | None]:
    import mir_eval

    acc1, acc2, beat_f, down_f, meter, key_w, key_x = ([] for _ in range(7))
    chord_hits = chord_total = 0.0
    for truth, est in zip(labels, estimates):
        bpm = est["bpm"]
        ratio = bpm / truth.tempo_bpm if bpm else 0.0
        acc1.append(abs(ratio - 1) <= 0.04)
        acc2.append(any(abs(ratio / m - 1) <= 0.04 for m in (1, 2, 0.5, 3, 1 / 3)))
        ref_beats = mir_eval.beat.trim_beats(np.array(truth.beats_s))
        beat_f.append(mir_eval.beat.f_measure(ref_beats, mir_eval.beat.trim_beats(np.array(est["beats"], dtype=float))))
        if est["downbeats"] is not None:
            ref_down = mir_eval.beat.trim_beats(np.array(truth.downbeats_s))
            down_f.append(mir_eval.beat.f_measure(ref_down, mir_eval.beat.trim_beats(np.array(est["downbeats"], dtype=float))))
            meter.append(est["beats_per_bar"] == truth.beats_per_bar)
        key_w.append(mir_eval.key.weighted_score(truth.key, est["key"]) if est["key"] else 0.0)
        key_x.append(key_w[-1] == 1.0)
        ref_iv = np.array([[c.start_s, c.end_s] for c in truth.chords])
        ref_lab = [c.label for c in truth.chords]
        est_iv = np.array([[s, e] for s, e, _ in est["chords"]]).reshape(-1, 2)
        est_lab = [label for _, _, label in est["chords"]]
        est_iv, est_lab = mir_eval.util.adjust_intervals(est_iv, est_lab, ref_iv.min(), ref_iv.max(), "N", "N")
        iv, ref_m, est_m = mir_eval.util.merge_labeled_intervals(ref_iv, ref_lab, est_iv, est_lab)
        durations = mir_eval.util.intervals_to_durations(iv)
        comparison = mir_eval.chord.majmin(ref_m, est_m)
        valid = comparison >= 0
        chord_hits += float(np.sum(durations[valid] * comparison[valid]))
        chord_total += float(np.sum(durations[valid]))
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {
        "tempo Acc1": mean(acc1), "tempo Acc2": mean(acc2), "beat F": mean(beat_f), "downbeat F": mean(down_f),
        "meter accuracy": mean(meter), "key MIREX": mean(key_w), "key exact": mean(key_x),
        "chord majmin": chord_hits / chord_total if chord_total else None,
    }


# ---- report -----------------------------------------------------------------------------


def build_rows(results: dict[str, tuple[dict, dict]]) -> list[list[str]]:
    systems = list(results)
    rows = []
    for metric in ACCURACY_ROWS:
        cells = [f"{results[s][0][metric]:.3f}" if results[s][0].get(metric) is not None else "-" for s in systems]
        rows.append([metric, *cells, TARGETS.get(metric, "")])
    ours_times = results[systems[0]][1]
    for tool in TIME_ROWS:
        cells = []
        for s in systems:
            values = results[s][1].get(tool)
            if not values:
                cells.append("-")
                continue
            seconds = float(np.mean(values))
            ratio = "" if s == systems[0] or not ours_times.get(tool) else f" ({seconds / np.mean(ours_times[tool]):.1f}x)"
            cells.append(f"{seconds:.3f}{ratio}")
        rows.append([f"CPU s/clip: {tool}", *cells, TARGETS.get(tool, "")])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.bench dsp", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="number of clips (default 40)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per clip (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"), help="clips, tables and cache go here")
    parser.add_argument("--workers", type=int, default=2, help="parallel renderers")
    parser.add_argument("--ours-only", action="store_true", help="skip the baselines (quick accuracy check)")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    clip_dir = args.out / f"dsp_clips_{args.duration:g}s_seed{args.seed}"
    labels = generate_set(clip_dir, args.n, seed=args.seed, duration_s=args.duration, workers=args.workers)
    paths = [clip_dir / f"{lab.name}.wav" for lab in labels]
    console = Console(stderr=True)
    results: dict[str, tuple[dict, dict]] = {}
    systems = {"ours": lambda: run_ours(paths, args.out / "dsp_cache")}
    if not args.ours_only:
        systems |= {"naive madmom": lambda: run_naive_madmom(paths), "librosa": lambda: run_librosa(paths)}
    for name, run in systems.items():
        with console.status(f"running {name} on {len(paths)} clips"):
            estimates, times = run()
        results[name] = (score(labels, estimates), times)

    header = ["metric", *results, "target"]
    rows = build_rows(results)
    table = Table(title=f"DSP benchmark: {len(paths)} synthetic clips of {args.duration:g} s (mir_eval)")
    for column in header:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dsp.md").write_text(
        f"DSP benchmark: {len(paths)} synthetic clips of {args.duration:g} s; CPU seconds per clip "
        f"(ratio to ours in brackets).\n\n{markdown}\n")
    report = {name: {"scores": s, "cpu_s": {k: float(np.mean(v)) for k, v in t.items()}} for name, (s, t) in results.items()}
    (args.out / "dsp.json").write_text(json.dumps(report, indent=1))
    console.print(f"wrote {args.out / 'dsp.md'} and {args.out / 'dsp.json'}")
    return report


if __name__ == "__main__":
    main()
