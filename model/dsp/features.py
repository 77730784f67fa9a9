"""Recommendation attributes of a clip, in the spirit of the retired Spotify audio-features.

Spotify's `audio-features` endpoint gave recommendation agents tempo, key,
mode, loudness, energy and danceability. Most of it can be measured from the
signal; this module defines each value precisely (definitions and ranges are
in the field descriptions, which is also what agents read) so that numbers are
comparable across clips:

- `loudness_lufs`: integrated loudness, ITU-R BS.1770-4 (pyloudnorm), in LUFS.
- `energy`: perceived intensity in [0, 1] from loudness, onset density and
  brightness (formula below).
- `rhythmic_strength`: pulse clarity in [0, 1], how strongly the onset
  envelope repeats at one beat period (autocorrelation peak).
- `danceability`: rhythmic strength weighted by how comfortable the tempo is
  for dancing (most dance music sits between 90 and 140 BPM).
- `chroma`: mean 12-bin pitch-class profile (C..B), the harmonic colour used for
  similarity search.

Tempo, key and mode come from the madmom analysis (`model.dsp.analyzer`); genre, mood and
instrument tags from the music-language model (`model_tags`), flagged when its
weights are untrained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyloudnorm
from pydantic import BaseModel, Field

from model.audio import AudioClip
from model.dsp.results import KeyResult, TempoResult

FEATURE_RATE = 22050
HOP = 512  # onset envelope frames of 23 ms
LOUDNESS_FLOOR_LUFS = -70.0  # reported for (near-)silence instead of -inf
PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Fixed vocabularies the model picks tags from: a closed list keeps tags comparable across clips.
# At most 8 options each: the engine's multiple-choice scorer takes 2 to 8.
GENRE_TAGS = ("rock", "pop", "jazz", "classical", "electronic", "hip hop", "folk", "latin")
MOOD_TAGS = ("happy", "sad", "calm", "energetic", "dark", "romantic", "tense", "playful")
INSTRUMENT_TAGS = ("piano", "guitar", "drums", "bass", "strings", "brass", "synthesizer", "vocals")


class SignalFeatures(BaseModel):
    """Attributes measured directly from the samples (no madmom, no model)."""

    loudness_lufs: float = Field(
        description="Integrated loudness (ITU-R BS.1770-4, K-weighted, gated) in LUFS; typically -60..0, "
        f"streaming masters sit near -14; {LOUDNESS_FLOOR_LUFS:g} for silence."
    )
    energy: float = Field(
        ge=0.0, le=1.0,
        description="Perceived intensity 0..1: 0.5 x loudness score (LUFS mapped -40..-8 onto 0..1) + "
        "0.3 x onset density score (mean spectral flux) + 0.2 x brightness score (spectral centroid 500..4000 Hz). "
        "Quiet sparse ballads score low, loud dense rock high.",
    )
    rhythmic_strength: float = Field(
        ge=0.0, le=1.0,
        description="Pulse clarity 0..1: highest normalised autocorrelation of the onset envelope at a beat period "
        "between 0.25 and 1.5 s (40-240 BPM). Near 1 for a steady, clearly accented beat; near 0 for rubato or drones.",
    )
    pulse_bpm: float = Field(description="Beat rate at that autocorrelation peak, in BPM (a rough tempo, may be half or double).")
    spectral_centroid_hz: float = Field(description="Mean spectral centroid in Hz: brightness of the timbre.")
    onset_density: float = Field(description="Mean positive spectral flux per frame (onset strength units, ~0..5).")
    chroma: list[float] = Field(
        description="Mean pitch-class profile, 12 values for C, C#, D, Eb, E, F, F#, G, Ab, A, Bb, B, summing to 1."
    )


def _unit(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def integrated_loudness(clip: AudioClip) -> float:
    """Integrated loudness in LUFS (BS.1770-4); LOUDNESS_FLOOR_LUFS for silence."""
    meter = pyloudnorm.Meter(clip.sample_rate)
    samples = clip.samples.astype(np.float64)
    block = int(0.4 * clip.sample_rate)
    if samples.size < block:  # the meter needs one 400 ms gating block
        samples = np.pad(samples, (0, block - samples.size))
    lufs = meter.integrated_loudness(samples)
    return round(max(float(lufs), LOUDNESS_FLOOR_LUFS), 2) if math.isfinite(lufs) else LOUDNESS_FLOOR_LUFS


def _onset_envelope_and_spectrum(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive log-magnitude spectral flux per frame, the magnitude spectrogram and its bin frequencies."""
    n_fft = 2048
    if samples.size < n_fft:
        samples = np.pad(samples, (0, n_fft - samples.size))
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::HOP]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).astype(np.float32)
    log_spec = np.log1p(100.0 * spectrum)
    flux = np.maximum(np.diff(log_spec, axis=0), 0.0).mean(axis=1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / FEATURE_RATE)
    return flux, spectrum, freqs


def pulse_clarity(envelope: np.ndarray, frame_rate: float) -> tuple[float, float]:
    """(clarity 0..1, BPM) of the strongest periodicity of an onset envelope between 40 and 240 BPM."""
    env = envelope - envelope.mean()
    if env.size < 8 or not np.any(env):
        return 0.0, 0.0
    spectrum = np.fft.rfft(env, n=2 * env.size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[: env.size]
    acf /= acf[0]
    lo, hi = int(frame_rate * 0.25), min(int(frame_rate * 1.5), env.size - 1)
    if hi <= lo:
        return 0.0, 0.0
    lag = lo + int(np.argmax(acf[lo:hi]))
    return _unit(acf[lag]), round(60.0 * frame_rate / lag, 1)


def _chroma(spectrum: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Mean pitch-class energy of spectral bins between 55 Hz and 5 kHz, normalised to sum 1."""
    band = (freqs >= 55.0) & (freqs <= 5000.0)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0)).astype(int) % 12
    pitch_class = (pitch_class + 9) % 12  # A=9 when C=0
    energy = (spectrum[:, band] ** 2).mean(axis=0)
    profile = np.bincount(pitch_class, weights=energy, minlength=12)
    total = profile.sum()
    return profile / total if total > 0 else np.full(12, 1.0 / 12)


def signal_features(clip: AudioClip) -> SignalFeatures:
    """Loudness, energy, rhythmic strength, brightness and chroma of a clip (about 0.1 s per 30 s)."""
    loudness = integrated_loudness(clip)
    samples = clip.resampled(FEATURE_RATE).samples if clip.sample_rate != FEATURE_RATE else clip.samples
    flux, spectrum, freqs = _onset_envelope_and_spectrum(np.asarray(samples, dtype=np.float32))
    clarity, pulse_bpm = pulse_clarity(flux, FEATURE_RATE / HOP)
    power = spectrum.sum(axis=1)
    centroid = float((spectrum @ freqs).sum() / power.sum()) if power.sum() > 0 else 0.0
    onset_density = float(flux.mean()) if flux.size else 0.0

    loudness_score = _unit((loudness + 40.0) / 32.0)
    density_score = _unit(onset_density / 0.6)
    brightness_score = _unit((centroid - 500.0) / 3500.0)
    energy = 0.5 * loudness_score + 0.3 * density_score + 0.2 * brightness_score
    if loudness <= LOUDNESS_FLOOR_LUFS:
        energy, clarity = 0.0, 0.0
    return SignalFeatures(
        loudness_lufs=loudness,
        energy=round(energy, 3),
        rhythmic_strength=round(clarity, 3),
        pulse_bpm=pulse_bpm,
        spectral_centroid_hz=round(centroid, 1),
        onset_density=round(onset_density, 4),
        chroma=[round(float(v), 4) for v in _chroma(spectrum, freqs)],
    )


def danceability(rhythmic_strength: float, tempo_bpm: float | None) -> float:
    """Rhythmic strength x tempo comfort: a Gaussian in log2-tempo centred on 120 BPM (sigma 0.6 octave),
    with tempi folded so that 60 and 240 BPM count like 120 (people dance to half or double time)."""
    if not tempo_bpm or tempo_bpm <= 0:
        return round(rhythmic_strength * 0.5, 3)
    octave = math.log2(tempo_bpm / 120.0)
    folded = min(abs(octave), abs(octave + 1) + 0.5, abs(octave - 1) + 0.5)  # half/double time count, a bit less
    comfort = math.exp(-0.5 * (folded / 0.6) ** 2)
    return round(_unit(rhythmic_strength * comfort), 3)


class ModelTags(BaseModel):
    """Genre, mood and instrument tags picked by the music-language model from fixed lists."""

    genre: str = Field(description=f"One of: {', '.join(GENRE_TAGS)}.")
    genre_probability: float = Field(ge=0.0, le=1.0)
    mood: str = Field(description=f"One of: {', '.join(MOOD_TAGS)}.")
    mood_probability: float = Field(ge=0.0, le=1.0)
    instrument: str = Field(description=f"Most prominent instrument, one of: {', '.join(INSTRUMENT_TAGS)}.")
    instrument_probability: float = Field(ge=0.0, le=1.0)
    trained: bool = Field(description="False when the model's weights are untrained: the tags are then meaningless.")


def model_tags(choose: Callable[[str, list[str]], Any], trained: bool) -> ModelTags:
    """Tags from multiple-choice calls: `choose(question, options)` returns the engine's choice
    (an object with `.index` and `.probabilities`), e.g. `lambda q, o: engine.choose(samples, q, o)`.
    """
    picks: dict[str, Any] = {}
    for field, question, options in (
        ("genre", "Which genre best describes this music?", GENRE_TAGS),
        ("mood", "Which mood best describes this music?", MOOD_TAGS),
        ("instrument", "Which instrument is most prominent in this music?", INSTRUMENT_TAGS),
    ):
        choice = choose(question, list(options))
        picks[field] = options[choice.index]
        picks[f"{field}_probability"] = round(float(choice.probabilities[choice.index]), 4)
    return ModelTags(**picks, trained=trained)


class ClipAttributes(BaseModel):
    """Recommendation attributes of a clip (the retired Spotify audio-features, measured locally)."""

    summary: str
    tempo_bpm: float | None = Field(description="Tempo in BPM from madmom's beat tracker; None without a steady beat.")
    key: str | None = Field(description="Key from madmom's key classifier, e.g. 'A minor'; None without tonal content.")
    mode: str | None = Field(description="'major' or 'minor' (Spotify's mode 1/0); None when no key was found.")
    key_confidence: float = Field(ge=0.0, le=1.0, description="Probability of the reported key, 0..1.")
    loudness_lufs: float = SignalFeatures.model_fields["loudness_lufs"]
    energy: float = SignalFeatures.model_fields["energy"]
    danceability: float = Field(
        ge=0.0, le=1.0,
        description="0..1: rhythmic_strength x tempo comfort (a Gaussian in log-tempo centred on 120 BPM, "
        "0.6 octave wide; half and double time count slightly less). High for steady beats at 90-150 BPM.",
    )
    rhythmic_strength: float = SignalFeatures.model_fields["rhythmic_strength"]
    spectral_centroid_hz: float = SignalFeatures.model_fields["spectral_centroid_hz"]
    chroma: list[float] = SignalFeatures.model_fields["chroma"]
    tags: ModelTags | None = Field(default=None, description="Genre, mood and instrument picked by the model.")
    tags_note: str | None = Field(default=None, description="Why tags are missing, or a warning that they are untrained.")


def combine_attributes(
    signal: SignalFeatures, tempo: TempoResult, key: KeyResult, tags: ModelTags | None = None, tags_note: str | None = None
) -> ClipAttributes:
    """Merge the signal features with madmom's tempo and key (and the model's tags, if any)."""
    dance = danceability(signal.rhythmic_strength, tempo.bpm)
    tempo_text = f"{tempo.bpm:.0f} BPM" if tempo.bpm else "no steady tempo"
    summary = (
        f"{tempo_text}, {key.key or 'no clear key'}, {signal.loudness_lufs:.1f} LUFS, "
        f"energy {signal.energy:.2f}, danceability {dance:.2f}"
    )
    if tags is not None:
        summary += f"; tags: {tags.genre}, {tags.mood}, {tags.instrument}" + ("" if tags.trained else " (untrained model)")
    return ClipAttributes(
        summary=summary,
        tempo_bpm=tempo.bpm,
        key=key.key,
        mode=key.mode,
        key_confidence=key.confidence,
        loudness_lufs=signal.loudness_lufs,
        energy=signal.energy,
        danceability=dance,
        rhythmic_strength=signal.rhythmic_strength,
        spectral_centroid_hz=signal.spectral_centroid_hz,
        chroma=signal.chroma,
        tags=tags,
        tags_note=tags_note,
    )
