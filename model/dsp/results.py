"""Typed results of the DSP analyses, written for an LLM reader.

Every time is in seconds from the start of the audio file (an analysed window
that starts at `offset_s` reports file times, not window times). Every result
has a one-line `summary`; when nothing was found (silence, no steady beat, no
tonal content) the fields are empty/None and the summary says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TempoCandidate(BaseModel):
    bpm: float = Field(description="tempo in beats per minute")
    relation: Literal["half", "double"] = Field(description="how this reading relates to the main bpm")
    strength: float = Field(ge=0, le=1, description="how plausible a listener would find this reading (0-1)")


class TempoResult(BaseModel):
    """Global tempo of the clip."""

    bpm: float | None = Field(description="beats per minute; None when no steady beat was found")
    confidence: float = Field(ge=0, le=1, description="0-1; high when beats are regular and clearly accented")
    alternatives: list[TempoCandidate] = Field(default_factory=list, description="half/double readings a listener might tap instead")
    summary: str


class BeatsResult(BaseModel):
    """Beat and downbeat times and the meter."""

    beats_s: list[float] = Field(description="beat times in seconds from the start of the file")
    downbeats_s: list[float] = Field(description="times of the first beat of each bar, seconds from the start of the file")
    meter: Literal["3/4", "4/4"] | None = Field(description="time signature; None when no beat was found")
    beats_per_bar: int | None
    meter_confidence: float = Field(ge=0, le=1, description="0-1; how clearly the bar grouping stands out")
    summary: str


class KeyCandidate(BaseModel):
    key: str = Field(description="e.g. 'A minor', 'Eb major'")
    confidence: float = Field(ge=0, le=1)


class KeyResult(BaseModel):
    """Global key (tonic and mode) of the clip."""

    key: str | None = Field(description="e.g. 'A minor'; None when the audio has no clear tonal content")
    tonic: str | None = Field(description="pitch class of the tonic, e.g. 'A', 'F#', 'Eb'")
    mode: Literal["major", "minor"] | None
    confidence: float = Field(ge=0, le=1, description="0-1 probability of the reported key")
    alternatives: list[KeyCandidate] = Field(default_factory=list, description="the runners-up, most likely first")
    summary: str


class ChordSegment(BaseModel):
    start_s: float = Field(description="seconds from the start of the file")
    end_s: float = Field(description="seconds from the start of the file")
    label: str = Field(description="Harte chord label: 'A:min', 'F#:maj'; 'N' means no chord")


class ChordsResult(BaseModel):
    """Timed chord segments and the progression they form."""

    segments: list[ChordSegment]
    progression: list[str] = Field(description="the repeating chord loop if there is one, else the first chords in order")
    loop_repeats: float = Field(description="how many times the loop is heard (0 when no loop was found)")
    distinct_chords: list[str] = Field(description="every chord heard, most time first")
    summary: str


class ClipAnalysis(BaseModel):
    """Tempo, beats/meter, key and chords of one clip, computed together."""

    sha256: str = Field(description="content hash of the analysed audio window")
    offset_s: float = Field(description="start of the analysed window in the file, seconds")
    duration_s: float = Field(description="length of the analysed window, seconds")
    silent: bool = Field(description="True when the window is (near) digital silence; nothing is reported then")
    tempo: TempoResult
    beats: BeatsResult
    key: KeyResult
    chords: ChordsResult
    summary: str


class Section(BaseModel):
    start_s: float = Field(description="seconds from the start of the file (a downbeat)")
    end_s: float = Field(description="seconds from the start of the file")
    label: str = Field(description="'A', 'B', ...: sections with the same letter sound alike (a repeat)")
    bars: int = Field(description="length in bars")


class SectionsResult(BaseModel):
    """Song structure: bar-aligned sections and which ones repeat."""

    sections: list[Section]
    form: str = Field(description="the section letters in order, e.g. 'ABAB'; empty when nothing was found")
    confidence: float = Field(ge=0, le=1, description="0-1; how clearly the boundaries stand out")
    summary: str
