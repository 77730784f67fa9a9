"""Label corrections the DSP benchmark applies on top of `training.corpora`, each read from the source score.

Chorale downbeats: `training.corpora.chorale_clips` takes every measure after the opening pickup as
a bar start. music21's Bach chorales split a bar at most phrase ends (a 3-beat measure with the
fermata, then a 1-beat measure: the next phrase's pickup), so that 1-beat measure was labelled a
downbeat although it is the fourth beat of a bar. Here a measure starts a bar only when it lies on
the score's bar grid (its offset minus the opening pickup is a whole number of bars), which is
what the score's meter says; every system is scored against the corrected labels (docs/dsp.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from training.corpora import Clip


def bar_grid_downbeats(measures: list[tuple[float, float]], bar_quarters: float) -> list[float]:
    """Offsets (quarter notes) of the measures that start a bar, from (offset, length) of each measure:
    those on the grid that the opening pickup (a first measure shorter than a bar) sets."""
    if not measures:
        return []
    pickup = measures[0][1] if measures[0][1] < bar_quarters else 0.0
    return [offset for offset, _ in measures if offset >= pickup and (offset - pickup) % bar_quarters < 1e-6]


def _score_downbeats_s(source: str, tempo_bpm: float, end_s: float) -> list[float]:
    import music21

    name = source.split()[-1]  # "music21 corpus bwv104.6.mxl"
    score = music21.corpus.parse(f"bach/{name}")
    meters = {m.ratioString for m in score.recurse().getElementsByClass(music21.meter.TimeSignature)}
    if len(meters) != 1:
        raise ValueError(f"{name}: the meter changes ({sorted(meters)}); one bar grid cannot describe it")
    bar = score.recurse().getElementsByClass(music21.meter.TimeSignature).first().barDuration.quarterLength
    measures = [(float(m.offset), float(m.duration.quarterLength)) for m in score.parts[0].getElementsByClass(music21.stream.Measure)]
    beat_s = 60.0 / tempo_bpm
    return [round(q * beat_s, 4) for q in bar_grid_downbeats(measures, bar) if q * beat_s < end_s]


def corrected(clips: list[Clip], cache: Path) -> list[Clip]:
    """`clips` with the chorales' downbeats read again from their scores (cached in `cache`)."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    out = []
    for clip in clips:
        if clip.set != "chorales":
            out.append(clip)
            continue
        if clip.name not in known:
            known[clip.name] = _score_downbeats_s(clip.source, clip.tempo_bpm, clip.duration_s)
        out.append(replace(clip, downbeats_s=known[clip.name],
                           notes={**clip.notes, "downbeats_before_correction": len(clip.downbeats_s)}))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known))
    return out
