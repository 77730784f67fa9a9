"""madmom's short-time Fourier transform, computed on blocks of frames.

madmom's `stft` loops over the frames in Python and runs a complex FFT per frame
(the hann window is float64, so in double precision); on a 4-minute song that is
~75,000 calls for the downbeat network's three spectrograms and about a third of
the whole analysis. `BlockSTFTProcessor` builds the same frames (madmom's
`signal_frame` rule: reference sample int(i * hop), centred, zero padded), multiplies
them by the same window and runs scipy's real FFT on a block of frames at once,
still in double precision, before the same cast to complex64. It returns madmom's
own `ShortTimeFourierTransform` object, so every later step of madmom's chains
(filterbanks read `stft.frames.signal.sample_rate`) is unchanged.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

BLOCK_FRAMES = 128  # frames per FFT call: 64-256 were equally fast; bounds the float64 scratch (8 MB at 8192)


def _framed(frames, kwargs: dict):
    """(madmom FramedSignal of `frames`, whether the block STFT applies to it). Multi-channel and integer
    signals go through madmom's own STFT, which handles them in ways the blocks do not copy."""
    from madmom.audio.signal import FramedSignal

    if not isinstance(frames, FramedSignal):
        frames = FramedSignal(frames, **kwargs)
    return frames, np.asarray(frames.signal).ndim == 1 and not np.issubdtype(frames.signal.dtype, np.integer)


class BlockSTFTProcessor:
    """Drop-in for madmom's `ShortTimeFourierTransformProcessor` (no circular shift; hann or given window)."""

    def __init__(self, original):
        self.window = original.window
        self.fft_size = original.fft_size
        self.include_nyquist = original.include_nyquist
        if original.circular_shift:
            raise ValueError("BlockSTFTProcessor does not do circular shifts (madmom's phase-correct STFT)")
        self._windows: dict[int, np.ndarray] = {}

    def __call__(self, frames, **kwargs):
        return self.process(frames, **kwargs)

    def process(self, frames, **kwargs):
        from madmom.audio.stft import ShortTimeFourierTransform

        frames, blockable = _framed(frames, kwargs)
        if not blockable:
            return ShortTimeFourierTransform(frames, window=self.window, fft_size=self.fft_size,
                                             include_nyquist=self.include_nyquist)
        out = np.empty((frames.num_frames, self._bins(frames)), np.complex64)
        for first, spectrum in self._blocks(frames):
            out[first:first + len(spectrum)] = spectrum
        return self._stft_object(out, frames)

    def _bins(self, frames) -> int:
        return ((self.fft_size or int(frames.frame_size)) >> 1) + (1 if self.include_nyquist else 0)

    def _blocks(self, frames):
        """(index of the first frame, complex64 STFT of BLOCK_FRAMES frames) over the whole signal."""
        signal = np.asarray(frames.signal)
        frame_size = int(frames.frame_size)
        window = self._window(frame_size)
        fft_size, bins = self.fft_size or frame_size, self._bins(frames)
        # madmom's signal_frame: frame i starts at int(i * hop) - frame_size // 2 - origin; outside is zero.
        starts = (np.arange(frames.num_frames) * frames.hop_size).astype(np.int64) - frame_size // 2 - int(frames.origin)
        if not len(starts):
            return
        left = max(0, -int(starts.min()))
        right = max(0, int(starts.max()) + frame_size - len(signal))
        padded = np.concatenate([np.zeros(left, signal.dtype), signal, np.zeros(right, signal.dtype)])
        starts = starts + left
        offsets = np.arange(frame_size)
        for first in range(0, len(starts), BLOCK_FRAMES):
            block = padded[starts[first:first + BLOCK_FRAMES, None] + offsets] * window
            yield first, scipy.fft.rfft(block, n=fft_size, axis=1)[:, :bins].astype(np.complex64)

    def _stft_object(self, data: np.ndarray, frames):
        """`data` as madmom's ShortTimeFourierTransform of `frames` (with the attributes later steps read)."""
        from madmom.audio.stft import ShortTimeFourierTransform

        window = self._window(int(frames.frame_size))
        out = data.view(ShortTimeFourierTransform)
        out.frames, out.window, out.fft_window = frames, window, window
        out.fft_size, out.circular_shift, out.include_nyquist = self.fft_size or int(frames.frame_size), False, self.include_nyquist
        return out

    def _window(self, frame_size: int) -> np.ndarray:
        if frame_size not in self._windows:
            window = self.window(frame_size) if callable(self.window) else self.window
            self._windows[frame_size] = np.asarray(window if window is not None else np.ones(frame_size))
        return self._windows[frame_size]


class BlockFilteredSpectrogramProcessor(BlockSTFTProcessor):
    """Drop-in for madmom's STFT step followed by its `FilteredSpectrogramProcessor`.

    Each block of frames goes STFT -> magnitude while it is in cache, so the full complex STFT
    (0.75 GB of fresh memory for the downbeat network's three spectrograms of a 4-minute song,
    plus its copy as magnitudes) is never built; the filterbank product then runs once. The result is
    madmom's `FilteredSpectrogram`; its `stft` is an empty STFT (no frames kept) that
    still carries the frames, window and bin frequencies that later steps read.
    """

    def __init__(self, stft_step, filter_step):
        super().__init__(stft_step)
        self.filter_step = filter_step

    def process(self, frames, **kwargs):
        from madmom.audio.filters import Filterbank
        from madmom.audio.spectrogram import FilteredSpectrogram
        from madmom.audio.stft import fft_frequencies

        frames, blockable = _framed(frames, kwargs)
        if not blockable:
            return self.filter_step(super().process(frames))
        step, bins = self.filter_step, self._bins(frames)
        filterbank = step.filterbank
        if not isinstance(filterbank, Filterbank):  # built from the bin frequencies, as madmom does
            filterbank = filterbank(fft_frequencies(bins, frames.signal.sample_rate), num_bands=step.num_bands,
                                    fmin=step.fmin, fmax=step.fmax, fref=step.fref,
                                    norm_filters=step.norm_filters, unique_filters=step.unique_filters)
            step.filterbank = filterbank
        magnitude = np.empty((frames.num_frames, bins), np.float32)
        for first, spectrum in self._blocks(frames):
            np.abs(spectrum, out=magnitude[first:first + len(spectrum)])
        # One product over all frames, as madmom does: OpenBLAS sums a block of 128 rows in another
        # order (the downbeat activation then moved by up to 5e-5).
        result = np.dot(magnitude, filterbank).view(FilteredSpectrogram)
        result.filterbank = filterbank
        result.stft = self._stft_object(np.empty((0, bins), np.complex64), frames)
        return result


def with_block_stft(processor):
    """`processor` (a madmom processor tree) with every STFT step done on blocks of frames, in place.

    An STFT step followed by a plain FilteredSpectrogramProcessor becomes one fused step."""
    from madmom.audio.spectrogram import FilteredSpectrogramProcessor
    from madmom.audio.stft import ShortTimeFourierTransformProcessor

    children = getattr(processor, "processors", None)
    if children is None:
        return processor
    replaced, steps = [], list(children)
    while steps:
        step = steps.pop(0)
        if isinstance(step, ShortTimeFourierTransformProcessor):
            if steps and type(steps[0]) is FilteredSpectrogramProcessor:
                replaced.append(BlockFilteredSpectrogramProcessor(step, steps.pop(0)))
            else:
                replaced.append(BlockSTFTProcessor(step))
        else:
            replaced.append(with_block_stft(step))
    processor.processors = replaced if isinstance(children, list) else type(children)(replaced)
    return processor
