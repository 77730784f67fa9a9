"""The chorale labels describe the rendered timing: the score's bar grid at our tempo, fermatas not held."""

from __future__ import annotations

import numpy as np
import pytest

music21 = pytest.importorskip("music21")


def test_the_rebuilt_midi_keeps_the_scores_timing_so_bar_grid_labels_fall_on_its_notes():
    from training.bench.dsp_labelaudit import fermata_beats
    from training.corpora import bar_grid_downbeats, measure_spans, score_midi_at

    score = music21.corpus.parse("bach/bwv101.7.mxl")
    downbeats_q = bar_grid_downbeats(measure_spans(score.parts[0]), 4.0)
    midi = score_midi_at(score, 86.0)
    beat = 60.0 / 86.0
    assert len(midi.get_tempo_changes()[1]) == 1 and midi.get_tempo_changes()[1][0] == pytest.approx(86.0, abs=0.01)
    onsets_q = np.array(sorted({n.start for inst in midi.instruments for n in inst.notes})) / beat
    offsets_q = np.array(sorted({float(n.getOffsetInHierarchy(score)) for p in score.parts for n in p.recurse().notes}))
    # A held fermata would push every later onset; the MIDI plays the written offsets at our tempo.
    np.testing.assert_allclose(onsets_q, offsets_q, atol=1e-3)
    assert all(np.min(np.abs(onsets_q - q)) < 1e-3 for q in downbeats_q)
    assert downbeats_q[:4] == [1.0, 5.0, 9.0, 13.0]
    # Its phrases end on beat 3 of the labelled bar: where every bar tracker puts its downbeats.
    assert fermata_beats(score, 1.0, 4.0, 30.0 / beat) == {3: 5}


def test_fermata_beats_count_on_the_grid_of_the_opening_pickup():
    from training.bench.dsp_labelaudit import fermata_beats

    part = music21.stream.Part()
    part.append(music21.meter.TimeSignature("4/4"))
    for number, lengths in enumerate([[1.0], [1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]]):
        bar = music21.stream.Measure(number=number)
        for length in lengths:
            bar.append(music21.note.Note("C4", quarterLength=length))
        part.append(bar)
    notes = list(part.recurse().notes)
    notes[3].expressions.append(music21.expressions.Fermata())  # quarter 3: beat 3 of the bar at 1
    notes[4].expressions.append(music21.expressions.Fermata())  # quarter 5: beat 1
    score = music21.stream.Score()
    score.insert(0, part)
    assert fermata_beats(score, 1.0, 4.0, 100.0) == {3: 1, 1: 1}
    assert fermata_beats(score, 1.0, 4.0, 4.0) == {3: 1}
