"""Grounded decoding: free-form answers state only the tempo, key and genre the tools measured or heard."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from model.lm import decoding
from model.lm.config import preset
from model.lm.engine import load_engine
from model.lm.grounding import (
    MeasuredNumbersOnly,
    forbidden_phrases,
    forbidden_token_sequences,
    forbidding,
    measured_numbers,
)
from model.lm.measurements import Measurements
from model.lm.muchomusic import IN_CONTEXT_EXAMPLE, build_prompt
from model.lm.network import build_model
from model.lm.prompts import CAPTION_PROMPT, with_measurements
from tests.test_model import _embeds, lively
from training.factcheck import stated_facts


@pytest.mark.parametrize("measured", [Measurements(135.4, "4/4", "C minor"), Measurements(None, None, "F# major"),
                                      Measurements(80.0), Measurements(None, "3/4"), Measurements(130.4, None, "Bb minor"),
                                      Measurements()])
def test_the_measurement_sentence_reads_back_as_written(measured):
    read = Measurements.from_prompt(with_measurements("What genre is this?", measured))
    assert read.sentence() == measured.sentence()
    assert read.meter == measured.meter and read.key == measured.key


def test_what_contradicts_the_measurements_and_the_heard_genre_is_forbidden():
    phrases = set(forbidden_phrases(Measurements(135.0, "4/4", "C# minor"), "rock"))
    assert {"slow", "moderate", "major", "D minor", "C minor", "orchestral", "jazz"} <= phrases
    # The measured key in any spelling, the measured tempo class and the heard genre's family stay sayable.
    assert not {"C# minor", "Db minor", "C sharp minor", "minor", "fast", "quick", "rock", "metal", "BPM"} & phrases

    nothing = set(forbidden_phrases(Measurements(), None))
    assert {"rock", "orchestral", "electronic", "slow", "fast", "BPM", "tempo", "7", "major", "minor", "key", " C",
            "chords"} <= nothing


def test_forbidden_sequences_come_from_the_prompt_in_every_spelling():
    tokenizer = load_engine("preset:tiny", device="cpu").tokenizer
    prompt = with_measurements(CAPTION_PROMPT, Measurements(100.0, None, "G major"))
    sequences = forbidden_token_sequences(tokenizer, prompt, "orchestral")
    for text in (" rock", "Rock", " fast", " minor", " A major", " chords", " C"):
        assert tokenizer(text, add_special_tokens=False).input_ids in sequences
    for text in (" orchestral", " classical", " medium", " G major", " major", " G", " 1"):
        assert tokenizer(text, add_special_tokens=False).input_ids not in sequences


def test_generation_never_writes_a_forbidden_sequence():
    torch.manual_seed(0)
    tiny = lively(build_model(preset("tiny")))
    embeds = _embeds(tiny, 10.0, 0)
    prefix = tiny.build_prefix([embeds[0]], [[100, 200, 300]])
    start = torch.tensor([tiny.target_start(embeds.shape[1])])
    free = decoding.generate(tiny, prefix, start, max_new_tokens=8, stop_ids=())[0]
    # Forbid the free answer's first token, and its second token after its first.
    first = decoding.generate(tiny, prefix, start, max_new_tokens=8, stop_ids=(), constraints=[forbidding([[free[0]]])])[0]
    assert free[0] not in first
    pair = decoding.generate(tiny, prefix, start, max_new_tokens=8, stop_ids=(), constraints=[forbidding([free[:2]])])[0]
    assert pair[0] == free[0] and pair[1] != free[1]
    assert all(pair[i:i + 2] != free[:2] for i in range(len(pair) - 1))


def test_a_forbidden_genre_is_forbidden_from_its_first_token():
    # " waltz" is " w|alt|z": banning the whole sequence let the decoder write " walt" and swerve ("walttala").
    tokenizer = load_engine("preset:tiny", device="cpu").tokenizer
    sequences = forbidden_token_sequences(tokenizer, "What genre is this?", None)
    for genre in (" waltz", " orchestral", " hiphop", " reggae"):
        ids = tokenizer(genre, add_special_tokens=False).input_ids
        assert len(ids) > 1 and ids[:1] in sequences, genre
    heard = forbidden_token_sequences(tokenizer, "What genre is this?", "orchestral")
    assert tokenizer(" orchestral", add_special_tokens=False).input_ids[:1] not in heard


def test_a_genre_said_in_other_words_is_forbidden_too():
    # Forbidden "orchestral" and "electronic", the shipped decoder wrote "It is a symphony." and "electric dance
    # music": each paraphrase is forbidden with its family, and the first word of a phrase stays free alone.
    tokenizer = load_engine("preset:tiny", device="cpu").tokenizer
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    unsure = forbidden_token_sequences(tokenizer, "What genre is this?", None)
    for phrase in (" symphony", " orchestra", " dance music", " big band", " bluegrass"):
        assert ids(phrase) in unsure or ids(phrase)[:1] in unsure, phrase
    assert ids(" big") not in unsure and ids(" dance") not in unsure
    heard = forbidden_token_sequences(tokenizer, "What genre is this?", "orchestral")
    assert ids(" symphony") not in heard and ids(" symphony")[:1] not in heard and ids(" dance music") in heard


def test_the_measured_tonic_is_never_written_as_a_chord():
    tokenizer = load_engine("preset:tiny", device="cpu").tokenizer
    sequences = forbidden_token_sequences(tokenizer, with_measurements("Describe it.", Measurements(key="G major")), None)
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert ids(" G") + ids("m") in sequences and ids(" Eb") + ids("dim") in sequences  # "Gm(aj7)", "Ebdim"
    assert ids("maj") in sequences and ids(" maj") in sequences and ids(" major") not in sequences
    assert ids(" G") not in sequences and ids(" G major") not in sequences
    assert ids(" G") + ids("#") in sequences and ids(" G") + ids(" #") in sequences  # no "G#major" for G major
    flat = forbidden_token_sequences(tokenizer, with_measurements("Describe it.", Measurements(key="Bb minor")), None)
    assert ids(" B") + ids("b") not in flat and ids(" B") + ids("#") in flat


def test_only_the_measured_numbers_can_be_written():
    tokenizer = load_engine("preset:tiny", device="cpu").tokenizer
    numbers = measured_numbers(Measurements(119.6, "3/4", "G major"))
    assert numbers == (("120", "3"), ("4",))
    processor = MeasuredNumbersOnly(tokenizer, *numbers)
    digit = {d: tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}

    def writable_after(text: str) -> set[str]:
        written = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids or [0]])
        scores = processor(written, torch.zeros(1, len(tokenizer)))
        return {d for d, i in digit.items() if scores[0, i] > float("-inf")}

    assert writable_after("The tempo is about ") == {"1", "3"}
    assert writable_after("The tempo is about 1") == {"2"}
    written = torch.tensor([tokenizer("about 1", add_special_tokens=False).input_ids])
    finished = processor(written, torch.zeros(1, len(tokenizer)))
    assert (finished[0] > float("-inf")).nonzero().flatten().tolist() == [digit["2"]]  # nothing but the next digit
    assert writable_after("The tempo is about 12") == {"0"}
    assert writable_after("The tempo is about 120") == set()  # no "1200", no "128"
    assert writable_after("in 3/") == {"4"}
    nothing_measured = MeasuredNumbersOnly(tokenizer, *measured_numbers(Measurements()))
    scores = nothing_measured(torch.tensor([[0]]), torch.zeros(1, len(tokenizer)))
    assert all(scores[0, i] == float("-inf") for i in digit.values())


def _heard_clip(seconds: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 16000)) / 16000
    chord = sum(np.sin(2 * np.pi * f * t) for f in (196.0, 246.9, 293.7))  # G major, with a pulse at 100 BPM
    pulse = (np.sin(2 * np.pi * t * 100 / 60) > 0.95) * rng.standard_normal(t.shape)
    return (0.1 * chord + 0.2 * pulse).astype(np.float32)


@pytest.mark.parametrize("measured", [Measurements(100.0, "4/4", "G major"), Measurements(70.0), Measurements()])
def test_the_shipped_model_states_only_what_was_measured_or_heard(measured):
    engine = load_engine(None, device="cpu", quantize="int8")
    assert engine.grounded and engine.info().grounded
    clip = _heard_clip()
    with torch.inference_mode():
        _, heard = engine._audio_embeds(clip)
    for question in (CAPTION_PROMPT, "What genre is this music?"):
        text = engine.answer(clip, with_measurements(question, measured), max_new_tokens=48)
        assert text
        for attribute, value in stated_facts(text):
            if attribute == "tempo_class":
                assert measured.tempo_bpm and value in measured.sentence(), text
            elif attribute in ("key", "mode"):
                assert measured.key and value.split()[-1] == measured.key.split()[-1], text
            elif attribute == "style":
                assert heard.stated is not None, text
        allowed = {number for numbers in measured_numbers(measured) for number in numbers}
        numbers = re.findall(r"\d+", text)
        if numbers and text.endswith(numbers[-1]) and any(n.startswith(numbers[-1]) for n in allowed):
            numbers.pop()  # cut off by max_new_tokens halfway through an allowed number
        assert set(numbers) <= allowed, text


def test_multiple_choice_by_generation_is_not_grounded():
    """An answer that names an option is no free-form fact: grounded, the shipped model answers this
    question in silence "about urna" (numbers forbidden without a measured tempo); the MuChoMusic method
    must score what it would write freely."""
    engine = load_engine(None, device="cpu", quantize="int8")
    silence = np.zeros(160000, np.float32)
    question, options = "How fast is this played?", ["about 170 BPM", "about 81 BPM", "about 93 BPM", "about 135 BPM"]
    choice = engine.choose(silence, question, options, method="generate")
    prompt = build_prompt(question, options, IN_CONTEXT_EXAMPLE)
    assert choice.raw_answer == engine.answer(silence, prompt, max_new_tokens=32, grounded=False)
    assert choice.index is not None, choice.raw_answer
