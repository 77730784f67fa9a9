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
from training.labels import ClipLabels, relative_key
from training.qa import generate_qa, measured_prompt
from training.train import (
    RELATIVE_KEY_SLIP,
    TEMPO_OCTAVE_SLIP,
    add_measurements,
    noisy_measurements,
)


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


def test_training_measurements_slip_the_way_a_dsp_does():
    clip = ClipLabels(file_name="a.wav", tempo_bpm=120.0, meter="4/4", key_tonic="A", mode="minor")
    rng = random.Random(0)
    draws = [noisy_measurements(clip, rng) for _ in range(4000)]
    tempos = [m.tempo_bpm for m in draws if m.tempo_bpm]
    assert set(tempos) == {60.0, 120.0, 240.0}
    assert np.mean([t != 120.0 for t in tempos]) == pytest.approx(TEMPO_OCTAVE_SLIP, abs=0.02)
    keys = [m.key for m in draws if m.key]
    assert set(keys) == {"A minor", relative_key("A minor")} and relative_key("A minor") == "C major"
    assert np.mean([k != "A minor" for k in keys]) == pytest.approx(RELATIVE_KEY_SLIP, abs=0.02)
    assert 0.1 < np.mean([m.meter is None for m in draws]) < 0.2

    records = [{"file_name": "a.wav", "task": "open_qa", "input_text": "What key is it in?", "meta": {}}] * 400
    half = add_measurements(records, {"a.wav": clip}, share=0.5, seed=1)
    measured = [r["input_text"].startswith("Measured: ") for r in half]
    assert 0.4 < np.mean(measured) < 0.55  # a few draws drop every reading, so a little under half
    assert all(r["input_text"].endswith("What key is it in?") for r in half)
    assert add_measurements(records, {}, share=1.0, seed=1) == records  # no labels, nothing to state


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
