"""What an agent's LLM reads from a tool result: the summary plus the compact, timed facts.

Every front end (the MCP text content, the LangChain tool string) uses `digest`, so
both carry the same facts. The full result stays structured (MCP `structuredContent`,
LangChain `artifact`); `detail=True` appends it as compact JSON to the text as well.

The facts are bounded: chord changes and bar starts are listed up to a character
budget (about 2,000 tokens for the whole text on any clip length), then
"... N more; call with detail=true" says what was left out and how to get it.
"""

from __future__ import annotations

import typing
from typing import Annotated

import numpy as np
from pydantic import BaseModel, Field

from model.dsp.results import BeatsResult, ChordsResult, KeyResult, TempoResult

# The argument front ends add to tools whose results carry timed measurements.
DETAIL = "detail"
Detail = Annotated[
    bool,
    Field(description="Also put the full result (every beat, chord segment and candidate) into the text as "
                      "JSON. Leave false: the text already lists the chord changes and bar starts with their "
                      "times, and the full result is in the structured content."),
]

# Character budgets of the timed lists. Tokenizers like SmolLM2's spend a token per digit, so these lists
# cost about 0.7 tokens per character: 2,000 + 500 characters keep any clip's text under 2,000 tokens.
CHORD_BUDGET_CHARS = 2000
BAR_BUDGET_CHARS = 500
# Bars this even (every bar within 8 % of the median bar) are stated as a grid instead of listed.
STEADY_BAR_TOLERANCE = 0.08
MEASUREMENTS = (TempoResult, BeatsResult, KeyResult, ChordsResult)


def digest(result: BaseModel, *, detail: bool = False) -> str:
    """The LLM-facing text of a tool result: summary, compact timed facts, warning; the JSON when `detail`."""
    summary = getattr(result, "summary", None) or ""
    lines = [summary] if summary else []
    measured = measurements(result)
    lines += facts(measured, detail=detail)
    warning = getattr(result, "warning", None)
    if warning:
        lines.append(f"Warning: {warning}")
    if detail or not lines:
        exclude = {"png"} & set(type(result).model_fields)  # pictures travel as image content
        lines.append("Full result (JSON): " + result.model_dump_json(exclude=exclude, exclude_none=True))
    return "\n".join(lines)


def takes_detail(method) -> bool:
    """Whether a tool's result carries timed measurements, so its front-end tool gets a `detail` argument."""
    returned = typing.get_type_hints(method).get("return")
    return isinstance(returned, type) and issubclass(returned, BaseModel) and _contains_measurement(returned)


def _contains_measurement(model: type[BaseModel], depth: int = 2) -> bool:
    """A field (or, one level down, a field's field) is a tempo/beats/key/chords result."""
    for field in model.model_fields.values():
        for kind in typing.get_args(field.annotation) or (field.annotation,):
            if not isinstance(kind, type):
                continue
            if issubclass(kind, MEASUREMENTS):
                return True
            if issubclass(kind, BaseModel) and depth > 1 and _contains_measurement(kind, depth - 1):
                return True
    return False


def measurements(result: BaseModel) -> dict[type, BaseModel]:
    """The tempo/beats/key/chords results inside `result` (directly, or one level down as in ClipReport)."""
    found: dict[type, BaseModel] = {}
    for value in [result, *(getattr(result, name) for name in type(result).model_fields)]:
        candidates = [value]
        if isinstance(value, BaseModel) and not isinstance(value, MEASUREMENTS):
            candidates = [getattr(value, name) for name in type(value).model_fields]
        for candidate in candidates:
            for kind in MEASUREMENTS:
                if isinstance(candidate, kind):
                    found.setdefault(kind, candidate)
    return found


def facts(measured: dict[type, BaseModel], *, detail: bool = False) -> list[str]:
    """One line per measurement: tempo, meter and key as values, chord changes and bar starts with times."""
    lines = []
    headline = []
    if (tempo := measured.get(TempoResult)) and tempo.bpm is not None:
        headline.append(f"tempo {tempo.bpm:.1f} BPM (confidence {tempo.confidence:.2f})")
    if (beats := measured.get(BeatsResult)) and beats.meter:
        headline.append(f"meter {beats.meter}")
    if (key := measured.get(KeyResult)) and key.key:
        headline.append(f"key {key.key} (confidence {key.confidence:.2f})")
    if headline:
        lines.append("Facts: " + "; ".join(headline) + ".")
    if chords := measured.get(ChordsResult):
        changes = [f"{s.start_s:.1f} {s.label}" for s in chords.segments]
        if changes:
            lines.append(f"Chord changes (start s, chord; N = no chord; {len(changes)} in all): "
                         + bounded(changes, " | ", CHORD_BUDGET_CHARS, "changes", detail))
    if beats and beats.downbeats_s:
        lines.append(bar_starts(beats, detail))
    return lines


def bar_starts(beats: BeatsResult, detail: bool) -> str:
    """The bar starts: a grid (first bar, bar length, last bar) when the bars are steady, else the times."""
    starts = beats.downbeats_s
    head = f"Bar starts (s; {len(starts)} bars, {len(beats.beats_s)} beats): "
    if len(starts) >= 4 and not detail:
        lengths = np.diff(starts)
        bar = float(np.median(lengths))
        if bar > 0 and float(np.max(np.abs(lengths - bar))) <= STEADY_BAR_TOLERANCE * bar:
            # The mean length makes the grid land on the last bar exactly; per-bar times are in the detail.
            mean = (starts[-1] - starts[0]) / (len(starts) - 1)
            return (head + f"steady grid, bar n starts at {starts[0]:.2f} + (n-1) x {mean:.3f} "
                    f"(last bar {starts[-1]:.2f}); every bar within {STEADY_BAR_TOLERANCE:.0%} of it")
    return head + bounded([f"{t:.1f}" for t in starts], " ", BAR_BUDGET_CHARS, "bars", detail)


def bounded(items: list[str], separator: str, budget_chars: int, what: str, detail: bool,
            note: str = "call with detail=true for all") -> str:
    """`items` joined, cut at `budget_chars` with a note of how many were left out and how to get them."""
    kept, used = [], 0
    for item in items:
        if used + len(item) + len(separator) > budget_chars and not detail:
            break
        kept.append(item)
        used += len(item) + len(separator)
    text = separator.join(kept)
    left = len(items) - len(kept)
    if left:
        text += f"{separator}... {left} more {what}; {note}"
    return text
