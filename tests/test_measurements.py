"""The DSP measurement sentence the model reads before a question: built from real analyses, the same
in training, evaluation and the tools, noisy in training, and given only to models trained to read it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model.audio import AudioClip, load_audio
from model.lm.measurements import MIN_KEY_CONFIDENCE, MIN_TEMPO_CONFIDENCE, Measurements
from model.lm.muchomusic import build_prompt
from model.lm.prompts import with_measurements
from training import qa_templates as T
from training.labels import ClipLabels
from training.qa import generate_qa, measured_prompt
from training.train import MEASUREMENT_DROP, add_measurements, dropped_measurements


def test_the_sentence_states_what_the_analysis_measured_confidently(labelled_clips, analyzer):
    clip = labelled_clips["rock_a_minor"]
    analysis = analyzer.analyze(load_audio(clip.path))
    measured = Measurements.from_analysis(analysis)
    assert measured.tempo_bpm == analysis.tempo.bpm and measured.key == analysis.key.key == "A minor"
    sentence = measured.sentence()
    assert sentence.startswith(f"Measured: tempo {round(analysis.tempo.bpm)} BPM (")
    assert f"key {analysis.key.key}" in sentence and f"meter {analysis.beats.meter}" in sentence

    unsure = analysis.model_copy(update={
        "tempo": analysis.tempo.model_copy(update={"confidence": MIN_TEMPO_CONFIDENCE / 2}),
        "key": analysis.key.model_copy(update={"confidence": MIN_KEY_CONFIDENCE / 2}),
    })
    assert Measurements.from_analysis(unsure) == Measurements(meter=analysis.beats.meter)
    assert Measurements.from_analysis(analysis.model_copy(update={"silent": True})).sentence() == ""


def test_silence_is_measured_as_nothing(analyzer):
    silence = AudioClip.from_samples(np.zeros(16000 * 5, dtype=np.float32), 16000)
    assert Measurements.from_analysis(analyzer.analyze(silence)).sentence() == ""


def test_training_and_the_engine_build_the_same_prompt():
    clip = ClipLabels(file_name="a.wav", tempo_bpm=72.0, meter="3/4", key_tonic="Eb", mode="major", style="waltz",
                      has_drums=False, lead_family="piano", energy="low")
    other = ClipLabels(file_name="b.wav", tempo_bpm=140.0, meter="4/4", key_tonic="A", mode="minor", style="rock",
                       has_drums=True, lead_family="guitar", energy="high")
    records = generate_qa([clip, other], seed=3)
    measured = clip.measurements()
    assert measured.sentence() == "Measured: tempo 72 BPM (slow), meter 3/4, key Eb major."
    choices = [r for r in records if r.task == "multiple_choice"]
    assert choices and {r.task for r in records} >= {"binary", "open_qa", "captioning"}
    for record in records:
        assert measured_prompt(record.task, record.input_text, record.meta, None) == record.input_text
        prompt = measured_prompt(record.task, record.input_text, record.meta, measured)
        if record.task == "multiple_choice":
            # MusicLM.choose(audio, with_measurements(question), options) prompts with exactly this.
            assert prompt == build_prompt(with_measurements(record.meta["question"], measured), record.meta["options"])
        else:
            assert prompt == f"{measured.sentence()} {record.input_text}"


def test_training_sentences_leave_readings_out_but_never_state_them_wrong():
    clip = ClipLabels(file_name="a.wav", tempo_bpm=120.0, meter="4/4", key_tonic="A", mode="minor")
    rng = random.Random(0)
    draws = [dropped_measurements(clip, rng) for _ in range(4000)]
    assert {m.tempo_bpm for m in draws} == {120.0, None} and {m.key for m in draws} == {"A minor", None}
    for reading in ("tempo_bpm", "meter", "key"):
        left_out = np.mean([m.to_json()[reading] is None for m in draws])
        assert left_out == pytest.approx(MEASUREMENT_DROP, abs=0.02)

    records = [{"file_name": "a.wav", "task": "open_qa", "input_text": "What key is it in?",
                "target_text": "It is in A minor.", "meta": {"attribute": "key", "value": "A minor"}}] * 400
    half = add_measurements(records, {"a.wav": clip}, share=0.5, seed=1)
    stated = ["key A minor" in r["input_text"] for r in half]
    assert 0.35 < np.mean(stated) < 0.5  # half get a sentence; 15 % of those leave the key out
    assert all(r["input_text"].endswith("What key is it in?") for r in half)
    for record, key_stated in zip(half, stated):
        # Sure when the key was stated, unsure otherwise; the fact itself is never changed.
        assert record["target_text"].startswith("It is in A minor.")
        assert (record["target_text"] == "It is in A minor.") == key_stated
        assert key_stated or record["target_text"].removeprefix("It is in A minor. ") in T.UNSURE
    assert add_measurements(records, {}, share=1.0, seed=1) == records  # no labels, nothing to state

    # Questions about what the DSP does not measure never hedge.
    genre = [{**records[0], "input_text": "What genre?", "target_text": "Rock.", "meta": {"attribute": "style"}}]
    assert {r["target_text"] for r in add_measurements(genre * 50, {"a.wav": clip}, share=0.5, seed=1)} == {"Rock."}


@pytest.fixture()
def reading_engine(tmp_path):
    """A tiny checkpoint that says it was trained to read measurements, saved and loaded the real way."""
    from model.lm import checkpoints
    from model.lm.config import preset
    from model.lm.engine import load_engine
    from model.lm.network import build_model

    network = build_model(preset("tiny"))
    network.cfg.reads_measurements = True
    file = checkpoints.save_checkpoint(network, tmp_path / "reads", trained=True, caveat="test weights")
    return load_engine(str(file), device="cpu")


def test_model_tools_measure_the_heard_audio_for_a_model_that_reads_measurements(reading_engine, labelled_clips,
                                                                              tmp_path):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools

    assert reading_engine.info().reads_measurements
    prompts = []
    answer, choose = reading_engine.answer, reading_engine.choose
    reading_engine.answer = lambda audio, question, **kw: prompts.append(question) or answer(audio, question, **kw)
    reading_engine.choose = lambda audio, question, options, **kw: prompts.append(question) or choose(
        audio, question, options, **kw)
    clip = labelled_clips["waltz_eb_major"]
    tools = MusicTools(Settings(roots=(clip.path.parent,), cache_dir=tmp_path / "cache"), model=reading_engine)
    tools.ask_about_music(str(clip.path), "What instrument leads?", duration_s=10.0)
    tools.choose_answer(str(clip.path), "Which style?", ["waltz", "rock"], duration_s=10.0)
    tools.describe_music(str(clip.path), duration_s=10.0)
    expected = tools.analyze_clip(str(clip.path), duration_s=10.0).analysis
    sentence = Measurements.from_analysis(expected).sentence()
    assert sentence.startswith("Measured: ") and "key Eb major" in sentence
    assert prompts == [f"{sentence} What instrument leads?", f"{sentence} Which style?",
                       f"{sentence} Describe this music clip in detail."]


def test_models_not_trained_on_measurements_get_the_bare_question(labelled_clips, tmp_path):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools
    from model.lm.engine import load_engine

    engine = load_engine("preset:tiny", device="cpu")
    assert not engine.info().reads_measurements
    prompts = []
    answer = engine.answer
    engine.answer = lambda audio, question, **kw: prompts.append(question) or answer(audio, question, **kw)
    clip = labelled_clips["waltz_eb_major"]
    MusicTools(Settings(roots=(clip.path.parent,), cache_dir=tmp_path / "cache"), model=engine).ask_about_music(
        str(clip.path), "What instrument leads?", duration_s=10.0)
    assert prompts == ["What instrument leads?"]


def test_model_tags_of_clip_attributes_come_with_the_measurements(reading_engine, labelled_clips, tmp_path):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools

    prompts = []
    choose = reading_engine.choose
    reading_engine.choose = lambda audio, question, options, **kw: prompts.append(question) or choose(
        audio, question, options, **kw)
    clip = labelled_clips["rock_a_minor"]
    tools = MusicTools(Settings(roots=(clip.path.parent,), cache_dir=tmp_path / "cache"), model=reading_engine)
    report = tools.clip_attributes(str(clip.path), duration_s=10.0, with_tags=True)
    sentence = Measurements.from_analysis(tools.analyze_clip(str(clip.path), duration_s=10.0).analysis).sentence()
    assert report.attributes.tags is not None and prompts and sentence
    assert all(p.startswith(sentence + " ") for p in prompts)
