"""Song structure from bar-level features: where sections start, and which ones repeat.

Each bar (from our downbeats) is described by its mean deep chroma (harmony) and
its mean log-band spectrum (timbre: instrumentation and groove). Boundaries are
peaks of Foote's checkerboard novelty on the bar self-similarity matrix; then each
section gets a letter, reusing the letter of an earlier section that sounds the same
(A B A B ...). Everything is bar-aligned, because listeners and scores hear form
in whole bars.
"""

from __future__ import annotations

import numpy as np

MIN_SECTION_BARS = 4  # a section shorter than this is a fill, not a section
KERNEL_BARS = 8  # half-width of the novelty kernel, in bars (at most a quarter of the clip)
MIN_NOVELTY = 0.4  # peaks below this fraction of the strongest one are not boundaries
SAME_SECTION = 0.8  # cosine similarity above which two sections get the same letter
# A passage played twice in a row (a chorale's repeated Stollen: A A B) has no contrast at its middle,
# so novelty cannot see it; its bars match bar for bar instead. Tuned on the tuning pieces (docs/dsp.md).
REPEAT_SIMILARITY = 0.9  # mean bar-for-bar cosine of the two halves
REPEAT_SHARE = 0.4  # the twice-played passage covers at least this share of the clip (shorter ones are phrases)
REPEAT_CONTRAST = 0.3  # its halves match better than its own bars match one another (else it is a loop or a drone)
BANDS = 24  # log-spaced spectral bands for the timbre half of the bar features


def band_spectrum(samples: np.ndarray, rate: int, hop_s: float = 0.05) -> tuple[np.ndarray, float]:
    """Log energy in BANDS log-spaced bands (60 Hz-11 kHz), frame rate 1/hop_s: a cheap timbre feature."""
    hop = int(rate * hop_s)
    size = 2 * hop
    if len(samples) < size:
        return np.zeros((0, BANDS)), 1 / hop_s
    frames = np.lib.stride_tricks.sliding_window_view(samples, size)[::hop] * np.hanning(size)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(size, 1 / rate)
    edges = np.geomspace(60.0, min(11000.0, rate / 2 - 1), BANDS + 1)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    return np.log1p(bands * 1e3), 1 / hop_s


def bar_features(bars: np.ndarray, chroma: np.ndarray, chroma_fps: float, spectrum: np.ndarray, spectrum_fps: float) -> np.ndarray:
    """One row per bar (between consecutive bar starts): unit-norm chroma half and standardised timbre half."""
    rows = []
    for features, fps in ((chroma, chroma_fps), (spectrum, spectrum_fps)):
        frames = np.clip(np.round(bars * fps).astype(int), 0, max(len(features) - 1, 0))
        means = np.array([features[a:max(b, a + 1)].mean(axis=0) for a, b in zip(frames[:-1], frames[1:])])
        means = means - means.mean(axis=0) if features is spectrum else means  # timbre: what changes, not the mix
        means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-9
        rows.append(means)
    return np.hstack(rows) / np.sqrt(2)


def novelty(similarity: np.ndarray, half: int = KERNEL_BARS) -> np.ndarray:
    """Foote's checkerboard novelty along the diagonal (0 at the edges, where the kernel does not fit)."""
    n = len(similarity)
    sign = np.sign(np.arange(-half, half) + 0.5)
    kernel = np.outer(sign, sign)
    out = np.zeros(n)
    for i in range(half, n - half + 1):
        out[i] = float((similarity[i - half:i + half, i - half:i + half] * kernel).sum())
    return np.maximum(out, 0)


def segment(features: np.ndarray) -> tuple[list[int], list[str], float]:
    """(boundary bar indices starting with 0, a letter per section, confidence 0-1) for bar features."""
    n = len(features)
    if n < 2 * MIN_SECTION_BARS:
        return [0], ["A"], 0.0
    similarity = features @ features.T
    curve = novelty(similarity, min(KERNEL_BARS, n // 4))
    top = curve.max()
    boundaries = [0]
    if top > 0:
        # Strongest peaks first, each at least MIN_SECTION_BARS from the others and the ends.
        for i in np.argsort(-curve):
            if curve[i] < MIN_NOVELTY * top:
                break
            if i >= MIN_SECTION_BARS and n - i >= MIN_SECTION_BARS and all(abs(i - b) >= MIN_SECTION_BARS for b in boundaries):
                boundaries.append(int(i))
    repeat = immediate_repeat(similarity)
    if repeat is not None:
        # The repeat's bar lines replace novelty boundaries near them (those are the same change, misplaced).
        start, length = repeat
        marks = [b for b in (start, start + length, start + 2 * length) if b < n]
        boundaries = marks + [b for b in boundaries if all(abs(b - m) >= MIN_SECTION_BARS for m in marks)]
        if 0 not in boundaries:
            boundaries.append(0)
    boundaries.sort()
    edges = boundaries + [n]
    means = [features[a:b].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])]
    means = [m / (np.linalg.norm(m) + 1e-9) for m in means]
    labels: list[str] = []
    seen: list[tuple[str, np.ndarray]] = []
    after_repeat = repeat[0] + 2 * repeat[1] if repeat is not None else None
    for bound, mean in zip(boundaries, means):
        # What follows a repeat is not the repeated music again (else the repeat would be longer).
        banned = labels[boundaries.index(repeat[0])] if bound == after_repeat else None
        scores = [(float(mean @ ref), letter) for letter, ref in seen if letter != banned]
        best = max(scores, default=(0.0, ""))
        if best[0] >= SAME_SECTION:
            labels.append(best[1])
        else:
            letter = chr(ord("A") + len(seen)) if len(seen) < 26 else "Z"
            seen.append((letter, mean))
            labels.append(letter)
    # Neighbours that sound the same are one section (the boundary between them was a fill).
    # A written-out repeat keeps its bar lines: the same music twice is two sections (A A), and what
    # follows it is a section of its own even where its average sound is close to the repeated one's.
    keep = {repeat[0] + repeat[1], repeat[0] + 2 * repeat[1]} if repeat is not None else set()
    merged_bounds, merged_labels = [], []
    for bound, letter in zip(boundaries, labels):
        if not merged_labels or merged_labels[-1] != letter or bound in keep:
            merged_bounds.append(bound)
            merged_labels.append(letter)
    boundaries, labels = merged_bounds, _relettered(merged_labels)
    # Confidence: how much the chosen boundaries stand out from the rest of the novelty curve.
    inner = [curve[b] for b in boundaries[1:]]
    confidence = float(np.clip(np.mean(inner) / (top + 1e-9) - np.median(curve) / (top + 1e-9), 0, 1)) if inner else 0.0
    return boundaries, labels, confidence


def immediate_repeat(similarity: np.ndarray) -> tuple[int, int] | None:
    """(first bar, length in bars) of the passage that is played twice in a row most exactly, if its
    halves match bar for bar (mean cosine >= REPEAT_SIMILARITY), better than its bars match one another
    (by REPEAT_CONTRAST), and it covers >= REPEAT_SHARE of the clip."""
    n = len(similarity)
    best, found = REPEAT_SIMILARITY, None
    for length in range(MIN_SECTION_BARS, n // 2 + 1):
        if 2 * length < REPEAT_SHARE * n:
            continue
        for start in range(n - 2 * length + 1):
            match = float(np.mean(np.diagonal(similarity, offset=length)[start:start + length]))
            if match < best:
                continue
            inside = similarity[start:start + length, start:start + length]
            if match - (inside.sum() - np.trace(inside)) / (length * (length - 1)) >= REPEAT_CONTRAST:
                best, found = match, (start, length)
    return found


def _relettered(labels: list[str]) -> list[str]:
    """Letters in order of first appearance (A first), after merging may have dropped one."""
    mapping: dict[str, str] = {}
    for letter in labels:
        mapping.setdefault(letter, chr(ord("A") + min(len(mapping), 25)))
    return [mapping[letter] for letter in labels]
