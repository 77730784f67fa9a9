"""Shared fixtures: labelled music rendered once per test session, and one warm analyzer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Converted SmolLM2 weights are shared by every test (and every run) in the repo's own
# cache, so the one-off GGUF conversion happens once per machine, not once per test.
# The variable reaches servers started as subprocesses; in-process code is told directly.
os.environ.setdefault("TINYMU_WEIGHTS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "weights"))

from model.lm import smollm2

smollm2.use_weights_dir(Path(os.environ["TINYMU_WEIGHTS_DIR"]))

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
