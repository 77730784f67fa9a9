"""The words the model is prompted with, shared by the engine, the agent tools and training."""

from __future__ import annotations

from typing import NamedTuple

from model.lm.measurements import Measurements

CAPTION_PROMPT = "Describe this music clip in detail."
# The clip classifier's genre is put in front of the prompt only when it gives it at least this probability
# (fixed before any held-out evaluation; below it the decoder answers without a hint, as for a clip of no known
# genre). The decoder is trained to read the hint at this threshold, so multiple choice uses it as it is.
HEARD_MIN_PROBABILITY = 0.4
# A free-form answer names the genre only when the classifier gives it at least this probability; below it
# grounded decoding forbids every genre word. Set on a calibration set neither trained on nor held out
# (`python -m training.bench genre_calibration`: 96 clips of drascula-music and asc-music, genre by the
# musicnn tagger where it is sure, 26 clips): the heard genre was right on 15 of 26 at 0.4, 64-70 % at
# 0.6-0.8, 7 of 9 at 0.9. Few clips, so a coarse setting, not a calibrated one (docs/model.md).
STATED_GENRE_MIN_PROBABILITY = 0.9


class HeardGenre(NamedTuple):
    """The genre the clip classifier gives the most probability, and that probability."""

    word: str
    probability: float

    @property
    def hint(self) -> str | None:
        """The genre put in front of the prompt (`with_heard_genre`), or None where the classifier is unsure."""
        return self.word if self.probability >= HEARD_MIN_PROBABILITY else None

    @property
    def stated(self) -> str | None:
        """The genre a free-form answer may name, or None where the classifier is not sure enough."""
        return self.word if self.probability >= STATED_GENRE_MIN_PROBABILITY else None


NOTHING_HEARD = HeardGenre("", 0.0)  # no genre hint in the checkpoint, or its classifier names none


def with_measurements(question: str, measurements: Measurements | None) -> str:
    """The question as the model reads it: the DSP measurement sentence, then the question."""
    sentence = measurements.sentence() if measurements else ""
    return f"{sentence} {question}" if sentence else question


def with_heard_genre(prompt: str, genre: str | None) -> str:
    """The prompt as a model with a genre hint reads it: 'Heard: genre rock.' first (nothing without one)."""
    return f"Heard: genre {genre}. {prompt}" if genre else prompt
