"""The words the model is prompted with, shared by the engine, the agent tools and training."""

from __future__ import annotations

from model.lm.measurements import Measurements

CAPTION_PROMPT = "Describe this music clip in detail."


def with_measurements(question: str, measurements: Measurements | None) -> str:
    """The question as the model reads it: the DSP measurement sentence, then the question."""
    sentence = measurements.sentence() if measurements else ""
    return f"{sentence} {question}" if sentence else question
