"""Music with a known form from written repeats, for the sections benchmark (`python -m training.bench dsp --sections`).

Bach chorales from music21's corpus whose score has one written repeat (the Stollen of the bar
form): expanded with music21, their form is A A B. The pieces, their split and why are fixed in
docs/dsp.md ("Sections: music21 scores with repeats"); this module only applies that rule.

Also the Laplacian structural segmentation baseline (McFee & Ellis 2014, as librosa's gallery
builds it), run beside ours on every clip with a known form.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path

import numpy as np

from training.corpora import SECOND_SOUNDFONT, Clip, _write, score_midi_at

SKIP = 48  # the chorale set draws from the first 48 chorales; these pieces come after them
PIECES = 12
HELD_OUT_EVERY = 4  # index % 4 == 3 is held out, as in the other sets


def repeat_form(score) -> tuple[list[float], list[str]] | None:
    """(section start offsets in quarter notes + the end, labels) of `score` expanded, or None when its
    repeats are not the one simple kind we label: ||: A :|| B (one end-repeat, no endings)."""
    import music21

    part = score.parts[0]
    measures = list(part.getElementsByClass(music21.stream.Measure))
    if score.recurse().getElementsByClass(music21.spanner.RepeatBracket).first() is not None:
        return None  # first/second endings: the expanded sections would not be whole repeats
    ends = [i for i, m in enumerate(measures) if isinstance(m.rightBarline, music21.bar.Repeat) and m.rightBarline.direction == "end"]
    starts = [i for i, m in enumerate(measures) if isinstance(m.leftBarline, music21.bar.Repeat) and m.leftBarline.direction == "start"]
    if len(ends) != 1 or any(i != 0 for i in starts) or len(measures) - ends[0] - 1 < 2:
        return None
    stollen = sum(m.duration.quarterLength for m in measures[:ends[0] + 1])
    rest = sum(m.duration.quarterLength for m in measures[ends[0] + 1:])
    return [0.0, float(stollen), float(2 * stollen), float(2 * stollen + rest)], ["A", "A", "B"]


def form_clips(out: Path) -> list[Clip]:
    """The 12 chorales with one written repeat (docs/dsp.md), rendered whole with the repeat expanded."""
    import music21

    from training.synth import render_song

    folder = out / "forms"
    labels_file = folder / "labels.json"
    cached = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    if len(cached) == PIECES:
        return [Clip(**{**c, "sections": [tuple(s) for s in c["sections"]]}) for c in cached.values()]  # JSON made them lists
    paths = sorted(music21.corpus.getComposer("bach"), key=str)
    paths = [p for p in paths if Path(str(p)).name.startswith("bwv")][SKIP:]
    clips: list[Clip] = []
    for path in paths:
        if len(clips) == PIECES:
            break
        score = music21.corpus.parse(path)
        meter = score.recurse().getElementsByClass(music21.meter.TimeSignature).first()
        if len(score.parts) != 4 or meter is None or meter.denominator != 4 or meter.numerator not in (3, 4):
            continue
        form = repeat_form(score)
        if form is None:
            continue
        offsets, letters = form
        index = len(clips)
        bpm = float(72 + (index * 7) % 30)
        expanded = score.expandRepeats()
        midi = score_midi_at(expanded, bpm)
        beat_s = 60.0 / bpm
        end = offsets[-1] * beat_s
        if len(midi.get_tempo_changes()[1]) != 1 or abs(midi.get_end_time() - end) > 2 * beat_s:
            continue  # the labels would not describe the audio
        name = Path(str(path)).stem.replace(".", "_")
        wav = folder / f"{name}.wav"
        if not wav.exists():
            _write(wav, render_song(midi, end, SECOND_SOUNDFONT))
        bars = _downbeats(list(expanded.parts[0].getElementsByClass(music21.stream.Measure)), meter.barDuration.quarterLength, beat_s)
        clip = Clip(name=name, set="forms", path=str(wav.relative_to(out)), duration_s=round(end, 3), tempo_bpm=bpm,
                    beats_s=[round(float(b), 4) for b in np.arange(0.0, end - 1e-6, beat_s)],
                    downbeats_s=[round(b, 4) for b in bars], beats_per_bar=meter.numerator,
                    sections=[(round(a * beat_s, 3), round(b * beat_s, 3), s) for a, b, s in zip(offsets[:-1], offsets[1:], letters)],
                    held_out=index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1,
                    source=f"music21 corpus {Path(str(path)).name}, repeat expanded, TimGM6mb")
        cached[name] = asdict(clip)
        clips.append(clip)
    folder.mkdir(parents=True, exist_ok=True)
    labels_file.write_text(json.dumps(cached))
    return clips


def _downbeats(measures: list, bar_quarters: float, beat_s: float) -> list[float]:
    """Bar starts in seconds. A short measure that opens the piece or follows another short one is a
    pickup (the repeated Stollen's anacrusis completes the short bar before the repeat), not a downbeat."""
    out = []
    for i, m in enumerate(measures):
        short = m.duration.quarterLength < bar_quarters
        previous_short = i > 0 and measures[i - 1].duration.quarterLength < bar_quarters
        if not (short and (i == 0 or previous_short)):
            out.append(float(m.offset) * beat_s)
    return out


# ---- baseline ---------------------------------------------------------------------------------

LAPLACIAN_K = 3  # segment types; fixed before scoring (docs/dsp.md), not tuned


def laplacian_sections(samples: np.ndarray, rate: int, k: int = LAPLACIAN_K) -> list[tuple[float, float, str]]:
    """McFee & Ellis (2014) Laplacian segmentation, built the way librosa's gallery example builds it:
    (start, end, label) sections from beat-synchronous CQT recurrence and MFCC path similarity."""
    import librosa
    import scipy.ndimage
    import scipy.sparse.csgraph
    from sklearn.cluster import KMeans

    y = samples.astype(np.float32)
    hop = 512
    cqt = librosa.amplitude_to_db(np.abs(librosa.cqt(y=y, sr=rate, hop_length=hop, bins_per_octave=36, n_bins=7 * 36)), ref=np.max)
    _, beats = librosa.beat.beat_track(y=y, sr=rate, hop_length=hop, trim=False)
    beats = librosa.util.fix_frames(beats, x_min=0)
    if len(beats) < 2 * k + 2:
        return [(0.0, len(y) / rate, "A")]
    csync = librosa.util.sync(cqt, beats, aggregate=np.median)
    times = librosa.frames_to_time(beats, sr=rate, hop_length=hop)
    times = np.append(times, len(y) / rate)[:csync.shape[1] + 1]
    recurrence = librosa.segment.recurrence_matrix(csync, width=3, mode="affinity", sym=True)
    recurrence = librosa.segment.timelag_filter(scipy.ndimage.median_filter)(recurrence, size=(1, 7))
    mfcc = librosa.util.sync(librosa.feature.mfcc(y=y, sr=rate, hop_length=hop), beats)
    path_distance = np.sum(np.diff(mfcc, axis=1) ** 2, axis=0)
    sigma = np.median(path_distance)
    path_sim = np.exp(-path_distance / sigma) if sigma > 0 else np.ones_like(path_distance)
    path = np.diag(path_sim, k=1) + np.diag(path_sim, k=-1)
    degree_path, degree_rec = np.sum(path, axis=1), np.sum(recurrence, axis=1)
    mu = degree_path.dot(degree_path + degree_rec) / max(np.sum((degree_path + degree_rec) ** 2), 1e-9)
    affinity = mu * recurrence + (1 - mu) * path
    laplacian = scipy.sparse.csgraph.laplacian(affinity, normed=True)
    _, vectors = np.linalg.eigh(laplacian)
    vectors = scipy.ndimage.median_filter(vectors, size=(9, 1))
    norms = np.cumsum(vectors ** 2, axis=1) ** 0.5
    features = vectors[:, :k] / (norms[:, k - 1:k] + 1e-9)
    ids = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(features)
    starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    edges = starts + [len(ids)]
    return [(float(times[a]), float(times[b]), chr(ord("A") + int(ids[a]))) for a, b in pairwise(edges)]
