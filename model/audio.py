"""Audio input: decode any file libsndfile reads into a mono float32 clip.

Everything downstream (madmom DSP at 44.1 kHz, TinyMU at 16 kHz) starts from
`load_audio`, which decodes with soundfile (no ffmpeg), mixes to mono, cuts an
optional offset/duration window, checks the caller's limits and hashes the
decoded window so results can be cached by content. Every problem a caller can
fix raises a typed `InputError` whose message says what to do instead.

Memory is bounded before anything is decoded: the header's frame count and rate
give the window's size, and a window whose decoding and analysis would exceed
the caller's memory budget is refused. Decoding then runs in blocks, each block
mixed to mono at once, so a many-channel file never exists whole in memory.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from model.errors import (
    AudioNotFoundError,
    AudioTooLargeError,
    AudioTooLongError,
    AudioTooShortError,
    EmptyAudioFileError,
    InputError,
    InvalidSamplesError,
    NotAFileError,
    UnsupportedAudioError,
)

MADMOM_RATE = 44100  # every madmom model was trained on 44.1 kHz input
MODEL_RATE = 16000  # TinyMU's encoder front end

# Below these levels a clip carries no music worth analysing.
SILENCE_PEAK = 1e-4
SILENCE_RMS_DBFS = -70.0

# Measured on a warm analyzer (peak RSS above its baseline, 44.1 kHz windows of a real recording):
# 60 s -> 645 MB, 170 s -> 1,240 MB, 214 s -> 957 MB. Long clips are analysed in windows
# (model.dsp.analyzer), so the analysis' memory stops growing past the longest span analysed whole,
# which the caller passes as `AudioLimits.analysis_cap_s`.
ANALYSIS_BASE_BYTES = 256 * 1024 * 1024
ANALYSIS_BYTES_PER_SECOND = 7 * 1024 * 1024
BLOCK_FRAMES = 1 << 15  # decoded per step: 32 Ki frames x channels x 4 bytes


@dataclass(frozen=True)
class AudioLimits:
    """What a caller may send: encoded size cap and decoded window length range."""

    max_bytes: int = 100 * 1024 * 1024
    max_duration_s: float = 20 * 60.0
    min_duration_s: float = 1.0
    # Memory one decoded window may cost (see `window_bytes`); None: no budget (offline tools).
    max_memory_bytes: int | None = None
    # What its analysis costs per second of audio: madmom's by default; 0 when only the model listens.
    analysis_bytes_per_second: float = ANALYSIS_BYTES_PER_SECOND
    # The longest span the analysis holds in memory at once (None: the whole window).
    analysis_cap_s: float | None = None

    def window_bytes(self, frames: int, rate: int) -> int:
        """What decoding and analysing `frames` frames at `rate` Hz costs: the mono window at its own
        rate, its 44.1 kHz copy for madmom, and the analysis' working memory (the largest part)."""
        seconds = frames / rate
        analysed = seconds if self.analysis_cap_s is None else min(seconds, self.analysis_cap_s)
        analysis = ANALYSIS_BASE_BYTES + analysed * self.analysis_bytes_per_second if self.analysis_bytes_per_second else 0
        return int(frames * 4 + seconds * MADMOM_RATE * 4 + analysis)


@dataclass(frozen=True, eq=False)
class AudioClip:
    """A decoded mono float32 window of a recording.

    `sha256` identifies the decoded window (native-rate samples plus rate), so
    the same audio resampled for another consumer keeps the same identity.
    """

    samples: np.ndarray
    sample_rate: int
    offset_s: float
    duration_s: float
    source_duration_s: float
    sha256: str

    @classmethod
    def from_samples(cls, samples: np.ndarray, sample_rate: int) -> AudioClip:
        """A whole clip from mono samples already in memory (e.g. a model's input)."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        digest = hashlib.sha256(samples.tobytes() + str(sample_rate).encode()).hexdigest()
        duration = len(samples) / sample_rate
        return cls(samples=samples, sample_rate=sample_rate, offset_s=0.0, duration_s=duration,
                   source_duration_s=duration, sha256=digest)

    def resampled(self, rate: int) -> AudioClip:
        """The same clip at `rate` Hz (same sha256); returns self when already there."""
        if rate == self.sample_rate:
            return self
        samples = soxr.resample(self.samples, self.sample_rate, rate, quality="HQ")
        return AudioClip(
            samples=np.ascontiguousarray(samples, dtype=np.float32),
            sample_rate=rate,
            offset_s=self.offset_s,
            duration_s=self.duration_s,
            source_duration_s=self.source_duration_s,
            sha256=self.sha256,
        )

    @cached_property
    def peak(self) -> float:
        return float(np.max(np.abs(self.samples))) if self.samples.size else 0.0

    @cached_property
    def rms_dbfs(self) -> float:
        rms = float(np.sqrt(np.mean(np.square(self.samples, dtype=np.float64)))) if self.samples.size else 0.0
        return 20.0 * np.log10(max(rms, 1e-12))

    @property
    def is_silent(self) -> bool:
        """True when the clip is (near-)digital silence: nothing to analyse in it."""
        return self.peak < SILENCE_PEAK or self.rms_dbfs < SILENCE_RMS_DBFS


def load_audio(
    source: str | Path | bytes | BinaryIO,
    *,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    limits: AudioLimits = AudioLimits(),
    name: str | None = None,
) -> AudioClip:
    """Decode `source` (a file path, the encoded bytes of a file, or an open binary file) to a mono
    float32 clip.

    `offset_s`/`duration_s` select a window (seconds from the start; None means to the end).
    An open file is read from where it is and left open (the caller owns it); `name` labels
    the source in error messages. Raises an `InputError` subclass for anything the caller can fix.
    """
    _check_window_arguments(offset_s, duration_s)
    readable, name = _checked_source(source, limits, name)
    try:
        with sf.SoundFile(readable) as f:
            rate, total_frames, channels = f.samplerate, f.frames, f.channels
            source_duration = total_frames / rate
            start = int(round(offset_s * rate))
            if total_frames == 0:
                raise AudioTooShortError(
                    f"{name}: the file holds no audio samples (0.00 s). Send a recording at least "
                    f"{limits.min_duration_s:g} s long."
                )
            if start >= total_frames:
                raise AudioTooShortError(
                    f"{name}: offset_s={offset_s:g} is past the end of the audio "
                    f"({source_duration:.2f} s long); choose an offset below that."
                )
            wanted = total_frames - start if duration_s is None else min(int(round(duration_s * rate)), total_frames - start)
            _check_window_length(name, wanted / rate, source_duration, duration_s, limits)
            # libsndfile 1.2's MP3 decoder returns wrong samples at the edges of partial reads, so MP3
            # (at most two channels) is read in one piece, its interleaved frames counted in the budget.
            whole = f.format in ("MP3", "MPEG")
            _check_memory(name, wanted, rate, channels, limits, interleaved=whole)
            f.seek(start)
            samples, decoded = np.empty(wanted, dtype=np.float32), 0
            for block in f.blocks(blocksize=wanted if whole else BLOCK_FRAMES, frames=wanted, dtype="float32",
                                  always_2d=True):
                take = min(len(block), wanted - decoded)
                samples[decoded:decoded + take] = block[:take, 0] if channels == 1 else block[:take].mean(axis=1)
                decoded += take
    except sf.LibsndfileError as exc:
        raise UnsupportedAudioError(
            f"{name}: cannot decode this as audio ({exc.error_string}). Send a wav, flac, ogg or mp3 file "
            "that plays in a normal audio player; the file may be corrupt or truncated."
        ) from exc
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise UnsupportedAudioError(f"{name}: the audio is corrupt or truncated ({exc}).") from exc

    samples = samples[:decoded]
    if samples.size == 0 or samples.size < 0.5 * wanted:
        raise UnsupportedAudioError(
            f"{name}: the file claims {wanted / rate:.2f} s of audio but only {samples.size / rate:.2f} s could be "
            "decoded; it is truncated or corrupt. Re-export it and try again."
        )
    _check_window_length(name, samples.size / rate, source_duration, duration_s, limits)
    if not np.all(np.isfinite(samples)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise InvalidSamplesError(
            f"{name}: {bad} decoded samples are NaN or infinite; the file is a float recording with invalid "
            "values. Re-export it as 16- or 24-bit PCM."
        )
    digest = hashlib.sha256()
    digest.update(str(rate).encode())
    digest.update(memoryview(samples))  # no copy of a possibly long window
    return AudioClip(
        samples=samples,
        sample_rate=rate,
        offset_s=start / rate,
        duration_s=samples.size / rate,
        source_duration_s=source_duration,
        sha256=digest.hexdigest(),
    )


def _check_window_arguments(offset_s: float, duration_s: float | None) -> None:
    """Finite, non-negative numbers only: inf, nan and booleans would otherwise fail deep inside."""
    for label, value in (("offset_s", offset_s), ("duration_s", duration_s)):
        if value is None and label == "duration_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{label} must be a finite number of seconds (got {value!r}).")
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise InputError(
            f"offset_s must be >= 0 and duration_s > 0 (got offset_s={offset_s}, duration_s={duration_s})."
        )


def _check_memory(name: str, frames: int, rate: int, channels: int, limits: AudioLimits,
                  interleaved: bool = False) -> None:
    """Refuse, from the header alone, a window whose decoding and analysis would exceed the budget
    (`interleaved`: the window is read in one piece, all channels at once)."""
    if limits.max_memory_bytes is None:
        return
    def cost(n: int) -> int:
        return limits.window_bytes(n, rate) + (n * channels * 4 if interleaved else 0)

    needed = cost(frames)
    if needed <= limits.max_memory_bytes:
        return
    fits, step = 0, frames  # the longest window that fits: cost grows with frames, so bisect
    while step:
        step //= 2
        if cost(fits + step) <= limits.max_memory_bytes:
            fits += step
    fits_s = fits / rate
    raise AudioTooLargeError(
        f"{name}: analysing {frames / rate:.1f} s of this audio ({channels} channel(s) at {rate} Hz) needs about "
        f"{needed / 2**20:.0f} MB, above this server's {limits.max_memory_bytes / 2**20:.0f} MB memory budget per "
        f"call. Pass duration_s <= {math.floor(fits_s * 10) / 10:g} (with offset_s to pick the part), or send a "
        "shorter excerpt."
    )


def _checked_source(
    source: str | Path | bytes | BinaryIO, limits: AudioLimits, name: str | None = None
) -> tuple[io.BytesIO | Path | BinaryIO, str]:
    """What soundfile should open for `source`, and a name for error messages, after size checks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        readable, name = io.BytesIO(bytes(source)), name or "audio data"
        size = len(source)
    elif hasattr(source, "read"):
        readable, name = source, name or str(getattr(source, "name", "audio file"))
        size = os.fstat(source.fileno()).st_size if hasattr(source, "fileno") else None
        if size is None:
            size = source.seek(0, os.SEEK_END) - source.seek(0)
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.exists():
            raise AudioNotFoundError(f"{name}: no such file. Check the path (absolute, or relative to the server's working directory).")
        if not path.is_file():
            raise NotAFileError(f"{name}: is a directory or special file, not an audio file. Pass the path of one audio file.")
        size = path.stat().st_size
        readable = path
    if size == 0:
        raise EmptyAudioFileError(f"{name}: the file is empty (0 bytes). Pass a file that contains audio.")
    if size > limits.max_bytes:
        raise AudioTooLargeError(
            f"{name}: {size / 1e6:.1f} MB exceeds the {limits.max_bytes / 1e6:.1f} MB limit. "
            "Send a shorter excerpt or a compressed format (flac, ogg, mp3)."
        )
    return readable, name


def _check_window_length(
    name: str, window_s: float, source_s: float, duration_s: float | None, limits: AudioLimits
) -> None:
    if window_s > limits.max_duration_s:
        raise AudioTooLongError(
            f"{name}: {window_s:.1f} s of audio exceeds the {limits.max_duration_s:.0f} s limit. "
            f"Pass offset_s and duration_s (<= {limits.max_duration_s:.0f}) to analyse part of it."
        )
    if window_s < limits.min_duration_s:
        hint = "" if source_s - window_s < 1e-3 else " (an earlier offset_s or a longer duration_s)"
        raise AudioTooShortError(
            f"{name}: only {window_s:.2f} s of audio to analyse (the recording is {source_s:.2f} s long); "
            f"at least {limits.min_duration_s:g} s is needed. Send a longer clip{hint}."
        )
