"""Routing accuracy of `agent_tools.router.route` on the labelled question set.

`training/bench/router_questions.jsonl` holds questions written by hand (plain,
paraphrased, casual, with typos, mixed), each labelled with the backends that
should answer it: DSP `tempo`, `key`, `chords`, `beats` (beats/downbeats/meter)
and/or `model` (TinyMU). A question counts as correct only when the routed set
of backends equals the label exactly. One third of the set (chosen by a hash of
the question) is held out: the rules were tuned on `dev` only, so the held-out
accuracy is the honest number.

    python -m training.bench router [--split heldout] [--show-errors]
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agent_tools.router import route

QUESTIONS = Path(__file__).with_name("router_questions.jsonl")


@dataclass
class RoutedQuestion:
    question: str
    expected: tuple[str, ...]
    predicted: tuple[str, ...]
    split: str
    style: str

    @property
    def correct(self) -> bool:
        return self.expected == self.predicted


def load_questions(path: Path = QUESTIONS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(path: Path = QUESTIONS) -> list[RoutedQuestion]:
    """Route every labelled question and pair the decision with its label."""
    return [
        RoutedQuestion(
            question=row["question"],
            expected=tuple(row["backends"]),
            predicted=tuple(route(row["question"]).backends),
            split=row["split"],
            style=row.get("style", ""),
        )
        for row in load_questions(path)
    ]


def accuracy(results: list[RoutedQuestion]) -> float:
    return sum(r.correct for r in results) / len(results) if results else float("nan")


def print_report(results: list[RoutedQuestion], show_errors: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Router accuracy (exact backend set)")
    table.add_column("split")
    table.add_column("style")
    table.add_column("questions", justify="right")
    table.add_column("accuracy", justify="right")
    for split in ("dev", "heldout"):
        subset = [r for r in results if r.split == split]
        for style in sorted({r.style for r in subset}):
            part = [r for r in subset if r.style == style]
            table.add_row(split, style, str(len(part)), f"{accuracy(part):.1%}")
        table.add_row(f"[bold]{split}", "[bold]all", f"[bold]{len(subset)}", f"[bold]{accuracy(subset):.1%}")
    console.print(table)

    # Confusion per backend: how often each backend was wrongly added or wrongly left out.
    confusion = Table(title="Per-backend errors (all splits)")
    for column in ("backend", "labelled", "routed", "missed", "spurious"):
        confusion.add_column(column, justify="right" if column != "backend" else "left")
    labelled, routed, missed, spurious = Counter(), Counter(), Counter(), Counter()
    for r in results:
        for b in r.expected:
            labelled[b] += 1
            if b not in r.predicted:
                missed[b] += 1
        for b in r.predicted:
            routed[b] += 1
            if b not in r.expected:
                spurious[b] += 1
    for b in ("tempo", "key", "chords", "beats", "model"):
        confusion.add_row(b, str(labelled[b]), str(routed[b]), str(missed[b]), str(spurious[b]))
    console.print(confusion)

    if show_errors:
        for r in results:
            if not r.correct:
                console.print(f"[{r.split}] {r.question!r}: expected {list(r.expected)}, routed {list(r.predicted)}")


def main(
    split: str = typer.Option("all", help="dev, heldout or all (which errors to list)."),
    show_errors: bool = typer.Option(False, help="List the misrouted questions."),
) -> None:
    """Print routing accuracy per split and style, and per-backend misses."""
    results = evaluate()
    shown = results if split == "all" else [r for r in results if r.split == split]
    print_report(results, show_errors=False)
    if show_errors:
        for r in shown:
            if not r.correct:
                print(f"[{r.split}] {r.question!r}: expected {list(r.expected)}, routed {list(r.predicted)}")


if __name__ == "__main__":
    typer.run(main)
