"""The MuChoMusic multiple-choice protocol: the official prompt and answer scorer.

Prompt (options in the order given; shuffle them before calling, as the benchmark does):

    Question: {question}
     Options: (A) .. (B) .. (C) .. (D) ..
     The correct answer is:

optionally preceded by one solved in-context example. Scoring takes the text
after "The correct answer is:"; if exactly one option letter occurs there it is
the choice, otherwise the option whose text occurs, otherwise the question
counts as unanswered. Accuracy and the instruction-following rate (share of
answered questions) are reported together. Shared by the engine's
`choose(method="generate")` and the training package's evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LETTERS = "ABCDEFGH"
ANSWER_MARKER = "The correct answer is:"


@dataclass(frozen=True)
class Example:
    question: str
    options: tuple[str, ...]
    answer: int


# Our own text-only example (the benchmark ships its own); it shows the answer format.
IN_CONTEXT_EXAMPLE = Example(
    question="Which of these instruments is played with a bow?",
    options=("trumpet", "violin", "snare drum", "flute"),
    answer=1,
)


def format_options(options: list[str] | tuple[str, ...]) -> str:
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"give between 2 and {len(LETTERS)} options, got {len(options)}")
    return " ".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(options))


def build_prompt(question: str, options: list[str] | tuple[str, ...], example: Example | None = None) -> str:
    """The official prompt, with `example` solved in front of it when given."""
    prompt = f"Question: {question}\n Options: {format_options(options)} \n {ANSWER_MARKER} "
    if example is None:
        return prompt
    solved = build_prompt(example.question, example.options)
    return f"{solved}({LETTERS[example.answer]}) {example.options[example.answer]}\n\n{prompt}"


_LETTER_PATTERNS = (
    r"\(([A-H])\)",  # (B)
    r"(?<![A-Za-z])([A-H])[\).:](?!\w)",  # B) or B. or B:
    r"^\s*([A-H])\s*$",  # a bare letter
)


def score_answer(text: str, options: list[str] | tuple[str, ...]) -> int | None:
    """Index of the option a generated answer picks, or None when it picks none or several."""
    after = text.split(ANSWER_MARKER)[-1]
    letters = LETTERS[: len(options)]
    found = {m for pattern in _LETTER_PATTERNS for m in re.findall(pattern, after) if m in letters}
    if len(found) == 1:
        return letters.index(found.pop())
    lowered = after.lower()
    hits = [i for i, option in enumerate(options) if option.strip() and option.strip().lower() in lowered]
    # A longer option may contain a shorter one ("piano" in "electric piano"): keep the longest.
    hits = [i for i in hits if not any(j != i and options[i].lower() in options[j].lower() for j in hits)]
    if len(hits) == 1:
        return hits[0]
    return None


def summarize(choices: list[int | None], answers: list[int]) -> dict[str, float]:
    """Accuracy over all questions (unanswered count as wrong) and instruction-following rate."""
    if len(choices) != len(answers):
        raise ValueError("one choice per answer")
    n = max(len(answers), 1)
    return {
        "accuracy": sum(c == a for c, a in zip(choices, answers)) / n,
        "instruction_following": sum(c is not None for c in choices) / n,
        "questions": float(len(answers)),
    }
