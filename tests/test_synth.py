"""The labelled music generator: deterministic, self-consistent labels, a balanced benchmark plan."""

from __future__ import annotations

import numpy as np
import pytest

from model.dsp.pitch_names import pitch_class
from training.synth import QUALITIES, STYLES, make_song, render_song, set_plan


@pytest.mark.parametrize("style", sorted(STYLES))
def test_labels_match_the_midi(style):
    midi, labels = make_song(5, style=style, duration_s=12.0)
    beat_s = 60 / labels.tempo_bpm
    assert np.allclose(np.diff(labels.beats_s), beat_s, atol=1e-4)
    assert labels.downbeats_s == labels.beats_s[:: labels.beats_per_bar]
    assert labels.meter == f"{STYLES[style].beats_per_bar}/4"
    low, high = STYLES[style].tempo_range
    assert low <= labels.tempo_bpm <= high
    # Chord segments tile the clip and start on downbeats.
    assert labels.chords[0].start_s == 0 and labels.chords[-1].end_s == 12.0
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(labels.chords, labels.chords[1:]))
    assert all(min(abs(c.start_s - d) for d in labels.downbeats_s) < 1e-4 for c in labels.chords)
    # The first bass note of each chord is the labelled chord's root.
    bass = sorted(next(i for i in midi.instruments if i.name == "bass").notes, key=lambda n: n.start)
    for chord in labels.chords:
        first = [n for n in bass if chord.start_s - 1e-3 <= n.start < chord.end_s]
        root, quality = chord.label.split(":")
        assert first and first[0].pitch % 12 == pitch_class(root)
        assert quality in QUALITIES
    # The melody stays in the key's scale.
    tonic = pitch_class(labels.key_tonic)
    scale = {0, 2, 4, 5, 7, 9, 11} if labels.key_mode == "major" else {0, 2, 3, 5, 7, 8, 10}
    lead = next(i for i in midi.instruments if i.name == "lead")
    assert all((n.pitch - tonic) % 12 in scale for n in lead.notes)
    assert labels.has_drums == any(i.is_drum for i in midi.instruments)
    assert labels.lead_instrument == next(x.name for x in labels.instruments if x.role == "lead")
    assert len(labels.progression) == len(labels.progression_roman) == 4


def test_same_seed_same_song_and_audio():
    (midi_a, labels_a), (midi_b, labels_b) = make_song(9, duration_s=6.0), make_song(9, duration_s=6.0)
    assert labels_a == labels_b
    audio_a, audio_b = render_song(midi_a, 6.0), render_song(midi_b, 6.0)
    assert audio_a.dtype == np.float32 and len(audio_a) == 6 * 44100
    np.testing.assert_array_equal(audio_a, audio_b)
    assert 0.05 < np.max(np.abs(audio_a)) <= 0.89
    assert make_song(10, duration_s=6.0)[1] != labels_a


def test_energy_is_heard_as_level():
    """Clips keep the level their velocities give: a per-clip normalisation would erase the energy label."""
    def rms_db(energy: str) -> float:
        midi, labels = make_song(9, duration_s=6.0, style="rock", energy=energy)
        assert labels.energy == energy
        audio = render_song(midi, 6.0)
        assert np.max(np.abs(audio)) <= 0.89
        return 10 * np.log10(np.mean(np.square(audio, dtype=np.float64)))

    low, medium, high = rms_db("low"), rms_db("medium"), rms_db("high")
    assert medium - low > 5 and high - medium > 3, (low, medium, high)


def test_benchmark_plan_is_balanced():
    plan = set_plan(40, seed=0)
    songs = [make_song(p["seed"], duration_s=30.0, **{k: v for k, v in p.items() if k != "seed"})[1] for p in plan]
    assert len({s.key for s in songs}) == 24
    assert {s.meter for s in songs} == {"3/4", "4/4"}
    tempi = [s.tempo_bpm for s in songs]
    assert min(tempi) < 70 and max(tempi) > 170
    assert len({s.style for s in songs}) == len(STYLES)
    assert 0 < sum(not s.has_drums for s in songs) < 20
    families = {i.family for s in songs for i in s.instruments}
    assert len(families) >= 8
