"""The DSP capabilities, in one table: what each analysis is called, which `MusicAnalyzer`
method computes it, what it returns, and how it measures (the router quotes that).

Everything that dispatches on an analysis kind (the toolbox, its cache, the worker
processes, the router) reads this table, so adding an analysis is a method on
`MusicAnalyzer`, a result model and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from model.audio import AudioClip
from model.dsp.analyzer import MusicAnalyzer
from model.dsp.results import (
    BeatsResult,
    ChordsResult,
    ClipAnalysis,
    KeyResult,
    SectionsResult,
    TempoResult,
)


@dataclass(frozen=True)
class Capability:
    kind: str  # also the cache namespace of its results
    method: str  # the MusicAnalyzer method that computes it
    result: type[BaseModel]
    how: str  # how it is measured, in a sentence an agent can read


CAPABILITIES: dict[str, Capability] = {c.kind: c for c in (
    Capability("analysis", "analyze", ClipAnalysis, "every measurement below in one pass"),
    Capability("tempo", "tempo", TempoResult,
               "tempo is measured by madmom's beat tracker (median inter-beat interval), more precise than a "
               "language model"),
    Capability("beats", "beats", BeatsResult, "beats, downbeats and meter are tracked by madmom's downbeat tracker"),
    Capability("key", "key", KeyResult, "key and mode are measured by madmom's CNN key classifier over the whole clip"),
    Capability("chords", "chords", ChordsResult,
               "chords are transcribed by madmom's deep chroma chord recogniser, with start and end times"),
    Capability("sections", "sections", SectionsResult,
               "sections are found on our bar grid from changes in harmony (deep chroma) and timbre, and lettered "
               "by similarity so repeats share a letter"),
)}


def capability(kind: str) -> Capability:
    try:
        return CAPABILITIES[kind]
    except KeyError:
        raise ValueError(f"unknown DSP analysis {kind!r}; expected one of {', '.join(CAPABILITIES)}") from None


def run(analyzer: MusicAnalyzer, kind: str, clip: AudioClip) -> BaseModel:
    """Compute analysis `kind` of `clip` with `analyzer`."""
    return getattr(analyzer, capability(kind).method)(clip)
