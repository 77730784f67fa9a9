"""Check the facts a free-form answer states against a clip's labels.

A caption or an answer in words is only useful if what it says is true. This module
reads the checkable facts out of a text (genre, tempo class, major/minor, key, drums)
and scores each against the clip's `ClipLabels`: true, false, or unverifiable (the
labels do not say). It also counts yes/no replies to what/which questions, the
failure of a model trained on multiple choice and yes/no only.

    python -m training.factcheck --checkpoint CKPT --data .cache/real-heldout --clips 100

asks every clip for a caption and two what-questions, and prints the share of stated
facts that are true and the share of yes/no replies.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import typer

from model.lm.grounding import GENRE_FAMILIES
from training.labels import MODES, PITCH_CLASSES, ClipLabels, pitch_class, read_labels
from training.qa import says_unsure

# Every genre word grounded decoding knows, as the coarse genre of our labels it claims ("metal" and
# "hard rock" claim rock, "symphony" orchestral, "dance music" electronic): the words it forbids where the
# classifier is unsure are the words checked here, so a genre said in other words is still checked.
GENRE_OF = {word: family[0] for family in GENRE_FAMILIES for word in family}
TEMPO_WORDS = {"slow": "slow", "medium": "medium", "moderate": "medium", "fast": "fast", "quick": "fast",
               "brisk": "fast"}
WHAT_QUESTIONS = ("What genre is this music?", "What instruments can you hear?", "How would you describe the mood?")
KEY_PATTERN = re.compile(r"\b([A-G])\s?([#b♯♭]?)\s+(major|minor)\b")


@dataclass
class FactCount:
    true: int = 0
    false: int = 0
    unverifiable: int = 0
    by_attribute: dict[str, list[int]] = field(default_factory=dict)  # attribute -> [true, false]

    def add(self, attribute: str, verdict: bool | None) -> None:
        if verdict is None:
            self.unverifiable += 1
            return
        self.true += verdict
        self.false += not verdict
        counts = self.by_attribute.setdefault(attribute, [0, 0])
        counts[0 if verdict else 1] += 1

    @property
    def share_true(self) -> float | None:
        checked = self.true + self.false
        return self.true / checked if checked else None


def stated_facts(text: str) -> list[tuple[str, str]]:
    """(attribute, value) pairs a text asserts; negated drums ("no drums", "without drums") count as drums=no."""
    lowered = text.lower()
    facts: list[tuple[str, str]] = []
    genres = {GENRE_OF[word] for word in GENRE_OF if re.search(rf"\b{re.escape(word)}\b", lowered)}
    facts += [("style", genre) for genre in sorted(genres)]  # a genre said twice is one fact
    for word, tempo in TEMPO_WORDS.items():
        if re.search(rf"\b{word}\b", lowered):
            facts.append(("tempo_class", tempo))
    keys = KEY_PATTERN.findall(text)
    for letter, accidental, mode in keys:
        facts.append(("key", f"{PITCH_CLASSES[pitch_class(letter + accidental.replace('♯', '#').replace('♭', 'b'))]} {mode}"))
    if not keys:
        facts += [("mode", mode) for mode in MODES if re.search(rf"\b{mode}\b", lowered)]
    if re.search(r"\b(no|without)\s+(a\s+)?drums?\b|\bdrumless\b", lowered):
        facts.append(("drums", "no"))
    elif re.search(r"\bdrums?\b|\bdrum kit\b", lowered):
        facts.append(("drums", "yes"))
    return facts


def verdict(attribute: str, value: str, clip: ClipLabels) -> bool | None:
    """Whether a stated fact is true of the clip; None when its labels do not say."""
    if attribute == "style":
        if clip.style is None:
            return None
        return GENRE_OF.get(clip.style, clip.style).replace("_", " ").split()[-1] == value.split()[-1] \
            or clip.style == value
    if attribute == "tempo_class":
        return None if clip.tempo_class is None else clip.tempo_class == value
    if attribute == "key":  # compared as pitch class and mode: "C# major" is "Db major"
        if clip.key_tonic is None or clip.mode is None:
            return None
        tonic, mode = value.split()
        return pitch_class(tonic) == pitch_class(clip.key_tonic) and mode == clip.mode
    if attribute == "mode":
        return None if clip.mode is None else clip.mode == value
    if attribute == "drums":
        return None if clip.has_drums is None else clip.has_drums == (value == "yes")
    return None


def score_text(text: str, clip: ClipLabels, counts: FactCount, doubted: FactCount) -> None:
    """Every fact `text` states, scored into `counts`, and into `doubted` too when the text says it is unsure."""
    for attribute, value in stated_facts(text):
        counts.add(attribute, verdict(attribute, value, clip))
        if says_unsure(text):
            doubted.add(attribute, verdict(attribute, value, clip))


def is_yes_no(text: str) -> bool:
    """A reply that is only a yes/no phrase ("No, that's not right.", "Yes, definitely.")."""
    return re.match(r"^\W*(yes|no)\b[^.?!]{0,30}[.!]?\s*$", text.strip().lower()) is not None


# Words a caption may use that no dictionary lists: units, our genre spelling, contractions' stems.
_OWN_WORDS = {"bpm", "hiphop", "synth", "synths", "aren", "isn", "doesn"}
_SUFFIXES = ("s", "es", "ed", "d", "ing", "ies")
_NOTE_OR_CHORD = re.compile(r"[a-g]b?(m|maj|min|dim|sus|aug|add)?")  # "Eb", "Dm", "Cmaj" (lowered)
_WORD = re.compile(r"[A-Za-z]+")


@lru_cache(maxsize=1)
def _dictionary() -> frozenset[str]:
    from english_words import get_english_words_set  # the training extra

    return frozenset(get_english_words_set(["web2", "gcide"], lower=True))


def non_words(text: str) -> list[str]:
    """The words of `text` that are in no English dictionary in any inflection, nor note names: what a
    decoder writes when it swerves mid-word ("walttala", "Gmajolo")."""
    words = _dictionary()

    def known(word: str) -> bool:
        word = word.lower()
        if word in words or word in _OWN_WORDS or len(word) == 1 or _NOTE_OR_CHORD.fullmatch(word):
            return True
        stems = [word[: -len(suffix)] for suffix in _SUFFIXES if word.endswith(suffix)]
        return any(stem in words or stem + "e" in words or stem + "y" in words for stem in stems)

    return [word for word in _WORD.findall(text) if not known(word)]


def fluency(replies: list[str]) -> dict:
    """How many words of `replies` are non-words, and in how many replies."""
    found = [non_words(text) for text in replies]
    return {"words": sum(len(_WORD.findall(text)) for text in replies),
            "non_words": sum(map(len, found)), "replies_with_non_words": sum(bool(f) for f in found),
            "replies": len(replies)}


def stray_numbers(report: dict) -> dict:
    """Numbers the replies state, and how many of them are no number of the clip's measurement sentence
    (its BPM, its meter's); a number at a reply's very end is not counted (cut off by the token limit)."""
    stated = stray = 0
    for example in report["answers"]:
        measured = set(re.findall(r"\d+", example["measured"]))
        for text in _replies_of(example):
            numbers = re.findall(r"\d+", text)
            if numbers and text.rstrip().endswith(numbers[-1]):
                numbers.pop()
            stated += len(numbers)
            stray += sum(number not in measured for number in numbers)
    return {"numbers": stated, "not_measured": stray}


def _replies_of(example: dict) -> list[str]:
    return [example["caption"], *example["answers"].values()]


def all_replies(report: dict) -> list[str]:
    """Every caption and answer of a fact-check report."""
    return [text for example in report["answers"] for text in _replies_of(example)]


def check(engine, clips: list[ClipLabels], root: Path, *, seed: int = 0, measure: bool | None = None) -> dict:
    """Ask each clip for a caption and the what-questions, as the tools do: with the clip's DSP
    measurements before the question when the model reads them (and `measure`)."""
    from model.lm.prompts import CAPTION_PROMPT, with_measurements
    from training.dataset import load_clip
    from training.evaluate import Measurer

    examples = []
    if measure is None:
        measure = engine.info().reads_measurements
    measured = (Measurer(root / "measurements", "audio", lambda name: load_clip(root / name), seed)
                if measure else lambda name: None)
    for clip in clips:
        audio = load_clip(root / clip.file_name)
        readings = measured(clip.file_name)
        caption = engine.answer(audio, with_measurements(CAPTION_PROMPT, readings), max_new_tokens=96).strip()
        answers = [engine.answer(audio, with_measurements(question, readings)).strip() for question in WHAT_QUESTIONS]
        examples.append({"file": clip.file_name, "measured": readings.sentence() if readings else "",
                         "caption": caption, "answers": dict(zip(WHAT_QUESTIONS, answers))})
    return score(examples, {clip.file_name: clip for clip in clips}, seed=seed)


def score(examples: list[dict], labels: dict[str, ClipLabels], *, seed: int = 0) -> dict:
    """The fact check of the replies in `examples` (as `check` writes them) against the clips' labels."""
    # Facts in a reply that says it is unsure are counted in the headline too, and also apart:
    # a guess marked as a guess misleads less than one stated flatly.
    counts, doubted = FactCount(), FactCount()
    for example in examples:  # the labels scored against, beside the replies (the shown captions' table)
        clip = labels[example["file"]]
        example["labels"] = {"style": clip.style, "tempo_class": clip.tempo_class, "key": clip.key, "mode": clip.mode}
    replies = [(text, labels[example["file"]]) for example in examples for text in _replies_of(example)]
    for text, clip in replies:
        score_text(text, clip, counts, doubted)
    yes_no = sum(is_yes_no(text) for text, _ in replies)
    shown = examples[:]
    random.Random(seed).shuffle(shown)
    report = {"clips": len(examples), "facts_true": counts.true, "facts_false": counts.false,
              "facts_unverifiable": counts.unverifiable, "share_true": counts.share_true,
              "by_attribute": counts.by_attribute, "doubted_true": doubted.true, "doubted_false": doubted.false,
              "share_true_without_doubt": FactCount(counts.true - doubted.true,
                                                    counts.false - doubted.false).share_true,
              "replies": len(replies), "yes_no_replies": yes_no,
              "share_yes_no": yes_no / len(replies) if replies else None, "shown": shown[:10], "answers": examples}
    report["fluency"] = fluency(all_replies(report)) | {"numbers": stray_numbers(report)}
    return report


def main(checkpoint: str = typer.Option(None, help="checkpoint to ask (default: the shipped one)"),
         data: Path = typer.Option(..., help="a folder with labels_real.jsonl (training.real_sets build)"),
         clips: int = typer.Option(100, help="how many clips (spread over the set)"),
         out: Path = typer.Option(None, help="where to write the JSON report (default: DATA/factcheck.json)"),
         seed: int = typer.Option(0),
         measure: bool = typer.Option(None, "--measure/--no-measure", show_default="when the model reads them",
                                      help="give the model the clip's DSP measurements, as the tools do"),
         grounded: bool = typer.Option(True, "--grounded/--free",
                                       help="grounded decoding (model.lm.grounding), as the tools answer; "
                                            "--free lets the decoder name any tempo, key or genre"),
         rescore: Path = typer.Option(None, help="score the replies of this earlier report again (the checker or "
                                                 "the labels changed) instead of asking the model")) -> None:
    """Caption and what-questions for held-out clips; share of stated facts that are true, yes/no replies."""
    from model.lm.engine import load_engine

    labels = read_labels(data, "real")
    if rescore:
        earlier = json.loads(rescore.read_text())
        report = score(earlier["answers"], {clip.file_name: clip for clip in labels}, seed=seed)
        report["checkpoint"], report["grounded"] = earlier["checkpoint"], earlier["grounded"]
    else:
        # Evenly spread over the set (a stride that divides badly would take most clips from its first sources).
        chosen = [labels[i * len(labels) // min(clips, len(labels))] for i in range(min(clips, len(labels)))]
        engine = load_engine(checkpoint)
        engine.grounded = grounded and engine.grounded
        report = check(engine, chosen, data, seed=seed, measure=measure)
        report["checkpoint"], report["grounded"] = checkpoint, engine.grounded
    target = out or data / "factcheck.json"
    target.write_text(json.dumps(report, indent=1))
    share = report["share_true"]
    typer.echo(f"{report['clips']} clips: {report['facts_true']} of {report['facts_true'] + report['facts_false']} "
               f"checkable facts true ({'-' if share is None else f'{100 * share:.1f} %'}), "
               f"{report['facts_unverifiable']} unverifiable ({report['doubted_true'] + report['doubted_false']} "
               f"checkable facts in replies that say they are unsure); yes/no replies {report['yes_no_replies']} of "
               f"{report['replies']}; {report['fluency']['non_words']} non-words in "
               f"{report['fluency']['replies_with_non_words']} replies; wrote {target}")
    # Key, tempo class and mode labels are our DSP's readings, which the model is given: genre is the fact
    # checked against a label that is not ours, so it is printed on its own.
    true, false = report["by_attribute"].get("style", [0, 0])
    typer.echo(f"by attribute (true, false): {report['by_attribute']}; genre, the label not from our DSP: "
               f"{true} of {true + false} true")
    typer.echo(captions_table(report["shown"]))


def captions_table(shown: list[dict]) -> str:
    """The shown clips' captions as a Markdown table, verbatim, beside what was measured and labelled."""
    rows = ["| clip | measured (given to the model) | labels | caption, verbatim |", "|---|---|---|---|"]
    for example in shown:
        labels = ", ".join(example["labels"][name] for name in ("style", "tempo_class", "key") if example["labels"][name])
        measured = example["measured"].removeprefix("Measured: ").rstrip(".") or "-"
        caption = example["caption"].replace("|", "/")
        rows.append(f"| {Path(example['file']).stem[:28]} | {measured} | {labels} | {caption} |")
    return "\n".join(rows)


if __name__ == "__main__":
    typer.run(main)
