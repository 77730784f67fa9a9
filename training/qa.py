"""Labels -> question/answer records in the MusicSkills format.

Each record is one JSON line with `file_name, input_text, target_text, dataset,
task` (the MusicSkills-3.5M format, so the real set drops in as it is), plus a
`meta` dict our evaluation reads (attribute, options, answer index, ...).
Tasks: `captioning`, `open_qa`, `multiple_choice` (4 options), `binary` (yes/no).

Why the answers cannot be read off the wording:
- every question type has several paraphrases (`training/qa_templates.py`);
- multiple-choice distractors follow MuChoMusic's kinds (incorrect but
  related, correct but unrelated, incorrect and unrelated) but are drawn only
  from values that are right answers elsewhere in the set, preferring values
  shown as right more often than as wrong, so each option text is right about
  one time in four; answer letters cycle evenly through A-D;
- yes/no questions are balanced per value asked about ("Is it in 3/4?" is
  answered yes exactly as often as no);
- low-cardinality attributes (mode, meter, tempo class, drums, energy) are
  asked as "profile" choices that pair two of them, so all four options have
  the same shape.
`training/wording_baseline.py` measures how far a text-only classifier gets.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from model.errors import InputError
from model.lm.measurements import Measurements
from model.lm.muchomusic import build_prompt
from model.lm.prompts import with_measurements
from training import qa_templates as T
from training.labels import (
    GM_FAMILIES,
    PITCH_CLASSES,
    TEMPO_CLASSES,
    ClipLabels,
    pitch_class,
)

TASKS = ("captioning", "open_qa", "multiple_choice", "binary")
LETTERS = "ABCD"
TEMPO_TOLERANCE = 0.08  # an open tempo answer within 8 % of the truth counts as right
PROFILE_ATTRIBUTES = ("mode", "meter", "tempo_class", "drums", "energy")
PROFILE_PAIRS = tuple((a, b) for i, a in enumerate(PROFILE_ATTRIBUTES) for b in PROFILE_ATTRIBUTES[i + 1:])
CHOICE_ATTRIBUTES = ("lead_instrument", "lead_family", "instrument_families", "style", "key", "tempo", "chords")
BINARY_ATTRIBUTES = ("lead_instrument", "lead_family", "instrument_families", "style", "key", "mode", "meter",
                     "tempo_class", "drums", "energy")
OPEN_ATTRIBUTES = tuple(T.OPEN)
_PROFILE_VALUES = {"mode": ("major", "minor"), "meter": ("3/4", "4/4"), "drums": (True, False),
                   "tempo_class": TEMPO_CLASSES, "energy": ("low", "medium", "high")}
IR, CU, IU = "incorrect_related", "correct_unrelated", "incorrect_unrelated"


class QARecord(BaseModel):
    """One training or evaluation example in the MusicSkills record format (+ our `meta`)."""

    model_config = ConfigDict(extra="ignore")

    file_name: str
    input_text: str
    target_text: str
    dataset: str
    task: str
    meta: dict[str, Any] | None = None

    @field_validator("file_name", "input_text", "target_text", "task")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return normalise_task(value)

    def to_json_line(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), ensure_ascii=False)


_TASK_ALIASES = {
    "caption": "captioning", "captions": "captioning", "music_captioning": "captioning", "description": "captioning",
    "qa": "open_qa", "open": "open_qa", "open_ended": "open_qa", "open-ended": "open_qa", "openqa": "open_qa",
    "mcq": "multiple_choice", "mc": "multiple_choice", "multi_choice": "multiple_choice", "multiple-choice": "multiple_choice",
    "multichoice": "multiple_choice", "choice": "multiple_choice",
    "yes_no": "binary", "yesno": "binary", "yes/no": "binary", "boolean": "binary", "binary_qa": "binary",
}


def normalise_task(task: str) -> str:
    """Our task name for a task label (MusicSkills spellings map onto ours; unknown ones are kept as given)."""
    key = task.strip().lower().replace(" ", "_")
    return _TASK_ALIASES.get(key, key)


# --- phrases -------------------------------------------------------------------


def instrument_phrase(name: str) -> str:
    """Readable instrument name: 'Electric Guitar (clean)' -> 'clean electric guitar', 'Lead 1 (square)' -> 'square lead'."""
    name = name.strip()
    match = re.match(r"^(.*?)\s*\((.+)\)\s*$", name)
    if match:
        base, detail = match.groups()
        base = re.sub(r"\s*\d+$", "", base)
        name = f"{detail} {base}"
    return re.sub(r"\s+\d+$", "", name).lower()


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fill(template: str, rng: random.Random, noun: str | None = None, **values: str) -> str:
    noun = noun or rng.choice(T.NOUNS)
    text = template
    for key, value in values.items():
        text = text.replace("{" + key + "}", value).replace("{" + _capitalise(key) + "}", _capitalise(value))
    text = text.replace("{noun}", noun).replace("{Noun}", _capitalise(noun))
    return re.sub(r"\ba ([aeiou])", r"an \1", text) if "{" not in text else text


# --- attribute values -------------------------------------------------------------


def attribute_value(labels: ClipLabels, attribute: str) -> Any:
    """The clip's value for an attribute (None when unknown or, for tempo class, too close to a bound)."""
    if attribute == "instrument_families":
        return tuple(f for f in labels.families) if labels.families else None
    if attribute == "instruments":
        return tuple(instrument_phrase(i) for i in labels.instruments) if labels.instruments else None
    if attribute == "lead_instrument":
        return instrument_phrase(labels.lead_instrument) if labels.lead_instrument else None
    if attribute == "tempo":
        return int(round(labels.tempo_bpm)) if labels.tempo_bpm else None
    if attribute == "tempo_class":
        return labels.tempo_class if labels.tempo_class_is_clear else None
    if attribute == "drums":
        return labels.has_drums
    if attribute == "chords":
        return labels.chords
    if attribute == "key":
        return labels.key
    return getattr(labels, attribute)


def value_text(attribute: str, value: Any) -> str:
    """How a value reads inside an answer or option."""
    if attribute in ("instrument_families", "instruments"):
        items = [value] if isinstance(value, str) else list(value)  # one family, or several
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    if attribute == "chords":
        return " - ".join(value)
    if attribute == "tempo":
        return f"{value}"
    if attribute == "drums":
        return T.DRUMS_WORDS[bool(value)]
    if attribute == "energy":
        return T.ENERGY_WORDS[value]
    if attribute == "meter":
        return str(value)
    return str(value)


def option_text(attribute: str, value: Any) -> str:
    if attribute == "tempo":
        return f"about {value} BPM"
    return value_text(attribute, value)


# --- pools of values and balance bookkeeping ---------------------------------------


@dataclass
class ValuePools:
    """Values each attribute takes across a set: distractors and "no" questions draw only from these."""

    values: dict[str, Counter] = field(default_factory=dict)
    instrument_family: dict[str, str] = field(default_factory=dict)  # instrument phrase -> GM family

    @classmethod
    def from_labels(cls, labels: Iterable[ClipLabels]) -> ValuePools:
        pools: dict[str, Counter] = defaultdict(Counter)
        families: dict[str, str] = {}
        for clip in labels:
            for name, family in zip(clip.instruments or (), clip.families or ()):
                families.setdefault(instrument_phrase(name), family)
            for attribute in set(OPEN_ATTRIBUTES) | set(PROFILE_ATTRIBUTES) | {"lead_family"}:
                value = attribute_value(clip, attribute)
                if value is None:
                    continue
                if attribute == "instrument_families":
                    pools[attribute].update(value)
                elif attribute != "instruments":
                    pools[attribute][value] += 1
        return cls(dict(pools), families)

    def support(self, attribute: str) -> list:
        return sorted(self.values.get(attribute, {}), key=str)


@dataclass
class _Balance:
    """Counters that keep every option text right one time in four and every yes/no value balanced."""

    right: Counter = field(default_factory=Counter)
    wrong: Counter = field(default_factory=Counter)
    yes: Counter = field(default_factory=Counter)
    no: Counter = field(default_factory=Counter)
    letters: dict[str, list[int]] = field(default_factory=dict)

    def deficit(self, attribute: str, value: Any) -> int:
        """How much more often `value` should appear as a wrong option to be right one time in four."""
        key = (attribute, value)
        return 3 * self.right[key] - self.wrong[key]

    def next_letter(self, attribute: str, rng: random.Random) -> int:
        cycle = self.letters.setdefault(attribute, [])
        if not cycle:
            cycle.extend(rng.sample(range(4), 4))
        return cycle.pop()


# --- distractors ------------------------------------------------------------------------


def _related_keys(key: str) -> tuple[set[str], set[str]]:
    """(incorrect-but-related keys, correct-but-unrelated keys) of a key such as 'A minor'.

    Related: the relative and the parallel key (same notes or same tonic).
    'Correct but unrelated': the dominant and subdominant keys of the same mode,
    which share all but one note of the scale.
    """
    tonic, mode = key.split()
    pc = pitch_class(tonic)
    relative = f"{PITCH_CLASSES[(pc + 3) % 12]} major" if mode == "minor" else f"{PITCH_CLASSES[(pc + 9) % 12]} minor"
    parallel = f"{tonic} {'major' if mode == 'minor' else 'minor'}"
    neighbours = {f"{PITCH_CLASSES[(pc + 7) % 12]} {mode}", f"{PITCH_CLASSES[(pc + 5) % 12]} {mode}"}
    return {relative, parallel}, neighbours


def _groups_of(value: str, groups: Sequence[set[str]]) -> set[str]:
    return set().union(*(g for g in groups if value in g)) - {value} if any(value in g for g in groups) else set()


def _distractor_candidates(attribute: str, truth: Any, clip: ClipLabels, pools: ValuePools) -> dict[str, list]:
    """Wrong options by MuChoMusic kind, all drawn from the pool of values that are right answers elsewhere."""
    support = [v for v in pools.support(attribute) if v != truth]
    related: set = set()
    true_elsewhere: set = set()
    excluded: set = set()
    if attribute == "lead_instrument":
        present = set(attribute_value(clip, "instruments") or ())
        true_elsewhere = present - {truth}  # playing, but not the melody
        related = {v for v in support if v not in present and pools.instrument_family.get(v) == clip.lead_family}
    elif attribute == "lead_family":
        present = set(clip.families or ())
        true_elsewhere = present - {truth}
        related = _groups_of(truth, T.FAMILY_GROUPS) - present
    elif attribute == "instrument_families":
        present = set(clip.families or ())
        excluded = present  # any present family would also be a right answer
        related = _groups_of(truth, T.FAMILY_GROUPS) - present
    elif attribute == "style":
        related = _groups_of(truth, T.STYLE_GROUPS)
    elif attribute == "chords":
        # Loops that start on the same chord share about as much with each other as with the answer,
        # so no option stands out as the one the others were built around.
        same_start = [v for v in support if v[0] == truth[0]]
        if len(same_start) >= 3:
            support = same_start
        related = {v for v in support if len(set(v) & set(truth)) >= 2}
    elif attribute == "tempo":
        far_enough = [v for v in support if abs(v - truth) / truth >= 0.15]
        return {IR: [v for v in far_enough if abs(v - truth) / truth < 0.3],
                IU: [v for v in far_enough if abs(v - truth) / truth >= 0.3]}
    pool = [v for v in support if v not in excluded]
    return {
        IR: [v for v in pool if v in related],
        CU: [v for v in pool if v in true_elsewhere],
        IU: [v for v in pool if v not in related and v not in true_elsewhere],
    }


def _pick(candidates: Sequence, balance: _Balance, attribute: str, rng: random.Random):
    """The candidate most in need of appearing as a wrong option (random among equals)."""
    return max(candidates, key=lambda v: (balance.deficit(attribute, v), rng.random()))


def _pick_distractors(attribute: str, truth: Any, by_kind: dict[str, list], balance: _Balance,
                      rng: random.Random) -> list[tuple[Any, str]] | None:
    chosen: list[tuple[Any, str]] = []
    used = {truth}
    tempo = attribute == "tempo"

    def usable(v):
        # Tempo options must be told apart: keep them at least 8 % from each other.
        return v not in used and (not tempo or all(abs(v - u) / u >= 0.08 for u in used))

    # Two related distractors resemble each other as much as the answer, so the answer is not
    # the one option that every other option was built around.
    plans = ((IR, CU, IU), (IR, IR, CU), (IR, IR, IU))
    if attribute == "lead_instrument":
        # Instrument names carry their family ("... guitar"), so same-family distractors would
        # cluster around the answer; the lead-family question covers that confusion instead.
        plans = ((CU, IU, IU),)
    for kind in rng.choice(plans):
        options = [v for v in by_kind.get(kind, []) if usable(v)]
        if options:
            value = _pick(options, balance, attribute, rng)
            chosen.append((value, kind))
            used.add(value)
    while len(chosen) < 3:
        kind_of = {v: k for k in (IU, IR, CU) for v in by_kind.get(k, []) if usable(v)}
        if not kind_of:
            return None  # too few values in the pool for four options
        value = _pick(list(kind_of), balance, attribute, rng)
        chosen.append((value, kind_of[value]))
        used.add(value)
    return chosen


# --- the generator -----------------------------------------------------------------------


class QAGenerator:
    """Turns label records into QA records; balance counters span the whole set it generates."""

    def __init__(self, pools: ValuePools, seed: int = 0, dataset: str | None = None):
        self.pools = pools
        self.rng = random.Random(seed)
        self.dataset = dataset
        self.balance = _Balance()
        self._profile_counts: dict[tuple[str, str], Counter] = defaultdict(Counter)

    def _record(self, clip: ClipLabels, task: str, prompt: str, target: str, **meta) -> QARecord:
        return QARecord(file_name=clip.file_name, input_text=prompt, target_text=target,
                        dataset=self.dataset or clip.dataset, task=task, meta=meta)

    # captioning ------------------------------------------------------------------------
    def caption(self, clip: ClipLabels) -> QARecord | None:
        text = caption_text(clip, self.rng)
        if not text:
            return None
        prompt = _fill(self.rng.choice(T.CAPTION_PROMPTS), self.rng)
        return self._record(clip, "captioning", prompt, text, attribute="caption")

    # open questions --------------------------------------------------------------------
    def open_question(self, clip: ClipLabels, attribute: str) -> QARecord | None:
        value = attribute_value(clip, attribute)
        if value is None:
            return None
        questions, answers = T.OPEN[attribute]
        q_index = self.rng.randrange(len(questions))
        noun = self.rng.choice(T.NOUNS)
        question = _fill(questions[q_index], self.rng, noun)
        if attribute == "drums":
            answer = self.rng.choice(T.DRUMS_OPEN_ANSWERS[bool(value)])
        else:
            answer = _fill(self.rng.choice(answers), self.rng, noun, v=value_text(attribute, value))
        return self._record(clip, "open_qa", question, answer, attribute=attribute,
                            value=list(value) if isinstance(value, tuple) else value, template=q_index)

    # multiple choice --------------------------------------------------------------------
    def choice_question(self, clip: ClipLabels, attribute: str) -> QARecord | None:
        truth = attribute_value(clip, attribute)
        if truth is None:
            return None
        if attribute == "instrument_families":
            # Several families are right; ask about one that is not yet over-represented as a right answer.
            present = [f for f in truth if self.balance.deficit(attribute, f) <= 0]
            if not present:
                return None
            truth = min(present, key=lambda f: (self.balance.deficit(attribute, f), self.rng.random()))
        if attribute == "key":
            distractors = self._key_distractors(truth)
        else:
            distractors = _pick_distractors(attribute, truth,
                                            _distractor_candidates(attribute, truth, clip, self.pools),
                                            self.balance, self.rng)
        if distractors is None:
            return None
        stem_index = self.rng.randrange(len(T.CHOICE[attribute]))
        stem = _fill(T.CHOICE[attribute][stem_index], self.rng)
        return self._choice_record(clip, attribute, stem, stem_index, truth, distractors,
                                   [option_text(attribute, v) for v in [truth] + [d for d, _ in distractors]])

    def _key_distractors(self, truth: str) -> list[tuple[str, str]]:
        """Two tonics x two modes: {T major, T minor, R major, R minor} with R a random other tonic.

        The same four options would be offered whichever of them were true, so their
        wording says nothing about the answer. The parallel key is the related
        distractor; where R happens to be the relative tonic, the relative key
        (same notes, other tonic) is the correct-but-unrelated one.
        """
        tonic, mode = truth.split()
        other_mode = "minor" if mode == "major" else "major"
        other = self.rng.choice([t for t in PITCH_CLASSES if t != tonic])
        relative, _ = _related_keys(truth)
        cross = f"{other} {other_mode}"
        return [(f"{tonic} {other_mode}", IR), (f"{other} {mode}", IR), (cross, CU if cross in relative else IU)]

    def profile_question(self, clip: ClipLabels, exclude: Sequence[tuple[str, str]] = ()) -> QARecord | None:
        """A four-way choice over the combinations of two low-cardinality attributes."""
        known = [a for a in PROFILE_ATTRIBUTES if attribute_value(clip, a) is not None]
        pairs = [p for p in PROFILE_PAIRS if all(a in known for a in p) and p not in exclude]
        if not pairs:
            return None
        # Ask about the pair whose true combination this clip is rarest in so far: the true combinations
        # of each pair then stay near uniform (and `balance_profiles` makes them exactly so).
        def rarity(pair):
            combo = tuple(attribute_value(clip, a) for a in pair)
            counts = self._profile_counts[pair]
            return (max(counts.values(), default=0) - counts[combo], self.rng.random())

        pair = max(pairs, key=rarity)
        truths = [attribute_value(clip, a) for a in pair]
        self._profile_counts[pair][tuple(truths)] += 1
        alternatives = []
        for attribute, truth in zip(pair, truths):
            others = [v for v in self._profile_values(attribute) if v != truth]
            alternatives.append(_pick(others, self.balance, attribute, self.rng))
        noun = self.rng.choice(T.NOUNS)
        combos = [(truths[0], truths[1], "answer"), (alternatives[0], truths[1], IR),
                  (truths[0], alternatives[1], IR), (alternatives[0], alternatives[1], IU)]
        texts = [profile_text(dict(zip(pair, (a, b))), noun) for a, b, _ in combos]
        stem_index = self.rng.randrange(len(T.CHOICE["profile"]))
        stem = _fill(T.CHOICE["profile"][stem_index], self.rng, noun)
        # Each true part sits in one right and one wrong option, each alternative in two wrong ones; with the
        # deficit 3*right - wrong, alternatives then come up exactly as often as the same values are true.
        for attribute, truth, alternative in zip(pair, truths, alternatives):
            self.balance.right[(attribute, truth)] += 1
            self.balance.wrong[(attribute, truth)] += 1
            self.balance.wrong[(attribute, alternative)] += 2
        parts = [{pair[0]: _jsonable(a), pair[1]: _jsonable(b)} for a, b, _ in combos]
        record = self._choice_record(clip, "+".join(pair), stem, stem_index, parts[0],
                                     [(p, kind) for p, (_, _, kind) in zip(parts[1:], combos[1:])], texts,
                                     count=False, parts=parts)
        record.meta["truth"] = parts[0]
        return record

    def _profile_values(self, attribute: str) -> list:
        return list(_PROFILE_VALUES[attribute])

    def _choice_record(self, clip, attribute, stem, stem_index, truth, distractors, texts, *, count=True,
                       parts=None) -> QARecord:
        answer = self.balance.next_letter(attribute, self.rng)
        order = [1, 2, 3]
        self.rng.shuffle(order)
        order.insert(answer, 0)  # order[i] = which of (truth, d1, d2, d3) sits at letter i
        options = [texts[i] for i in order]
        kinds = ["answer" if i == 0 else distractors[i - 1][1] for i in order]
        if count:
            self.balance.right[(attribute, truth)] += 1
            for value, _ in distractors:
                self.balance.wrong[(attribute, value)] += 1
        meta: dict[str, Any] = dict(attribute=attribute, question=stem, options=options, answer=answer,
                                    kinds=kinds, template=stem_index)
        if parts is not None:
            meta["parts"] = [parts[i] for i in order]
        # The target is the option text alone: exactly what the engine's log-likelihood choice scores,
        # and what the MuChoMusic scorer recognises when it finds no single letter.
        return self._record(clip, "multiple_choice", multiple_choice_prompt(stem, options), options[answer], **meta)

    # yes / no ------------------------------------------------------------------------------
    def binary_question(self, clip: ClipLabels, attribute: str) -> QARecord | None:
        truth = attribute_value(clip, attribute)
        if truth is None:
            return None
        # A list, not a set: the random tie-breaks below are drawn in this order, and a set of
        # strings iterates in a per-process order (hash seed), which made datasets differ by run.
        true_values = list(truth) if attribute == "instrument_families" else [truth]
        false_values = [v for v in self.pools.support(attribute) if v not in true_values]
        if attribute == "lead_family":
            false_values = [v for v in false_values if v not in set(clip.families or ())]
        key = lambda v: (attribute, v)  # noqa: E731
        need_yes = {v: self.balance.no[key(v)] - self.balance.yes[key(v)] for v in true_values}
        need_no = {v: self.balance.yes[key(v)] - self.balance.no[key(v)] for v in false_values}
        best_yes = max(need_yes, key=lambda v: (need_yes[v], self.rng.random()))
        best_no = max(need_no, key=lambda v: (need_no[v], self.rng.random())) if need_no else None
        ask_yes = best_no is None or (need_yes[best_yes], self.rng.random()) > (need_no[best_no], 0.5)
        asked = best_yes if ask_yes else best_no
        (self.balance.yes if ask_yes else self.balance.no)[key(asked)] += 1
        templates = T.BINARY[attribute]
        t_index = self.rng.randrange(len(templates))
        question = _fill(templates[t_index], self.rng, v=value_text(attribute, asked))
        answer = self.rng.choice(T.YES if ask_yes else T.NO)
        return self._record(clip, "binary", question, answer, attribute=attribute, value=_jsonable(asked),
                            answer="yes" if ask_yes else "no", template=t_index)

    # a whole clip ------------------------------------------------------------------------
    def clip_records(self, clip: ClipLabels, tasks: Sequence[str] = TASKS, profiles_per_clip: int = 2) -> list[QARecord]:
        records: list[QARecord | None] = []
        if "captioning" in tasks:
            records.append(self.caption(clip))
        if "open_qa" in tasks:
            records += [self.open_question(clip, a) for a in OPEN_ATTRIBUTES]
        if "multiple_choice" in tasks:
            records += [self.choice_question(clip, a) for a in CHOICE_ATTRIBUTES]
            asked: list[tuple[str, str]] = []
            for _ in range(profiles_per_clip):
                record = self.profile_question(clip, exclude=asked)
                if record is not None:
                    asked.append(tuple(record.meta["attribute"].split("+")))
                    records.append(record)
        if "binary" in tasks:
            records += [self.binary_question(clip, a) for a in BINARY_ATTRIBUTES]
        return [r for r in records if r is not None and passes_filters(r)]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def multiple_choice_prompt(question: str, options: Sequence[str]) -> str:
    """The MuChoMusic prompt: question, lettered options, 'The correct answer is: ' (no in-context example)."""
    return build_prompt(question, list(options))


def measured_prompt(task: str, input_text: str, meta: dict | None, measurements: Measurements | None) -> str:
    """A record's prompt as the model reads it when the caller gives DSP measurements: the
    measurement sentence before the question (inside the MuChoMusic prompt for multiple choice,
    exactly as `MusicLM.choose` builds it from `with_measurements(question)`)."""
    meta = meta or {}
    if task == "multiple_choice" and "options" in meta:
        return multiple_choice_prompt(with_measurements(meta["question"], measurements), meta["options"])
    return with_measurements(input_text, measurements)


def profile_text(values: dict[str, Any], noun: str) -> str:
    """'a fast piece in 3/4 time', 'a soft, calm piece in a minor key', ..."""
    adjectives = [T.PROFILE_ADJECTIVE[a][v] for a, v in values.items() if a in T.PROFILE_ADJECTIVE]
    phrases = [T.PROFILE_PHRASE[a][v] for a, v in values.items() if a in T.PROFILE_PHRASE]
    head = ", ".join(adjectives + [noun]) if adjectives else noun
    head = head.replace(f", {noun}", f" {noun}")
    return " ".join([f"{_article(head)} {head}"] + phrases)


def caption_text(clip: ClipLabels, rng: random.Random) -> str:
    """A few sentences that state every known attribute, in varied words and order."""
    noun = rng.choice(T.NOUNS)
    sentences: list[str] = []
    if clip.style and clip.key and clip.energy:
        sentences.append(_fill(rng.choice(T.CAPTION_OPENINGS), rng, noun, style=clip.style, key=clip.key,
                               energy=T.ENERGY_WORDS[clip.energy]))
    else:
        bits = [b for b in (clip.style and f"{clip.style} {noun}", clip.key and f"in {clip.key}") if b]
        if bits:
            sentences.append(_capitalise(f"{_article(bits[0])} " + " ".join(bits)) + ".")
    middle: list[str] = []
    if clip.tempo_bpm and clip.meter:
        middle.append(_fill(rng.choice(T.CAPTION_TEMPO), rng, noun, tempo_class=clip.tempo_class,
                            bpm=str(int(round(clip.tempo_bpm))), meter=clip.meter))
    elif clip.tempo_bpm:
        middle.append(f"The tempo is about {int(round(clip.tempo_bpm))} BPM.")
    if clip.lead_instrument and clip.instruments:
        lead = instrument_phrase(clip.lead_instrument)
        others = [instrument_phrase(i) for i in clip.instruments if instrument_phrase(i) != lead]
        if others:
            middle.append(_fill(rng.choice(T.CAPTION_LEAD), rng, noun, lead=lead, others=value_text("instruments", others)))
    if clip.has_drums is not None:
        middle.append(rng.choice(T.CAPTION_DRUMS[clip.has_drums]))
    if clip.chords:
        middle.append(_fill(rng.choice(T.CAPTION_CHORDS), rng, noun, chords=value_text("chords", clip.chords)))
    rng.shuffle(middle)
    return " ".join(sentences + middle)


def generate_qa(
    labels: Sequence[ClipLabels],
    *,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    pools: ValuePools | None = None,
    dataset: str | None = None,
) -> list[QARecord]:
    """QA records for every clip (deterministic from `seed`), yes/no questions balanced exactly per value."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise InputError(f"unknown task(s) {sorted(unknown)}; choose from {list(TASKS)}")
    pools = pools or ValuePools.from_labels(labels)
    generator = QAGenerator(pools, seed=seed, dataset=dataset)
    records = [r for clip in labels for r in generator.clip_records(clip, tasks)]
    return balance_profiles(balance_binary(records, seed), seed)


def balance_binary(records: list[QARecord], seed: int = 0) -> list[QARecord]:
    """Drop the few yes/no records that keep some (attribute, value) from an exact yes/no balance."""
    rng = random.Random(seed + 1)
    groups: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: {"yes": [], "no": []})
    for i, record in enumerate(records):
        if record.task == "binary":
            meta = record.meta or {}
            groups[(meta["attribute"], json.dumps(meta["value"]))][meta["answer"]].append(i)
    drop: set[int] = set()
    for sides in groups.values():
        surplus = len(sides["yes"]) - len(sides["no"])
        bigger = sides["yes"] if surplus > 0 else sides["no"]
        drop.update(rng.sample(bigger, abs(surplus)))
    return [r for i, r in enumerate(records) if i not in drop]


def balance_profiles(records: list[QARecord], seed: int = 0) -> list[QARecord]:
    """Drop profile questions until every true combination of each attribute pair is asked equally often.

    Without this, "a piece in 4/4 with drums" would be right far more often than
    "a piece in 3/4 without drums", and a text-only model could learn that.
    """
    rng = random.Random(seed + 2)
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, record in enumerate(records):
        meta = record.meta or {}
        if record.task == "multiple_choice" and "truth" in meta:
            groups[meta["attribute"]][json.dumps(meta["truth"], sort_keys=True)].append(i)
    drop: set[int] = set()
    for attribute, combos in groups.items():
        pair = attribute.split("+")
        n_combos = 1
        for a in pair:
            n_combos *= len(_PROFILE_VALUES[a])
        keep = min(len(v) for v in combos.values()) if len(combos) == n_combos else 0
        for indices in combos.values():
            drop.update(rng.sample(indices, len(indices) - keep))
    return [r for i, r in enumerate(records) if i not in drop]


# --- filters, files, loading real sets ---------------------------------------------------------


_TOPIC_PATTERN = re.compile(r"\b(" + "|".join(re.escape(t) for t in T.BANNED_QUESTION_TOPICS) + r")\b", re.I)


def passes_filters(record: QARecord) -> bool:
    """LLark's filters: no 'metadata'/'cannot determine'-style text, no composer/artist/album/title/duration questions."""
    text = f"{record.input_text}\n{record.target_text}".lower()
    if any(phrase in text for phrase in T.BANNED_PHRASES):
        return False
    return _TOPIC_PATTERN.search(record.input_text) is None


def write_jsonl(records: Iterable[QARecord], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record.to_json_line() + "\n")
            n += 1
    return n


def load_records(path: str | Path, *, apply_filters: bool = True) -> list[QARecord]:
    """Read QA records from JSON lines or a JSON list (ours, MusicSkills-3.5M, or MusicCaps).

    MusicSkills records are used as they are. MusicCaps rows (`ytid`, `caption`,
    optionally `start_s`) become captioning records for `<ytid>.wav`. A record
    missing a field raises `InputError` naming the file, the record and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"QA file {path} does not exist; build one with `python -m training.dataset build`")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, Any]]
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = [(f"item {i}", row) for i, row in enumerate(json.loads(text))]
    elif stripped.startswith("{") and '"data"' in stripped[:200] and _is_json(text):
        rows = [(f"item {i}", row) for i, row in enumerate(json.loads(text)["data"])]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}: line {n} is not JSON ({error.msg})") from None
    records = []
    for where, row in rows:
        if isinstance(row, dict) and "ytid" in row and "caption" in row and "target_text" not in row:
            row = {"file_name": f"{row['ytid']}.wav", "input_text": T.CAPTION_PROMPTS[0],
                   "target_text": row["caption"], "dataset": "musiccaps", "task": "captioning"}
        try:
            record = QARecord.model_validate(row)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors())
            raise InputError(f"{path}: {where} is not a MusicSkills record ({problems}); each record needs "
                             "file_name, input_text, target_text, dataset and task") from None
        if not apply_filters or passes_filters(record):
            records.append(record)
    return records


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# --- judging free-text answers -------------------------------------------------------------------


_CHORD = r"[A-G](?:#|b)?(?:m7b5|maj7|m7|m6|dim7|dim|aug|sus4|sus2|m|7|6)?"
_PROGRESSION_PATTERN = re.compile(rf"(?<![\w#]){_CHORD}(?: - {_CHORD})*(?![\w#])")
_KEY_PATTERN = re.compile(r"\b([A-G](?:#|b|♯|♭)?)\s*(major|minor|maj|min)\b")


def open_answer_is_right(meta: dict[str, Any], text: str) -> bool:
    """Whether a free-text answer states the true value of the attribute asked about.

    Lenient about wording, strict about content: the true value must appear and,
    for single-valued attributes, no competing value may appear beside it.
    """
    attribute, truth = meta["attribute"], meta["value"]
    lower = text.lower()
    if attribute == "tempo":
        numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]
        return bool(numbers) and abs(numbers[0] - truth) <= TEMPO_TOLERANCE * truth
    if attribute == "key":
        found = [(pitch_class(t), "minor" if m.startswith("min") else "major") for t, m in _KEY_PATTERN.findall(text)]
        tonic, mode = truth.split()
        return bool(found) and found[0] == (pitch_class(tonic), mode)
    if attribute == "chords":
        runs = [m.group(0).split(" - ") for m in _PROGRESSION_PATTERN.finditer(text)]
        said = max(runs, key=len) if runs else []
        loop = list(truth)
        return any(said == loop[i:] + loop[:i] for i in range(len(loop)))
    if attribute == "drums":
        return lower.lstrip().startswith("yes" if truth else "no")
    if attribute in ("instrument_families", "instruments"):
        vocabulary = GM_FAMILIES if attribute == "instrument_families" else ()
        mentioned = {f for f in vocabulary if re.search(rf"\b{re.escape(f)}\b", lower)}
        if not all(re.search(rf"\b{re.escape(v)}\b", lower) for v in truth):
            return False
        return not (mentioned - set(truth) - _words_inside(truth))
    if attribute == "energy":
        others = [phrase for level, phrase in T.ENERGY_WORDS.items() if level != truth]
        return T.ENERGY_WORDS[truth] in lower and not any(w in lower for w in others)
    choices = {"mode": ("major", "minor"), "meter": ("3/4", "4/4"), "tempo_class": TEMPO_CLASSES}
    if attribute in choices:
        others = [c for c in choices[attribute] if c != truth]
        return re.search(rf"\b{re.escape(str(truth))}\b", lower) is not None and not any(
            re.search(rf"(?<![\w/]){re.escape(o)}(?![\w/])", lower) for o in others)
    return str(truth).lower() in lower


def _words_inside(values: Iterable[str]) -> set[str]:
    """Family names that occur inside other names ('synth lead' contains no family, 'bass' is its own)."""
    return {f for f in GM_FAMILIES for v in values if f != v and f in v}


def says_unsure(text: str) -> bool:
    """Whether an answer contains one of the words of doubt the model learnt (`T.UNSURE`)."""
    return any(phrase in text for phrase in T.UNSURE)


def binary_answer(text: str) -> str | None:
    """'yes', 'no' or None (neither) from the start of a free-text answer."""
    match = re.match(r"\W*(yes|no)\b", text.strip().lower())
    return match.group(1) if match else None


__all__ = ["QARecord", "QAGenerator", "ValuePools", "generate_qa", "load_records", "write_jsonl", "passes_filters",
           "open_answer_is_right", "binary_answer", "says_unsure", "multiple_choice_prompt", "normalise_task", "TASKS", "LETTERS"]
