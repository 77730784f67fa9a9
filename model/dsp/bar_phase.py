"""Bass evidence for the bar phase: which beat of the bar the bass marks.

madmom's downbeat network and our harmonic change leave whole clips half a bar or a beat off
(docs/dsp.md, "Downbeats: labels or decisions?"). In most music the bass plays a new note, or the
kick drum hits, on the downbeat, and the bar's root is held longest there. Both are read per beat
from the 30-200 Hz band only, so the signal is first decimated to ~1.4 kHz: a 256-point window there
has the 5.4 Hz resolution the bass needs at a few MB of memory even for a 20-minute file.
"""

from __future__ import annotations

import numpy as np

BASS_HZ = (30.0, 200.0)
DECIMATE = 32  # 44.1 kHz -> 1378 Hz: Nyquist 689 Hz, well above the band
WINDOW = 256  # 186 ms at 1378 Hz: 5.4 Hz bins
HOP = 16  # ~86 frames per second: onsets to ~12 ms
BLOCK = 4096  # frames per FFT block, so memory stays small on long files
ONSET_WIDTH_S = 0.04  # beats wobble by a frame or two against the onsets
CHUNK = 32 * 65536  # ~48 s at 44.1 kHz per decimation step: a 20-minute file is never copied whole to float64
MARGIN = 32 * 64  # context either side of a chunk, longer than the decimation filter (641 taps)


def _unit(x: np.ndarray) -> np.ndarray:
    """Scaled to 0-1 within the clip (as the harmonic change is), so weights compare across clips."""
    if len(x) == 0:
        return x
    x = x - x.min()
    return x / (x.max() + 1e-9)


def _decimated(samples: np.ndarray) -> np.ndarray:
    """`samples` low-passed and decimated by DECIMATE, in chunks (a clip under CHUNK is one chunk)."""
    from scipy.signal import resample_poly

    parts = []
    for start in range(0, len(samples), CHUNK):
        lo = max(0, start - MARGIN)
        seg = resample_poly(np.asarray(samples[lo:start + CHUNK + MARGIN], dtype=np.float64), 1, DECIMATE)
        skip = (start - lo) // DECIMATE  # start and lo are multiples of DECIMATE, so chunks line up exactly
        parts.append(seg[skip:skip + -(-min(CHUNK, len(samples) - start) // DECIMATE)])
    return np.concatenate(parts) if parts else np.zeros(0)


def bass_band(samples: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """(log-magnitude frames x bass bins, frames per second) of a mono signal."""
    low = _decimated(samples)
    low_rate = rate / DECIMATE
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / low_rate)
    band = np.flatnonzero((freqs >= BASS_HZ[0]) & (freqs <= BASS_HZ[1]))
    padded = np.pad(low, (WINDOW // 2, WINDOW))  # frame i is centred on sample i * HOP
    n_frames = max(0, (len(padded) - WINDOW) // HOP + 1)
    window = np.hanning(WINDOW)
    out = np.empty((n_frames, len(band)), dtype=np.float32)
    for start in range(0, n_frames, BLOCK):
        idx = np.arange(start, min(n_frames, start + BLOCK))[:, None] * HOP + np.arange(WINDOW)
        # Scaled by the window's sum, a sinusoid of amplitude a reads a / 2 whatever the window; at
        # these levels log1p(100 x) compresses only the loudest notes (as the study measured it).
        spectrum = np.fft.rfft(padded[idx] * window, axis=1)[:, band] / window.sum()
        out[start:start + len(idx)] = np.log1p(100.0 * np.abs(spectrum))
    return out, low_rate / HOP


def bass_evidence(samples: np.ndarray, rate: int, beats: np.ndarray) -> dict[str, np.ndarray]:
    """Per beat, 0-1 within the clip: `bass_onset` (30-200 Hz spectral flux at the beat: a new bass
    note or a kick) and `bass_energy` (mean 30-200 Hz level over the beat that starts there)."""
    beats = np.asarray(beats, dtype=float)
    if len(beats) < 2:
        return {"bass_onset": np.zeros(len(beats)), "bass_energy": np.zeros(len(beats))}
    spec, fps = bass_band(samples, rate)
    flux = np.r_[0.0, np.maximum(np.diff(spec, axis=0), 0.0).sum(axis=1)]
    level = spec.sum(axis=1)
    width = int(round(ONSET_WIDTH_S * fps))
    frames = np.round(beats * fps).astype(int)
    n = len(flux)
    onset = np.array([flux[max(0, f - width):f + width + 1].max() if 0 <= f < n else 0.0 for f in frames])
    ends = np.r_[frames[1:], frames[-1] + int(np.median(np.diff(frames)))]
    energy = np.array([level[a:max(b, a + 1)].mean() if 0 <= a < n else 0.0 for a, b in zip(frames, ends)])
    return {"bass_onset": _unit(onset), "bass_energy": _unit(energy)}
