"""What the DSP tools measured, as the sentence the model reads before a question.

A 135 M decoder cannot count beats or name keys reliably from 60 audio tokens, but
it can read. So, as OpenMU's tool use and LLark's metadata do, the caller measures
tempo, meter and key with the DSP tools and puts them in front of the question
(`model.lm.prompts.with_measurements`):

    Measured: tempo 135 BPM (fast), meter 4/4, key C minor. What genre is this?

The model is trained with this sentence (sometimes missing or partly missing, as
unconfident readings are), so its words agree with the measurements, it still answers
from the audio alone, and it says it is unsure of a tempo, key or meter nobody
measured. Only confident readings are stated; the thresholds below are the ones used
when real recordings are labelled for training, so a model reads the same kind of
sentence at inference that it learnt from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TEMPO_CLASSES = ("slow", "medium", "fast")
TEMPO_CLASS_BOUNDS_BPM = (90.0, 130.0)
# Readings below these confidences are left out (they are wrong too often to state). The analyzer's
# confidences are calibrated (the accuracy a reading of that score had on the DSP benchmark), so
# these read as "stated when right at least this share of the time".
MIN_TEMPO_CONFIDENCE = 0.3
MIN_METER_CONFIDENCE = 0.3
MIN_KEY_CONFIDENCE = 0.5
_SENTENCE = re.compile(r"Measured: (?:tempo (?P<bpm>\d+) BPM \(\w+\)(?:, |\.))?(?:meter (?P<meter>\d/\d)(?:, |\.))?"
                       r"(?:key (?P<key>[A-G][#b]? (?:major|minor))\.)?")


def tempo_class(bpm: float) -> str:
    """'slow', 'medium' or 'fast' by TEMPO_CLASS_BOUNDS_BPM."""
    low, high = TEMPO_CLASS_BOUNDS_BPM
    return "slow" if bpm < low else "fast" if bpm > high else "medium"


@dataclass(frozen=True)
class Measurements:
    """Confident DSP readings of a clip; None where nothing confident was measured."""

    tempo_bpm: float | None = None
    meter: str | None = None  # "3/4" or "4/4"
    key: str | None = None  # "C minor"

    @classmethod
    def from_analysis(cls, analysis: Any) -> Measurements:
        """The confident parts of a `model.dsp.results.ClipAnalysis` (nothing for silence)."""
        if analysis.silent:
            return cls()
        tempo, beats, key = analysis.tempo, analysis.beats, analysis.key
        return cls(
            tempo_bpm=tempo.bpm if tempo.bpm and tempo.confidence >= MIN_TEMPO_CONFIDENCE else None,
            meter=beats.meter if beats.meter and beats.meter_confidence >= MIN_METER_CONFIDENCE else None,
            key=key.key if key.key and key.confidence >= MIN_KEY_CONFIDENCE else None,
        )

    @classmethod
    def from_prompt(cls, prompt: str) -> Measurements:
        """The readings stated by the measurement sentence in a prompt (`sentence`'s inverse; none without one)."""
        found = _SENTENCE.search(prompt)
        if found is None:
            return cls()
        return cls(tempo_bpm=float(found["bpm"]) if found["bpm"] else None, meter=found["meter"], key=found["key"])

    def sentence(self) -> str:
        """'Measured: tempo 135 BPM (fast), meter 4/4, key C minor.'; '' when nothing was measured."""
        parts = []
        if self.tempo_bpm:
            bpm = round(self.tempo_bpm)  # the class of the number stated, so the sentence reads back as written
            parts.append(f"tempo {bpm} BPM ({tempo_class(bpm)})")
        if self.meter:
            parts.append(f"meter {self.meter}")
        if self.key:
            parts.append(f"key {self.key}")
        return f"Measured: {', '.join(parts)}." if parts else ""

    def to_json(self) -> dict[str, Any]:
        return {"tempo_bpm": self.tempo_bpm, "meter": self.meter, "key": self.key}
