"""Find clips that sound alike: an index of a folder, and nearest-neighbour search with constraints.

`index_folder` analyses every audio file under a folder once (madmom tempo and
key, loudness, energy, danceability, chroma; plus the model's pooled encoder
embedding when a trained model is loaded) and writes the index as JSON into
the cache directory, one file per folder. Re-indexing reuses entries whose
file size and modification time are unchanged.

`find_similar` ranks the indexed clips by similarity to a query clip, after
hard constraints a recommendation agent asks for ("faster", "slower", "in a
minor key"). Two similarity measures:

- `embedding`: cosine similarity of pooled TinyMU encoder outputs, mapped to
  0..1. Used by `method="auto"` when the index holds embeddings from trained weights.
- `features`: a weighted distance over interpretable attributes (log tempo,
  mode, key on the circle of fifths, energy, danceability, loudness,
  brightness, chroma), similarity = 1 / (1 + distance). Always available.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from agent_tools.context import Toolbox
from model.dsp.features import ClipAttributes

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".oga", ".opus"}
INDEX_VERSION = 1
FIFTHS = ["C", "G", "D", "A", "E", "B", "F#", "C#", "Ab", "Eb", "Bb", "F"]
SPELLINGS = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb", "Cb": "B", "E#": "F", "Fb": "E", "B#": "C"}
TEMPO_MARGIN = 1.04  # "faster" means at least 4 % faster: below that listeners hear the same tempo

TempoConstraint = Literal["faster", "slower", "similar"]
KeyMode = Literal["major", "minor"]
Method = Literal["auto", "features", "embedding"]


class IndexedClip(BaseModel):
    """One analysed file of an indexed folder."""

    path: str = Field(description="Absolute path of the file.")
    sha256: str
    size: int
    mtime: float
    attributes: ClipAttributes
    embedding: list[float] | None = Field(default=None, description="Pooled encoder output, L2-normalised.")


class ClipIndex(BaseModel):
    """A folder's clips with their attributes; stored as JSON in the cache directory."""

    version: int = INDEX_VERSION
    folder: str
    embedding_model: str | None = Field(default=None, description="Model whose embeddings are stored; None when none are.")
    embeddings_trained: bool = False
    clips: list[IndexedClip] = Field(default_factory=list)


class IndexReport(BaseModel):
    """Result of indexing a folder."""

    summary: str
    folder: str
    index_file: str = Field(description="Where the index was written (in the cache directory).")
    clips: int = Field(description="Clips in the index.")
    analysed: int = Field(description="Clips analysed in this call.")
    reused: int = Field(description="Clips whose earlier analysis was still valid (same size and mtime).")
    failed: list[str] = Field(description="'path: reason' for files that could not be analysed.")
    embeddings: bool = Field(description="True when model embeddings were stored for every clip.")
    elapsed_s: float


class SimilarClip(BaseModel):
    path: str
    similarity: float = Field(ge=0.0, le=1.0, description="1 = identical by the chosen measure.")
    tempo_bpm: float | None
    key: str | None
    energy: float
    danceability: float
    why: str = Field(description="How it compares with the query on the constrained and closest attributes.")


class SimilarResults(BaseModel):
    """Clips of an indexed folder most similar to the query clip, after the constraints."""

    summary: str
    query: str
    query_attributes: ClipAttributes
    folder: str
    method: Literal["features", "embedding"]
    constraints: list[str]
    candidates: int = Field(description="Indexed clips that met the constraints.")
    results: list[SimilarClip]


# --- feature vectors ---------------------------------------------------------------


def _fifths_position(key: str | None) -> tuple[float, float] | None:
    """The key's tonic on the circle of fifths as a unit vector; minor keys sit on their relative major."""
    if not key:
        return None
    tonic, _, mode = key.partition(" ")
    tonic = SPELLINGS.get(tonic, tonic)
    if tonic not in FIFTHS:
        return None
    step = FIFTHS.index(tonic) + (3 if mode == "minor" else 0)  # A minor shares C major's signature
    angle = 2 * math.pi * step / 12
    return math.cos(angle), math.sin(angle)


def feature_vector(a: ClipAttributes) -> np.ndarray:
    """Weighted attribute vector; Euclidean distance between two of them is the `features` distance.

    Weights put one unit of distance at about: an octave of tempo x 0.67, the mode flip, a tritone on the
    circle of fifths x 2, half the energy range, 20 LU of loudness, two octaves of brightness, or a
    large shift in the pitch-class profile.
    """
    tempo = math.log2(a.tempo_bpm / 120.0) if a.tempo_bpm else 0.0
    mode = {"major": 0.5, "minor": -0.5}.get(a.mode or "", 0.0)
    fifths = _fifths_position(a.key) or (0.0, 0.0)
    centroid = math.log2(max(a.spectral_centroid_hz, 50.0) / 1500.0)
    parts = [
        1.5 * tempo,
        1.0 * mode,
        0.25 * fifths[0], 0.25 * fifths[1],
        2.0 * a.energy,
        1.5 * a.danceability,
        (a.loudness_lufs + 30.0) / 20.0,
        0.5 * centroid,
        *(4.0 * np.asarray(a.chroma, dtype=float)),
    ]
    return np.asarray(parts, dtype=float)


def _normalised(vector: np.ndarray) -> list[float]:
    norm = float(np.linalg.norm(vector))
    return [float(round(v, 6)) for v in (vector / norm if norm > 0 else vector)]


# --- the index ---------------------------------------------------------------------


def index_path(cache_dir: Path, folder: Path) -> Path:
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(cache_dir) / "similarity" / f"{folder.name or 'root'}-{digest}.json"


def load_index(cache_dir: Path, folder: Path) -> ClipIndex | None:
    path = index_path(cache_dir, folder)
    if not path.is_file():
        return None
    try:
        index = ClipIndex.model_validate_json(path.read_text())
    except ValueError:
        return None  # an index from an older version: rebuilt on the next index_folder
    return index if index.version == INDEX_VERSION else None


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _embedding(toolbox: Toolbox, clip) -> tuple[list[float] | None, str | None, bool]:
    """(L2-normalised pooled embedding, model name, trained) or Nones when no model is usable."""
    from model.audio import MODEL_RATE
    from model.errors import TinyMUError

    try:
        model = toolbox.model
        info = model.info()
        vector = np.asarray(model.embed(clip.resampled(MODEL_RATE).samples), dtype=float)
    except TinyMUError:
        return None, None, False
    return _normalised(vector), info.name, bool(info.trained)


def build_index(
    toolbox: Toolbox, folder: str, *, with_embeddings: bool = True, progress=None
) -> tuple[ClipIndex, IndexReport]:
    """Analyse the audio files under `folder` (inside the allowed roots) and write the index.

    `progress(done, total, message)` is called after each file (the tool layer forwards it to MCP
    progress notifications); a tqdm bar on stderr shows the same.
    """
    from tqdm import tqdm

    from agent_tools.inputs import resolve_path
    from model.errors import InputError, NotAFileError, TinyMUError

    started = time.perf_counter()
    root = resolve_path(folder, toolbox.settings)
    if not root.is_dir():
        raise NotAFileError(f"{folder}: not a folder. Pass a directory (under the allowed roots) that holds audio files.")
    files = audio_files(root)
    if not files:
        raise InputError(
            f"{folder}: no audio files found (looked for {', '.join(sorted(AUDIO_SUFFIXES))} in it and its subfolders)."
        )
    previous = load_index(toolbox.settings.cache_dir, root)
    known = {c.path: c for c in previous.clips} if previous else {}
    index = ClipIndex(folder=str(root))
    analysed = reused = 0
    failed: list[str] = []
    trained_flags: list[bool] = []
    for done, path in enumerate(tqdm(files, desc=f"indexing {root.name}", unit="clip"), start=1):
        stat = path.stat()
        old = known.get(str(path))
        if old and old.size == stat.st_size and old.mtime == stat.st_mtime and (old.embedding or not with_embeddings):
            index.clips.append(old)
            reused += 1
            if previous and previous.embedding_model:
                index.embedding_model = previous.embedding_model
                trained_flags.append(previous.embeddings_trained)
        else:
            try:
                clip, _ = toolbox.load(str(path))
                attributes = clip_attributes_of(toolbox, clip, with_tags=False)
                embedding, model_name, trained = _embedding(toolbox, clip) if with_embeddings else (None, None, False)
            except TinyMUError as exc:
                failed.append(f"{path}: {exc}")
            else:
                if model_name:
                    index.embedding_model = model_name
                    trained_flags.append(trained)
                index.clips.append(IndexedClip(
                    path=str(path), sha256=clip.sha256, size=stat.st_size, mtime=stat.st_mtime,
                    attributes=attributes, embedding=embedding,
                ))
                analysed += 1
        if progress is not None:
            progress(done, len(files), f"indexed {path.name}")
    has_embeddings = bool(index.clips) and all(c.embedding for c in index.clips)
    index.embeddings_trained = has_embeddings and all(trained_flags)
    if not has_embeddings:
        index.embedding_model = None
        for c in index.clips:
            c.embedding = None  # mixed indexes would compare apples and pears
    target = index_path(toolbox.settings.cache_dir, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(index.model_dump_json())
    tmp.replace(target)  # atomic: a reader never sees half an index
    elapsed = time.perf_counter() - started
    summary = (
        f"Indexed {len(index.clips)} clips in {root} ({analysed} analysed, {reused} reused"
        + (f", {len(failed)} failed" if failed else "")
        + f") in {elapsed:.1f} s; similarity by {'embeddings and ' if has_embeddings else ''}features."
    )
    return index, IndexReport(
        summary=summary, folder=str(root), index_file=str(target), clips=len(index.clips), analysed=analysed,
        reused=reused, failed=failed, embeddings=has_embeddings, elapsed_s=round(elapsed, 2),
    )


# --- attributes (shared with the clip_attributes tool) -------------------------------------


def clip_attributes_of(toolbox: Toolbox, clip, *, with_tags: bool) -> ClipAttributes:
    """Attributes of a decoded clip, cached by content; tags from the model when asked and available."""
    from model.dsp.features import (
        SignalFeatures,
        combine_attributes,
        model_tags,
        signal_features,
    )
    from model.errors import TinyMUError
    from model.lm.measurements import Measurements
    from model.lm.prompts import with_measurements

    analysis = toolbox.measure("analysis", clip, lambda: toolbox.analyzer.analyze(clip))
    signal = toolbox.cache.get_or_compute("signal_features", clip.sha256, {}, SignalFeatures, lambda: signal_features(clip))
    tags, note = None, None
    if with_tags:
        try:
            from model.audio import MODEL_RATE

            model = toolbox.model
            info = model.info()  # once: over HTTP each call is a request to the model service
            trained = bool(info.trained)
            samples = clip.resampled(MODEL_RATE).samples
            # A model trained to read the DSP measurements gets them (here of the whole window).
            measured = Measurements.from_analysis(analysis) if info.reads_measurements else None
            tags = model_tags(lambda q, options: model.choose(samples, with_measurements(q, measured), options),
                              trained)
            if not trained:
                note = "The model's weights are untrained: these tags are not meaningful."
        except TinyMUError as exc:
            note = f"No genre/mood/instrument tags: {exc}"
    return combine_attributes(signal, analysis.tempo, analysis.key, tags, note)


# --- search ------------------------------------------------------------------------


def _meets(candidate: ClipAttributes, query: ClipAttributes, tempo: TempoConstraint | None, key_mode: KeyMode | None) -> bool:
    if key_mode and candidate.mode != key_mode:
        return False
    if tempo:
        if not (candidate.tempo_bpm and query.tempo_bpm):
            return False
        ratio = candidate.tempo_bpm / query.tempo_bpm
        if tempo == "faster" and ratio < TEMPO_MARGIN:
            return False
        if tempo == "slower" and ratio > 1 / TEMPO_MARGIN:
            return False
        if tempo == "similar" and not (1 / 1.08 <= ratio <= 1.08):
            return False
    return True


def _why(candidate: ClipAttributes, query: ClipAttributes) -> str:
    parts = []
    if candidate.tempo_bpm and query.tempo_bpm:
        change = 100 * (candidate.tempo_bpm / query.tempo_bpm - 1)
        parts.append(f"{candidate.tempo_bpm:.0f} BPM ({change:+.0f} %)")
    parts.append(candidate.key or "no clear key")
    parts.append(f"energy {candidate.energy:.2f} vs {query.energy:.2f}")
    parts.append(f"danceability {candidate.danceability:.2f} vs {query.danceability:.2f}")
    return ", ".join(parts)


def search(
    index: ClipIndex,
    query: ClipAttributes,
    *,
    query_embedding: list[float] | None = None,
    query_sha256: str | None = None,
    k: int = 5,
    tempo: TempoConstraint | None = None,
    key_mode: KeyMode | None = None,
    method: Method = "auto",
) -> tuple[Literal["features", "embedding"], int, list[SimilarClip]]:
    """(method used, candidates meeting the constraints, top-k matches) for `query` in `index`."""
    from model.errors import InputError

    can_embed = query_embedding is not None and index.embedding_model is not None
    if method == "embedding" and not can_embed:
        raise InputError(
            "method='embedding' needs model embeddings in the index and for the query; re-run index_folder with a "
            "model loaded, or use method='features'."
        )
    used: Literal["features", "embedding"] = (
        "embedding" if method == "embedding" or (method == "auto" and can_embed and index.embeddings_trained) else "features"
    )
    query_vector = feature_vector(query)
    scored: list[tuple[float, IndexedClip]] = []
    for clip in index.clips:
        if query_sha256 and clip.sha256 == query_sha256:
            continue  # the query itself is not a recommendation
        if not _meets(clip.attributes, query, tempo, key_mode):
            continue
        if used == "embedding":
            cosine = float(np.dot(clip.embedding, query_embedding))
            similarity = (cosine + 1.0) / 2.0
        else:
            distance = float(np.linalg.norm(feature_vector(clip.attributes) - query_vector))
            similarity = 1.0 / (1.0 + distance)
        scored.append((similarity, clip))
    scored.sort(key=lambda item: -item[0])
    results = [
        SimilarClip(
            path=clip.path, similarity=round(min(1.0, max(0.0, s)), 4), tempo_bpm=clip.attributes.tempo_bpm,
            key=clip.attributes.key, energy=clip.attributes.energy, danceability=clip.attributes.danceability,
            why=_why(clip.attributes, query),
        )
        for s, clip in scored[:k]
    ]
    return used, len(scored), results
