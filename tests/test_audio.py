"""Audio input: decoding, windows, hashing, resampling and every bad input of issue 2."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from model.audio import MADMOM_RATE, MODEL_RATE, AudioLimits, load_audio
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

RATE = 22050


def tone(seconds: float, rate: int = RATE, hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, -0.5 * mono], axis=1)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_decodes_every_format_to_mono_float32(tmp_path, fmt, subtype):
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, tone(3.0, channels=2), RATE, format=fmt, subtype=subtype)
    clip = load_audio(path)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.sample_rate == RATE
    assert clip.duration_s == pytest.approx(3.0, abs=0.08)  # lossy codecs pad a few ms
    # The mono mix of (x, -x/2) is x/4: peak 0.125, so the channels were averaged, not one taken.
    assert clip.peak == pytest.approx(0.125, abs=0.02)
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert np.argmax(spectrum) * RATE / len(clip.samples) == pytest.approx(440, abs=2)


def test_window_hash_and_resampling(tmp_path):
    path = tmp_path / "ramp.wav"
    sf.write(path, tone(6.0), RATE, subtype="FLOAT")
    whole = load_audio(path)
    window = load_audio(path, offset_s=2.0, duration_s=1.5)
    assert window.offset_s == pytest.approx(2.0) and window.duration_s == pytest.approx(1.5)
    assert window.source_duration_s == pytest.approx(6.0)
    np.testing.assert_array_equal(window.samples, whole.samples[2 * RATE: int(3.5 * RATE)])
    assert window.sha256 != whole.sha256
    # Same bytes from memory give the same identity as from the path.
    assert load_audio(path.read_bytes(), offset_s=2.0, duration_s=1.5).sha256 == window.sha256
    # Resampling keeps the identity and the content.
    for rate in (MADMOM_RATE, MODEL_RATE):
        resampled = window.resampled(rate)
        assert resampled.sha256 == window.sha256 and resampled.sample_rate == rate
        assert len(resampled.samples) == pytest.approx(1.5 * rate, abs=2)
        spectrum = np.abs(np.fft.rfft(resampled.samples))
        assert np.argmax(spectrum) * rate / len(resampled.samples) == pytest.approx(440, abs=2)
    # A window running past the end is cut at the end.
    tail = load_audio(path, offset_s=4.5, duration_s=10)
    assert tail.duration_s == pytest.approx(1.5)


def test_silence_is_not_an_error_but_is_flagged(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(3 * RATE, dtype=np.float32), RATE, subtype="PCM_16")
    clip = load_audio(path)
    assert clip.is_silent
    assert not load_audio(_wav_bytes(tone(3.0))).is_silent


def _wav_bytes(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _bad_inputs(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("these are my notes, not audio\n" * 40)
    good = _wav_bytes(tone(4.0))
    (tmp_path / "truncated_header.wav").write_bytes(good[:30])
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    nan = tone(3.0)
    nan[1000:1010] = np.nan
    nan[5000] = np.inf
    sf.write(tmp_path / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", tone(0.4), RATE)
    sf.write(tmp_path / "long.wav", tone(12.0, rate=8000), 8000)
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), RATE)
    return {
        "missing file": (tmp_path / "nope.wav", {}, AudioNotFoundError, "no such file"),
        "directory": (tmp_path / "folder", {}, NotAFileError, "directory"),
        "empty file": (tmp_path / "empty.wav", {}, EmptyAudioFileError, "empty (0 bytes)"),
        "empty bytes": (b"", {}, EmptyAudioFileError, "empty"),
        "non-audio file": (tmp_path / "notes.wav", {}, UnsupportedAudioError, "cannot decode"),
        "truncated header": (tmp_path / "truncated_header.wav", {}, UnsupportedAudioError, "wav, flac, ogg or mp3"),
        "corrupt flac": (tmp_path / "corrupt.flac", {}, UnsupportedAudioError, "cannot decode"),
        "too large": (tmp_path / "long.wav", {"limits": AudioLimits(max_bytes=10_000)}, AudioTooLargeError, "MB limit"),
        "too long": (tmp_path / "long.wav", {"limits": AudioLimits(max_duration_s=10)}, AudioTooLongError, "offset_s and duration_s"),
        "too short": (tmp_path / "short.wav", {}, AudioTooShortError, "at least 1 s"),
        "window too short": (tmp_path / "long.wav", {"offset_s": 11.5}, AudioTooShortError, "earlier offset_s"),
        "offset past end": (tmp_path / "long.wav", {"offset_s": 99}, AudioTooShortError, "past the end"),
        "no samples": (tmp_path / "zero.wav", {}, AudioTooShortError, "0.00 s"),
        "nan and inf": (tmp_path / "nan.wav", {}, InvalidSamplesError, "11 decoded samples are NaN or infinite"),
        "negative offset": (tmp_path / "long.wav", {"offset_s": -1}, InputError, "offset_s must be >= 0"),
    }


BAD_CASES = ["missing file", "directory", "empty file", "empty bytes", "non-audio file", "truncated header",
             "corrupt flac", "too large", "too long", "too short", "window too short", "offset past end",
             "no samples", "nan and inf", "negative offset"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_typed_actionable_error(tmp_path, case):
    source, kwargs, error, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(error) as caught:
        load_audio(source, **kwargs)
    assert message in str(caught.value)
    assert isinstance(caught.value, InputError)
    # The process keeps working: a good file right after decodes normally.
    assert load_audio(_wav_bytes(tone(2.0))).duration_s == pytest.approx(2.0)


def test_long_file_window_within_the_cap_is_accepted(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(12.0, rate=8000), 8000)
    clip = load_audio(path, offset_s=1.0, duration_s=5.0, limits=AudioLimits(max_duration_s=10))
    assert clip.duration_s == pytest.approx(5.0) and clip.source_duration_s == pytest.approx(12.0)
