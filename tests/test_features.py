"""Recommendation attributes on signals with known answers and on rendered music."""

import numpy as np
import pytest
from _clips import render_library, write_wav

from model.audio import load_audio
from model.dsp.features import danceability, integrated_loudness, signal_features

RATE = 44100


def clip_of(tmp_path, name, samples):
    return load_audio(write_wav(tmp_path / f"{name}.wav", samples, RATE))


def sine(freq, seconds=6.0, amplitude=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def clicks(bpm, seconds=8.0):
    """Short decaying noise bursts on every beat: a metronome."""
    rng = np.random.default_rng(0)
    out = np.zeros(int(seconds * RATE))
    burst = rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300.0) * 0.8
    for start in np.arange(0, seconds, 60.0 / bpm):
        i = int(start * RATE)
        out[i : i + 2000] += burst[: len(out) - i]
    return out


def test_loudness_of_a_sine_matches_bs1770(tmp_path):
    # A 997 Hz sine at full scale reads -3.01 LUFS; at half amplitude 6.02 dB less.
    lufs = integrated_loudness(clip_of(tmp_path, "sine", sine(997.0, amplitude=0.5)))
    assert lufs == pytest.approx(-9.03, abs=0.3)


def test_quieter_copy_is_20_lu_lower_and_less_energetic(tmp_path):
    rng = np.random.default_rng(1)
    music = clicks(120) + 0.05 * rng.standard_normal(int(8 * RATE))
    loud = signal_features(clip_of(tmp_path, "loud", music * 0.9))
    quiet = signal_features(clip_of(tmp_path, "quiet", music * 0.09))
    assert loud.loudness_lufs - quiet.loudness_lufs == pytest.approx(20.0, abs=0.5)
    assert quiet.energy < loud.energy
    assert 0.0 <= quiet.energy <= 1.0 and 0.0 <= loud.energy <= 1.0


def test_a_metronome_has_a_clear_pulse_and_noise_has_none(tmp_path):
    metronome = signal_features(clip_of(tmp_path, "metronome", clicks(120)))
    noise = signal_features(clip_of(tmp_path, "noise", 0.3 * np.random.default_rng(2).standard_normal(8 * RATE)))
    assert metronome.rhythmic_strength > 0.6
    assert noise.rhythmic_strength < 0.3
    # The strongest periodicity is the beat or a whole multiple of it (a bar of 2 or 4).
    assert min(abs(120.0 / metronome.pulse_bpm - m) for m in (0.5, 1, 2, 3, 4)) < 0.05


def test_chroma_of_an_a_is_the_a_bin(tmp_path):
    features = signal_features(clip_of(tmp_path, "a440", sine(440.0)))
    assert int(np.argmax(features.chroma)) == 9
    assert sum(features.chroma) == pytest.approx(1.0, abs=1e-3)


def test_danceability_prefers_dance_tempi():
    assert danceability(0.8, 120) > danceability(0.8, 70) > 0
    assert danceability(0.8, 120) > danceability(0.8, 200)
    assert danceability(0.0, 120) == 0.0
    assert 0.0 <= danceability(1.0, 120) <= 1.0


def test_attributes_of_rendered_music_agree_with_its_labels(tmp_path_factory):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools

    folder = tmp_path_factory.mktemp("library")
    labels = render_library(folder)
    toolbox = MusicTools(Settings(roots=(folder,), cache_dir=folder / "cache"))
    fast = toolbox.clip_attributes(str(folder / "rock_e_minor_fast.wav"))
    slow = toolbox.clip_attributes(str(folder / "ballad_f_major_slow.wav"))
    assert fast.attributes.tempo_bpm == pytest.approx(labels["rock_e_minor_fast"].tempo_bpm, rel=0.04)
    assert fast.attributes.mode == "minor" and slow.attributes.mode == "major"
    assert fast.attributes.key == "E minor"
    assert fast.attributes.danceability > slow.attributes.danceability
    assert -40 < fast.attributes.loudness_lufs < -5
    assert "BPM" in fast.summary and "LUFS" in fast.summary
    assert fast.attributes.tags is None  # tags only when asked for


@pytest.mark.slow
def test_tags_come_from_the_model_and_say_when_it_is_untrained(tmp_path_factory):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools
    from model.dsp.features import GENRE_TAGS, INSTRUMENT_TAGS, MOOD_TAGS

    folder = tmp_path_factory.mktemp("tags")
    render_library(folder)
    toolbox = MusicTools(Settings(roots=(folder,), cache_dir=folder / "cache"))
    report = toolbox.clip_attributes(str(folder / "pop_c_major_fast.wav"), with_tags=True)
    tags = report.attributes.tags
    assert tags is not None
    assert tags.genre in GENRE_TAGS and tags.mood in MOOD_TAGS and tags.instrument in INSTRUMENT_TAGS
    assert 0 < tags.genre_probability <= 1
    assert tags.trained == toolbox.model.info().trained
    if not tags.trained:
        assert "untrained" in report.attributes.tags_note
