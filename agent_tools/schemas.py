"""Pydantic results of every tool: the output schemas MCP clients and LangChain agents see.

Each result is flat and readable: a one-line `summary` first (what an LLM should
read), then `audio` (exactly what was analysed), then the measurements. The DSP
measurements reuse the result models of `model.dsp.analyzer`, so there is one
definition of a tempo, a key or a chord segment in the whole project.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from model.audio import AudioClip
from model.dsp.results import (
    BeatsResult,
    ChordsResult,
    ClipAnalysis,
    KeyResult,
    SectionsResult,
    TempoResult,
)


class AudioInfo(BaseModel):
    """What was analysed: the source and the decoded window."""

    source: str = Field(description="The file path, URL, or 'data URI (N bytes)' the audio came from.")
    sha256: str = Field(description="Content hash of the decoded window; key of music://analysis/{sha256}.")
    sample_rate_hz: int = Field(description="Sample rate of the decoded file (analyses resample as they need).")
    offset_s: float = Field(description="Start of the analysed window, seconds from the start of the file.")
    duration_s: float = Field(description="Length of the analysed window in seconds.")
    source_duration_s: float = Field(description="Length of the whole recording in seconds.")
    silent: bool = Field(description="True when the window is (near-)silent: no tempo, key or chords can be found.")

    @classmethod
    def from_clip(cls, clip: AudioClip, source: str) -> AudioInfo:
        return cls(
            source=source,
            sha256=clip.sha256,
            sample_rate_hz=clip.sample_rate,
            offset_s=round(clip.offset_s, 3),
            duration_s=round(clip.duration_s, 3),
            source_duration_s=round(clip.source_duration_s, 3),
            silent=clip.is_silent,
        )


# --- DSP tools -------------------------------------------------------------------


class ClipReport(BaseModel):
    """Everything the DSP measures at once: tempo, beats/downbeats/meter, key and chords."""

    summary: str
    audio: AudioInfo
    analysis: ClipAnalysis


class TempoReport(BaseModel):
    """Tempo in BPM with a confidence and the half/double alternatives."""

    summary: str
    audio: AudioInfo
    tempo: TempoResult


class BeatsReport(BaseModel):
    """Beat and downbeat times and the meter."""

    summary: str
    audio: AudioInfo
    beats: BeatsResult


class KeyReport(BaseModel):
    """Musical key with a confidence and the runners-up."""

    summary: str
    audio: AudioInfo
    key: KeyResult


class ChordsReport(BaseModel):
    """Timed chord segments (Harte labels) and the progression."""

    summary: str
    audio: AudioInfo
    chords: ChordsResult


# --- finding files ---------------------------------------------------------------


class AudioFile(BaseModel):
    path: str = Field(description="Absolute path: pass it as the `audio` argument of the other tools.")
    size_bytes: int
    duration_s: float | None = Field(description="Length in seconds from the file header; None when the "
                                                 "header cannot be read (the file may still decode).")


class AudioFileList(BaseModel):
    """Audio files under the allowed folders, in path order."""

    summary: str = Field(description="How many files were found, and their paths with durations.")
    roots: list[str] = Field(description="The folders that were searched.")
    files: list[AudioFile]
    total: int = Field(description="Files that matched; more than len(files) when the list was cut at `limit`.")


# --- model tools -----------------------------------------------------------------


class ModelBackend(BaseModel):
    """Which music-language model answered."""

    name: str = Field(description="Model name, e.g. 'TinyMU'.")
    checkpoint: str | None = Field(default=None, description="Checkpoint the weights came from.")
    remote: bool = Field(description="True when a remote model service (TINYMU_URL) answered.")
    trained: bool = Field(description="False when the weights are untrained: the answer is then not meaningful.")
    caveat: str | None = Field(default=None, description="What the trained weights are known not to do well.")

    def credit(self, summary: str) -> dict:
        """The fields every model result shares: its summary (marked when the weights are untrained),
        this backend, the trained flag and the warning: the untrained one, or the trained weights' caveat."""
        if self.trained:
            return {"summary": summary, "backend": self, "trained": True, "warning": self.caveat}
        return {"summary": f"(untrained model) {summary}", "backend": self, "trained": False,
                "warning": UNTRAINED_WARNING}


UNTRAINED_WARNING = (
    "The music-language model's weights are untrained: this text is not a meaningful description of the audio. "
    "Rely on the DSP tools (tempo, key, chords, beats) for facts."
)


class ModelAnswer(BaseModel):
    """A free-form answer of the music-language model to a question about the audio."""

    summary: str
    audio: AudioInfo
    question: str
    answer: str
    backend: ModelBackend
    trained: bool = Field(description="Copy of backend.trained, for quick checks.")
    warning: str | None = Field(default=None, description="Set when the answer should not be trusted.")


class MusicCaption(BaseModel):
    """A short description of the audio by the music-language model."""

    summary: str
    audio: AudioInfo
    caption: str
    backend: ModelBackend
    trained: bool
    warning: str | None = None


class OptionProbability(BaseModel):
    letter: str = Field(description="A, B, C, ... in the order the options were given.")
    option: str
    probability: float = Field(ge=0.0, le=1.0)


class MultipleChoice(BaseModel):
    """The option the model picks, with every option's probability (they sum to 1)."""

    summary: str
    audio: AudioInfo
    question: str
    choice: str = Field(description="Text of the chosen option.")
    choice_letter: str
    choice_index: int = Field(description="0-based index of the chosen option.")
    options: list[OptionProbability]
    backend: ModelBackend
    trained: bool
    warning: str | None = None


# --- routed questions ------------------------------------------------------------


class RoutedAnswer(BaseModel):
    """An answer to a music question, from the DSP tools, the model, or both, with its evidence."""

    summary: str = Field(description="The answer, in one or two sentences.")
    audio: AudioInfo
    question: str
    backends: list[Literal["dsp", "model"]] = Field(description="Which backends answered.")
    reason: str = Field(description="Why the question was routed there.")
    evidence: list[str] = Field(description="The measurements the answer rests on, e.g. 'tempo: 121.0 BPM'.")
    tempo: TempoResult | None = None
    beats: BeatsResult | None = None
    key: KeyResult | None = None
    chords: ChordsResult | None = None
    model_answer: ModelAnswer | None = None
    warning: str | None = None


# --- song structure ------------------------------------------------------------------


class SectionsReport(BaseModel):
    """Song sections on the bar grid, lettered so repeats share a letter (A B A B ...)."""

    summary: str
    audio: AudioInfo
    sections: SectionsResult
