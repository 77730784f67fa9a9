"""Chorale label audit: do the chorale and repeat-form labels describe the rendered audio?

    python -m training.bench dsp_labelaudit [--corpora .cache/corpora] [--out .cache/bench]
    python -m training.bench dsp_labelaudit --sections   # + boundary F@0.5 s against each section's first bar line

For every music21 chorale of the DSP benchmark (`chorales`, 24 clips) and of the sections benchmark
(`forms`, 12 pieces with a written repeat), from the labels already made (nothing is rendered):

- the MIDI is rebuilt from the score the way the set made it (our tempo mark, repeats expanded for
  `forms`): one tempo, and the note onsets against the audio's onset peaks (librosa), in ms;
- chorales: the downbeat labels against the score's bar grid now (`bar_grid_downbeats`) and the
  share of them on a MIDI note onset;
- forms: the second A section's notes against the first A's (same pitches at the same times from
  the labelled section start), and whether each labelled section start is a bar line or a pickup;
- where the fermatas fall in the labelled bar (first clip's duration) beside each bar tracker's
  downbeat F from the benchmark's cached estimates (`<out>/dsp_estimates/`; "-" where none).

With --sections, every section system of `training.bench.dsp` also runs on the forms and is scored
at 0.5 s against the labels as made (phrase starts, where the repeated music begins) and, as a what-if,
against each section's first bar line (the first labelled downbeat at or after its start).

A label that disagreed with its audio would show as a large onset error, a tempo other than the
label's, a label off the bar grid or a second A that is not the first. See docs/dsp.md ("Chorale labels
audited against the audio").
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from training.bench.dsp import f_measure
from training.corpora import bar_grid_downbeats, measure_spans, opening_pickup, score_midi_at

BAR_TRACKERS = ["ours", "madmom"]


def fermata_beats(score, pickup_q: float, bar_q: float, until_q: float) -> Counter:
    """How many fermatas of the top part start on each beat (1-based) of the bar grid set by the
    opening pickup, before quarter `until_q`."""
    import music21

    counts: Counter = Counter()
    for note in score.parts[0].recurse().notes:
        if any(isinstance(e, music21.expressions.Fermata) for e in note.expressions):
            q = float(note.getOffsetInHierarchy(score))
            if q < until_q:
                counts[round((q - pickup_q) % bar_q) + 1] += 1
    return counts


def onset_error_ms(wav: Path, onsets_s: np.ndarray) -> tuple[float, float]:
    """Median and 90th percentile distance (ms) from each onset peak of the audio to the nearest MIDI onset."""
    import librosa
    import soundfile as sf

    samples, rate = sf.read(wav, dtype="float32")
    envelope = librosa.onset.onset_strength(y=samples, sr=rate, hop_length=256)
    peaks = librosa.onset.onset_detect(onset_envelope=envelope, sr=rate, hop_length=256, units="time")
    errors = np.array([np.min(np.abs(onsets_s - p)) for p in peaks]) * 1000
    return float(np.median(errors)), float(np.quantile(errors, 0.9))


def downbeat_f(clip: dict, cache: Path, system: str, version: str) -> float | None:
    entry = cache / system / f"{clip['set']}_{clip['name']}_{version}.json"
    if not entry.exists():
        return None
    return f_measure(clip["downbeats_s"], json.loads(entry.read_text())["downbeats"])


def audit(corpora: Path, cache: Path) -> list[str]:
    import music21

    from training.bench.dsp import _ours_version

    versions = {"ours": _ours_version(), "madmom": "1"}
    scores = {Path(str(p)).stem.replace(".", "_"): p for p in music21.corpus.getComposer("bach") if Path(str(p)).name.startswith("bwv")}
    lines, by_fermata = [], {}
    for set_name in ("chorales", "forms"):
        labels_file = corpora / set_name / "labels.json"
        if not labels_file.exists():
            lines.append(f"{set_name}: no labels at {labels_file} (run the benchmark first)")
            continue
        for name, clip in json.loads(labels_file.read_text()).items():
            beat, bar = 60.0 / clip["tempo_bpm"], clip["beats_per_bar"]
            score = music21.corpus.parse(scores[name])
            if set_name == "forms":
                score = score.expandRepeats()
            midi = score_midi_at(score, clip["tempo_bpm"])  # the very function that made the set's MIDI
            onsets = np.array(sorted({n.start for inst in midi.instruments for n in inst.notes}))
            onsets = onsets[onsets < clip["duration_s"]]
            median, p90 = onset_error_ms(corpora / clip["path"], onsets)
            tempi = midi.get_tempo_changes()[1]
            row = (f"{set_name} {name} ({'held out' if clip['held_out'] else 'tuning'}, {bar}/4, {clip['tempo_bpm']:g} bpm):"
                   f" MIDI tempi {[round(float(t), 2) for t in tempi]}, audio onset peaks to MIDI onsets {median:.0f} ms"
                   f" (90 % {p90:.0f} ms)")
            measures = measure_spans(score.parts[0])
            pickup = opening_pickup(measures, bar)
            if set_name == "chorales":
                grid = np.array(bar_grid_downbeats(measures, float(bar))) * beat
                grid = grid[grid < clip["duration_s"]]
                labelled = np.array(clip["downbeats_s"])
                same = len(grid) == len(labelled) and bool(np.allclose(grid, labelled, atol=1e-3))
                on_onset = np.mean([np.min(np.abs(onsets - d)) < 0.005 for d in labelled])
                fermatas = fermata_beats(score, pickup, float(bar), clip["duration_s"] / beat)
                scores_f = {s: downbeat_f(clip, cache, s, versions[s]) for s in BAR_TRACKERS}
                row += (f"; downbeat labels = score's bar grid: {same}, on a MIDI onset: {on_onset:.2f}"
                        f"; fermatas by beat of the bar {dict(sorted(fermatas.items()))}; downbeat F "
                        + ", ".join(f"{s} {'-' if f is None else f'{f:.2f}'}" for s, f in scores_f.items()))
                if fermatas:
                    top = max(sorted(fermatas), key=lambda b: fermatas[b])
                    by_fermata.setdefault(f"most fermatas on beat {top}", []).append(scores_f)
            else:
                notes = sorted((round(n.start / beat, 2), n.pitch) for inst in midi.instruments for n in inst.notes)
                (a0, a1, _), (b0, b1, _) = [(round(s / beat, 2), round(e / beat, 2), x) for s, e, x in clip["sections"][:2]]
                first = [(round(t - a0, 2), p) for t, p in notes if a0 - 0.01 <= t < a1 - 0.01]
                second = [(round(t - b0, 2), p) for t, p in notes if b0 - 0.01 <= t < b1 - 0.01]
                starts = [round(s / beat, 2) for s, _, _ in clip["sections"]]
                kinds = ["bar line" if (q - pickup) % bar < 1e-6 else f"pickup ({bar - (q - pickup) % bar:g} beat)" for q in starts]
                row += (f"; second A = first A: {first == second} ({len(first)} notes)"
                        f"; section starts (quarters) {starts}: {', '.join(kinds)}")
            lines.append(row)
    for group, rows in sorted(by_fermata.items()):
        means = {s: np.mean([r[s] for r in rows if r[s] is not None]) if any(r[s] is not None for r in rows) else None for s in BAR_TRACKERS}
        lines.append(f"chorales with {group}: n {len(rows)}, mean downbeat F "
                     + ", ".join(f"{s} {'-' if m is None else f'{m:.3f}'}" for s, m in means.items()))
    return lines


def sections_what_if(corpora: Path) -> list[str]:
    """Boundary F@0.5 s of each section system on the forms: labels as made, and at each section's first bar line."""
    import mir_eval

    from training.bench.dsp import SECTION_SYSTEMS, sections_of

    clips = json.loads((corpora / "forms" / "labels.json").read_text())
    state, lines = {}, []
    for system in SECTION_SYSTEMS:
        for part, held in (("tuning", False), ("held out", True)):
            rows = []
            for clip in (c for c in clips.values() if c["held_out"] == held):
                found, _ = sections_of(system, corpora / clip["path"], state)
                downbeats = np.array(clip["downbeats_s"])
                starts = [s for s, _, _ in clip["sections"]]
                bar_starts = [0.0] + [float(downbeats[downbeats >= s - 1e-3][0]) for s in starts[1:]]
                end = clip["sections"][-1][1]
                est = np.array([[a, b] for a, b, _ in found]).reshape(-1, 2)
                est, _ = mir_eval.util.adjust_intervals(est, [x for *_, x in found], 0.0, end, "N", "N")
                rows.append([mir_eval.segment.detection(np.array(list(zip(ref, ref[1:] + [end]))), est, window=0.5, trim=True)[2]
                             for ref in (starts, bar_starts)])
            made, bar = np.mean(rows, axis=0)
            lines.append(f"forms {part} (n {len(rows)}) {system}: boundary F@0.5 s, labels as made {made:.3f},"
                         f" at each section's first bar line (what-if) {bar:.3f}")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path(".cache/corpora"))
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"), help="the DSP benchmark's output folder (cached estimates)")
    parser.add_argument("--sections", action="store_true", help="also score the section systems against both boundary conventions")
    args = parser.parse_args(argv)
    lines = audit(args.corpora, args.out / "dsp_estimates") + (sections_what_if(args.corpora) if args.sections else [])
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
