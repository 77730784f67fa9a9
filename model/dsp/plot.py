"""A picture of a clip: mel spectrogram, chord segments, and the waveform with beats and downbeats.

`plot_clip_png(clip, beats=..., downbeats=..., chords=...)` returns PNG bytes.
It draws only what it is given, so it needs no madmom itself: the tools pass in
the cached analysis. Matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from model.audio import AudioClip  # noqa: E402

PLOT_RATE = 22050
N_MELS = 96
HOP = 256

# Chord roots coloured round the circle of fifths, so related chords get related colours.
FIFTHS_ORDER = ["C", "G", "D", "A", "E", "B", "F#", "C#", "Ab", "Eb", "Bb", "F"]
ENHARMONIC = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb", "Cb": "B", "E#": "F", "Fb": "E", "B#": "C"}


def _chord_colour(label: str) -> tuple[float, float, float, float]:
    """A colour for a Harte chord label: hue from the root, lighter for minor, grey for no chord."""
    root = label.split(":")[0].split("/")[0]
    root = ENHARMONIC.get(root, root)
    if root not in FIFTHS_ORDER:
        return (0.85, 0.85, 0.85, 1.0)
    rgba = plt.get_cmap("hsv")(FIFTHS_ORDER.index(root) / 12.0)
    if ":min" in label:
        return tuple(0.55 * c + 0.45 for c in rgba[:3]) + (1.0,)
    return tuple(0.85 * c for c in rgba[:3]) + (1.0,)


def chord_name(label: str) -> str:
    """Lead-sheet spelling of a Harte label: A:min -> Am, G:maj7 -> Gmaj7, C:maj -> C, N -> N.C."""
    if label in ("N", "X"):
        return "N.C."
    root, _, quality = label.partition(":")
    suffix = {"": "", "maj": "", "min": "m", "min7": "m7", "maj7": "maj7", "7": "7"}.get(quality, quality)
    return root + suffix


def _mel_db(samples: np.ndarray) -> np.ndarray:
    import librosa  # heavy import (numba): only when a plot is drawn

    mel = librosa.feature.melspectrogram(y=samples, sr=PLOT_RATE, n_fft=2048, hop_length=HOP, n_mels=N_MELS, fmax=8000)
    return librosa.power_to_db(mel, ref=np.max(mel) if mel.size and np.max(mel) > 0 else 1.0, top_db=80.0)


def plot_clip_figure(
    clip: AudioClip,
    *,
    beats: Sequence[float] = (),
    downbeats: Sequence[float] = (),
    chords: Sequence[tuple[float, float, str]] = (),
    title: str = "",
) -> Figure:
    """The figure: spectrogram on top, chord strip in the middle, waveform with beat lines below.

    Times are seconds from the start of the clip; chords are (start, end, Harte label).
    """
    audio = clip.resampled(PLOT_RATE).samples
    duration = clip.duration_s
    fig, (ax_spec, ax_chords, ax_wave) = plt.subplots(
        3, 1, figsize=(13, 6.5), sharex=True, gridspec_kw={"height_ratios": [3.2, 0.7, 1.6], "hspace": 0.08}
    )

    mel = _mel_db(audio)
    ax_spec.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, N_MELS), interpolation="nearest")
    ax_spec.set_ylabel("mel band")
    ax_spec.set_yticks([])
    if title:
        ax_spec.set_title(title, loc="left", fontsize=11)
    for t in downbeats:  # bar lines over the spectrogram help read the harmony against the meter
        ax_spec.axvline(t, color="white", alpha=0.35, linewidth=0.8)

    for start, end, label in chords:
        ax_chords.axvspan(start, end, color=_chord_colour(label), ec="white", linewidth=1.0)
        width = end - start
        if width >= duration / 60:  # label only segments wide enough to read
            name = chord_name(label)
            ax_chords.text((start + end) / 2, 0.5, name, ha="center", va="center", fontsize=8 if width < duration / 25 else 9,
                           clip_on=True)
    ax_chords.set_yticks([])
    ax_chords.set_ylabel("chords", rotation=0, ha="right", va="center")
    ax_chords.set_ylim(0, 1)

    # Min/max envelope per pixel column: a clean waveform at any clip length.
    columns = 1500
    step = max(1, len(audio) // columns)
    trimmed = audio[: len(audio) // step * step].reshape(-1, step)
    t = (np.arange(trimmed.shape[0]) + 0.5) * step / PLOT_RATE
    ax_wave.fill_between(t, trimmed.min(axis=1), trimmed.max(axis=1), color="#4a6fa5", linewidth=0)
    peak = float(np.max(np.abs(audio))) or 1.0
    ax_wave.set_ylim(-1.05 * peak, 1.05 * peak)
    ax_wave.set_yticks([])
    ax_wave.set_ylabel("waveform")
    downbeat_set = {round(d, 2) for d in downbeats}
    for b in beats:
        if round(b, 2) not in downbeat_set:
            ax_wave.axvline(b, color="#888888", linewidth=0.7, alpha=0.8)
    for d in downbeats:
        ax_wave.axvline(d, color="#d62728", linewidth=1.6)
    ax_wave.set_xlim(0, duration)
    ax_wave.set_xlabel("time (s)")
    handles = [
        plt.Line2D([], [], color="#d62728", linewidth=1.6, label="downbeat"),
        plt.Line2D([], [], color="#888888", linewidth=0.9, label="beat"),
    ]
    if beats or downbeats:
        ax_wave.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.94, bottom=0.09)
    return fig


def plot_clip_png(clip: AudioClip, *, dpi: int = 100, **layers) -> bytes:
    """PNG bytes of `plot_clip_figure(clip, **layers)` (about 1300 x 650 pixels at dpi=100)."""
    fig = plot_clip_figure(clip, **layers)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()
