"""Small labelled music clips for the recommendation, plot and LangChain tests (rendered, never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from training.synth import SongLabels, write_song

# (name, seed, style, tempo, (tonic pitch class, mode)): a query and neighbours that differ in tempo and mode.
LIBRARY = [
    ("query_rock_a_minor", 11, "rock", 100.0, (9, "minor")),
    ("rock_e_minor_fast", 12, "rock", 132.0, (4, "minor")),
    ("pop_c_major_fast", 13, "pop", 126.0, (0, "major")),
    ("ballad_d_minor_slow", 14, "ballad", 78.0, (2, "minor")),
    ("ballad_f_major_slow", 15, "ballad", 72.0, (5, "major")),
]


def render_library(folder: Path, duration_s: float = 12.0) -> dict[str, SongLabels]:
    """Render LIBRARY into `folder` (skipping clips already there) and return their labels by name."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for name, seed, style, tempo, key in LIBRARY:
        wav, kept = folder / f"{name}.wav", folder / f"{name}.labels"
        if wav.exists() and kept.exists():
            labels[name] = SongLabels.model_validate_json(kept.read_text())
            continue
        labels[name] = write_song(folder, seed, duration_s=duration_s, name=name, style=style, tempo_bpm=tempo, key=key)
        # Keep the labels under a name the indexer ignores: the folder should hold only audio files.
        (folder / f"{name}.json").rename(kept)
    return labels


def write_wav(path: Path, samples: np.ndarray, rate: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")
    return path
