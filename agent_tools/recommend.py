"""The recommendation and picture tools: clip attributes, folder index, similar clips, plot.

The `MusicTools` methods `clip_attributes`, `index_folder`, `find_similar` and
`plot_clip` are thin wrappers around the functions here (their docstrings are
what agents read); this module holds their result schemas and the work.
"""

from __future__ import annotations

import base64

from pydantic import BaseModel, Field, PrivateAttr

from agent_tools.context import Toolbox, progress_callback
from agent_tools.schemas import AudioInfo
from agent_tools.similarity import (
    IndexReport,
    KeyMode,
    Method,
    SimilarResults,
    TempoConstraint,
    _embedding,
    build_index,
    clip_attributes_of,
    load_index,
    search,
)
from model.dsp.features import ClipAttributes
from model.errors import InputError


class AttributesReport(BaseModel):
    """Recommendation attributes of a clip: tempo, key/mode, loudness, energy, danceability, tags."""

    summary: str
    audio: AudioInfo
    attributes: ClipAttributes


class ClipPlot(BaseModel):
    """A PNG picture of the clip: spectrogram, chord segments, waveform with beats and downbeats."""

    summary: str
    audio: AudioInfo
    image_file: str = Field(description="Where the PNG was saved (in the cache directory).")
    width_px: int
    height_px: int
    beats: int = Field(description="Beats drawn.")
    downbeats: int = Field(description="Downbeats (bar lines) drawn.")
    chord_segments: int = Field(description="Chord segments drawn.")
    # The PNG bytes travel beside the JSON (MCP image content, LangChain artifact), never inside it.
    _png: bytes = PrivateAttr(default=b"")

    @property
    def png(self) -> bytes:
        return self._png

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self._png).decode()


def attributes_report(toolbox: Toolbox, audio: str, offset_s: float, duration_s: float | None, with_tags: bool) -> AttributesReport:
    clip, info = toolbox.load(audio, offset_s, duration_s)
    attributes = clip_attributes_of(toolbox, clip, with_tags=with_tags)
    return AttributesReport(summary=attributes.summary, audio=info, attributes=attributes)


def index_report(toolbox: Toolbox, folder: str, with_embeddings: bool) -> IndexReport:

    # Report one step per file; silence the per-call steps of the analyses inside, which would
    # otherwise make the client's progress bar jump back and forth.
    outer = progress_callback.get()
    token = progress_callback.set(None)
    try:
        _, report = build_index(toolbox, folder, with_embeddings=with_embeddings, progress=outer)
    finally:
        progress_callback.reset(token)
    return report


def similar_results(
    toolbox: Toolbox,
    audio: str,
    folder: str,
    k: int,
    tempo: TempoConstraint | None,
    key_mode: KeyMode | None,
    method: Method,
) -> SimilarResults:
    from agent_tools.inputs import resolve_path

    root = resolve_path(folder, toolbox.settings)
    index = load_index(toolbox.settings.cache_dir, root)
    if index is None:
        raise InputError(f"{folder}: not indexed yet. Call index_folder with this folder first, then find_similar.")
    clip, info = toolbox.load(audio)
    query = clip_attributes_of(toolbox, clip, with_tags=False)
    embedding = None
    if method != "features" and index.embedding_model:
        embedding, _, _ = _embedding(toolbox, clip)
    used, candidates, results = search(
        index, query, query_embedding=embedding, query_sha256=clip.sha256, k=k, tempo=tempo, key_mode=key_mode, method=method
    )
    constraints = [c for c in (tempo and f"tempo: {tempo} than the query", key_mode and f"{key_mode} key") if c]
    if results:
        best = results[0]
        summary = (
            f"{len(results)} of {candidates} matching clips; closest: {best.path} (similarity {best.similarity:.2f}; "
            f"{best.why})."
        )
    else:
        summary = (
            f"No indexed clip in {root} meets the constraints ({', '.join(constraints) or 'none'}); "
            "relax them or index more music."
        )
    return SimilarResults(
        summary=summary, query=info.source, query_attributes=query, folder=str(root), method=used,
        constraints=constraints, candidates=candidates, results=results,
    )


def clip_plot(toolbox: Toolbox, audio: str, offset_s: float, duration_s: float | None) -> ClipPlot:
    from model.dsp.plot import plot_clip_png

    clip, info = toolbox.load(audio, offset_s, duration_s)
    analysis = toolbox.measure("analysis", clip, lambda: toolbox.analyzer.analyze(clip))
    # Analyses report file times; the picture shows the analysed window from 0.
    shift = clip.offset_s
    beats = [t - shift for t in analysis.beats.beats_s]
    downbeats = [t - shift for t in analysis.beats.downbeats_s]
    chords = [(s.start_s - shift, s.end_s - shift, s.label) for s in analysis.chords.segments]
    facts = [
        f"{analysis.tempo.bpm:.0f} BPM" if analysis.tempo.bpm else "no steady tempo",
        analysis.key.key or "no clear key",
        f"{analysis.beats.meter} meter" if analysis.beats.meter else "",
    ]
    name = info.source if info.source.startswith("data URI") else info.source.rsplit("/", 1)[-1]
    title = f"{name}  -  " + ", ".join(f for f in facts if f)
    dpi = 100
    png = plot_clip_png(clip, beats=beats, downbeats=downbeats, chords=chords, title=title, dpi=dpi)
    target = toolbox.settings.cache_dir / "plots" / f"{clip.sha256[:24]}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    result = ClipPlot(
        summary=f"Plot of {info.source} ({clip.duration_s:.1f} s): {len(downbeats)} bars, {len(beats)} beats, "
        f"{len(chords)} chord segments; saved to {target}.",
        audio=info, image_file=str(target), width_px=13 * dpi, height_px=int(6.5 * dpi), beats=len(beats),
        downbeats=len(downbeats), chord_segments=len(chords),
    )
    result._png = png
    return result
