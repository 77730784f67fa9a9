"""Shared fixtures: labelled music rendered once per test session, and one warm analyzer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from model.lm import smollm2

# The tests use the SmolLM2 weights `make setup` left (`tinymu setup`: the user cache), so the
# one-off conversion happens once per machine. The variable names that folder for servers started
# as subprocesses, some of them with a scratch HOME; in-process code is told directly.
os.environ.setdefault("TINYMU_WEIGHTS_DIR", str(smollm2.cache_dir()))
WEIGHTS_DIR = Path(os.environ["TINYMU_WEIGHTS_DIR"])
smollm2.use_weights_dir(WEIGHTS_DIR)


@pytest.fixture(autouse=True)
def _weights_dir_restored():
    """A test may point the weights cache elsewhere (tinymu setup, a scratch cache); the next one
    starts from the shared folder again."""
    yield
    smollm2.use_weights_dir(WEIGHTS_DIR)


from training.synth import SongLabels, write_song

# Three arrangements that differ in everything the DSP tools measure.
LABELLED_SONGS = {
    "rock_a_minor": dict(seed=11, style="rock", tempo_bpm=128.0, key=(9, "minor")),
    "waltz_eb_major": dict(seed=12, style="waltz", tempo_bpm=100.0, key=(3, "major")),
    "chamber_f_major": dict(seed=13, style="chamber", tempo_bpm=108.0, key=(5, "major")),
}
CLIP_SECONDS = 20.0


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    labels: SongLabels


@pytest.fixture(scope="session")
def labelled_clips(tmp_path_factory) -> dict[str, LabelledClip]:
    folder = tmp_path_factory.mktemp("labelled")
    clips = {}
    for name, choices in LABELLED_SONGS.items():
        labels = write_song(folder, duration_s=CLIP_SECONDS, name=name, **choices)
        clips[name] = LabelledClip(folder / f"{name}.wav", labels)
    return clips


@pytest.fixture(scope="session")
def analyzer():
    from model.dsp.analyzer import MusicAnalyzer

    return MusicAnalyzer()
