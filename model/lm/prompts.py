"""The words the model is prompted with, shared by the engine, the agent tools and training."""

from __future__ import annotations

from model.lm.measurements import Measurements

CAPTION_PROMPT = "Describe this music clip in detail."
# The clip classifier's genre is stated only when it gives it at least this probability (fixed before
# any held-out evaluation; below it the decoder answers without a hint, as for a clip of no known genre).
HEARD_MIN_PROBABILITY = 0.4


def with_measurements(question: str, measurements: Measurements | None) -> str:
    """The question as the model reads it: the DSP measurement sentence, then the question."""
    sentence = measurements.sentence() if measurements else ""
    return f"{sentence} {question}" if sentence else question


def with_heard_genre(prompt: str, genre: str | None) -> str:
    """The prompt as a model with a genre hint reads it: 'Heard: genre rock.' first (nothing without one)."""
    return f"Heard: genre {genre}. {prompt}" if genre else prompt
