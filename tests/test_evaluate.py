"""Evaluation: caption metrics, blind and text-only conditions, reports, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.dsp.analyzer import ANALYSIS_VERSION
from training import qa_templates as T
from training.dataset import build_dataset, load_clip
from training.evaluate import (
    app,
    bleu4,
    condition_engine,
    condition_measurements,
    evaluate,
    markdown_table,
    rouge_l,
    summarize,
    write_report,
)
from training.labels import read_labels
from training.qa import QAGenerator, ValuePools, load_records, says_unsure


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaldata")
    build_dataset(out, n_train=3, n_test=2, n_val=0, seed=8, duration_s=10.0, workers=1)
    return out


@pytest.fixture(scope="module")
def engine():
    import torch

    from model.lm.engine import load_engine

    torch.manual_seed(0)
    return load_engine("preset:tiny", device="cpu")


def one_per_task(records, data_dir):
    """One record of each task plus one profile choice (a set of two clips is too small for the
    balanced generator to keep any, so it is asked directly)."""
    picked = {}
    for record in records:
        picked.setdefault(record.task, record)
    labels = read_labels(data_dir, "test")
    profile = QAGenerator(ValuePools.from_labels(labels)).profile_question(labels[0])
    return list(picked.values()) + [profile]


def test_caption_metrics():
    reference = "a slow ballad in A minor with a piano melody over strings"
    assert bleu4([reference], [reference]) == pytest.approx(1.0)
    assert rouge_l(reference, reference) == pytest.approx(1.0)
    assert bleu4(["completely different words here today"], [reference]) == 0.0
    assert rouge_l("unrelated text", reference) == 0.0
    partial = "a slow ballad in A minor with drums"
    assert 0.0 < bleu4([partial], [reference]) < 1.0
    # LCS "a slow ballad in a minor with" = 7 words: P = 7/8, R = 7/12.
    assert rouge_l(partial, reference) == pytest.approx(2 * (7 / 8) * (7 / 12) / (7 / 8 + 7 / 12))


def test_audio_reaches_the_model_and_the_text_only_baseline_ignores_it(engine, data_dir):
    record = next(r for r in load_records(data_dir / "test.jsonl") if r.task == "multiple_choice")
    wave = load_clip(data_dir / record.file_name)
    question, options = record.meta["question"], record.meta["options"]
    with_audio = engine.choose(wave, question, options).probabilities
    with_silence = engine.choose(np.zeros_like(wave), question, options).probabilities
    assert not np.allclose(with_audio, with_silence)
    text_only = condition_engine(engine, "text_only")
    a = text_only.choose(wave, question, options).probabilities
    b = text_only.choose(np.zeros_like(wave), question, options).probabilities
    assert np.allclose(a, b) and not np.allclose(a, with_audio)
    assert sum(a) == pytest.approx(1.0)


def test_evaluate_scores_every_task_under_every_condition(engine, data_dir, tmp_path):
    records = one_per_task(load_records(data_dir / "test.jsonl"), data_dir)
    conditions = ["audio", "silence", "noise", "text_only", "smollm2"]
    results = evaluate(engine, records, data_dir, conditions=conditions, max_new_tokens=4, caption_tokens=6)
    assert list(results["conditions"]) == conditions
    for summary in results["conditions"].values():
        assert set(summary["accuracy"]) == {"binary", "open_qa", "multiple_choice/loglik",
                                            "multiple_choice/muchomusic"}
        assert summary["n"]["multiple_choice/loglik"] == 2 and summary["n"]["binary"] == 1
        assert all(0.0 <= v <= 1.0 for v in summary["accuracy"].values())
        assert summary["n"]["multiple_choice/loglik/part"] == 2  # the profile question credits both attributes
        assert 0.0 <= summary["muchomusic_instruction_following"] <= 1.0
        assert summary["captioning"]["n"] == 1 and 0.0 <= summary["captioning"]["rouge_l"] <= 1.0
    assert results["model"]["trained"] is False

    paths = write_report(results, tmp_path)
    table = paths["markdown"].read_text()
    assert all(c in table for c in conditions) and "multiple_choice/loglik" in table
    assert json.loads(paths["json"].read_text())["records"] == len(records)
    import matplotlib.image

    image = matplotlib.image.imread(paths["plot"])
    assert image.shape[0] > 200 and image.shape[1] > 400


def test_the_summary_says_how_often_open_answers_admit_doubt():
    texts = {"key": ["It is in A minor.", f"It is in A minor. {T.UNSURE[0]}"], "style": ["Rock.", "Rock."]}
    outcomes = [{"task": "open_qa", "attribute": a, "right": True, "unsure": says_unsure(t)}
                for a, answers in texts.items() for t in answers]
    summary = summarize(outcomes)
    assert summary["unsure"] == {"key": 0.5, "style": 0.0}
    assert not says_unsure("It is in A minor, I think.")  # only the learnt words of doubt count
    assert "open answers saying unsure: key | - | 50.0" in markdown_table(
        {"conditions": {"audio": summary}, "records": 4})


def test_command_line_writes_results_and_the_wording_check(data_dir, tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["--checkpoint", "preset:tiny", "--data", str(data_dir), "--out", str(out),
                                      "--conditions", "audio,silence", "--tasks", "binary", "--limit", "1",
                                      "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["conditions"]) == {"audio", "silence"}
    assert results["conditions"]["audio"]["n"]["binary"] >= 3
    assert "logistic_regression" in results["wording_baselines"]["all"]
    assert (out / "eval_accuracy.png").stat().st_size > 10_000


def test_each_condition_states_the_measurements_of_the_audio_it_feeds(engine, data_dir):
    record = next(r for r in load_records(data_dir / "test.jsonl") if r.task == "multiple_choice")
    conditions = ["audio", "silence", "noise", "measurements_only"]
    assert not engine.info().reads_measurements  # so the sentence is asked for explicitly
    results = evaluate(engine, [record], data_dir, conditions=conditions, max_new_tokens=4, measure=True)
    assert results["measured"] is True and list(results["conditions"]) == conditions
    clip = lambda name: load_clip(data_dir / name)  # noqa: E731
    heard = json.loads((data_dir / "measurements" / ANALYSIS_VERSION / "audio.json").read_text())[record.file_name]
    truth = next(c for c in read_labels(data_dir, "test") if c.file_name == record.file_name)
    assert heard["key"] and heard["tempo_bpm"] and truth.tempo_bpm  # a rendered song has a beat and a key
    assert (data_dir / "measurements" / ANALYSIS_VERSION / "noise-0.json").is_file()
    assert condition_measurements("silence", clip, data_dir, 0)(record.file_name) is None
    assert condition_measurements("text_only", clip, data_dir, 0)(record.file_name) is None
    untouched = evaluate(engine, [record], data_dir, conditions=["audio"], max_new_tokens=4)
    assert untouched["measured"] is False  # a model not trained on the sentence is asked without it
    # Silence in place of the audio, but the clip's own readings (from the same cache as "audio").
    only = condition_measurements("measurements_only", clip, data_dir, 0)(record.file_name)
    assert only.to_json() == heard
