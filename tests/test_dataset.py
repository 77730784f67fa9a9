"""Data set building (rendered clips + QA splits) and the torch Dataset / collate feeding TinyMU."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.errors import InputError
from model.lm.config import EOS_ID, PAD_ID, preset
from training.dataset import (
    MusicQADataset,
    build_dataset,
    collate,
    load_clip,
)
from training.labels import read_labels
from training.qa import load_records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    build_dataset(out, n_train=3, n_test=2, n_val=1, seed=4, duration_s=10.0, workers=1)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from model.lm.smollm2 import load_tokenizer

    return load_tokenizer("random")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_writes_held_out_splits_of_rendered_clips(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["clips"] == {"train": 3, "val": 1, "test": 2}
    splits = {split: load_records(data_dir / f"{split}.jsonl") for split in ("train", "val", "test")}
    for split, records in splits.items():
        if split != "val":  # one clip cannot balance yes/no questions, so val has none
            assert {r.task for r in records} == {"captioning", "open_qa", "multiple_choice", "binary"}, split
        assert all((data_dir / r.file_name).is_file() for r in records)
        assert all(r.file_name.startswith(f"audio/{split}/") for r in records)
    clips = {split: {r.file_name for r in records} for split, records in splits.items()}
    audio = {split: {_digest(data_dir / name) for name in names} for split, names in clips.items()}
    assert not audio["train"] & audio["test"] and not audio["val"] & audio["test"]  # held out by clip
    seeds = {split: {json.loads((data_dir / n).with_suffix(".json").read_text())["seed"] for n in names}
             for split, names in clips.items()}
    assert not seeds["train"] & seeds["test"]
    labels = read_labels(data_dir, "test")
    assert [c.file_name for c in labels] == sorted(clips["test"])
    info = sf.info(data_dir / labels[0].file_name)
    assert abs(info.duration - 10.0) < 0.01


def test_rebuilding_with_the_same_seed_gives_the_same_records(data_dir, tmp_path):
    build_dataset(tmp_path, n_train=3, n_test=2, n_val=1, seed=4, duration_s=10.0, workers=1)
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.jsonl").read_text() == (data_dir / f"{split}.jsonl").read_text()
    assert _digest(tmp_path / "audio/test/clip_000.wav") == _digest(data_dir / "audio/test/clip_000.wav")


def test_load_clip_gives_the_first_ten_seconds_at_16k(tmp_path, data_dir):
    name = read_labels(data_dir, "train")[0].file_name
    wave = load_clip(data_dir / name)
    assert wave.dtype == np.float32 and wave.shape == (160000,)
    assert np.abs(wave).max() > 0.05
    short = tmp_path / "short.wav"
    sf.write(short, np.ones((22050, 2), dtype=np.float32) * 0.5, 44100)  # 0.5 s of stereo
    padded = load_clip(short)
    assert padded.shape == (160000,) and padded[:7000].mean() > 0.4 and not padded[9000:].any()
    with pytest.raises(InputError, match="does not exist"):
        load_clip(tmp_path / "nothing.wav")


def test_dataset_and_collate_feed_tinymu_in_the_reference_layout(data_dir, tokenizer):
    from model.lm.network import build_model

    dataset = MusicQADataset(data_dir / "train.jsonl", tokenizer)
    item = dataset[0]
    assert item["target_ids"][-1] == EOS_ID and item["wave"].shape == (160000,)
    assert tokenizer.decode(item["prompt_ids"]) == dataset.records[0].input_text
    batch = collate([dataset[i] for i in range(4)])
    assert batch["prompt_ids"].shape == (4, 129) and batch["target_ids"].shape == (4, 129)
    assert batch["wave"].shape == (4, 160000)
    for ids, mask in ((batch["prompt_ids"], batch["prompt_mask"]), (batch["target_ids"], batch["target_mask"])):
        assert (ids[mask == 0] == PAD_ID).all()
        assert (mask.sum(dim=1) > 0).all()
    lengths = batch["target_mask"].sum(dim=1)
    assert all(batch["target_ids"][i, lengths[i] - 1] == EOS_ID for i in range(4))

    torch.manual_seed(0)
    model = build_model(preset("tiny"))
    args = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "target_ids", "target_mask")}
    layout = model.build_training_batch(model.audio_embeddings(model.encode_audio(batch["wave"])), **args)
    assert layout.inputs_embeds.shape[1] == 63 + 1 + 129 + 129  # 10 s of audio -> 63 tokens
    labels = layout.labels[:, -129:]
    assert ((labels == -100) == (batch["target_mask"] == 0)).all()
    loss = model(**args, wave=batch["wave"])
    assert torch.isfinite(loss) and loss.item() > 1.0  # random model: far from perfect


def test_dataset_can_skip_audio_and_filter_tasks(data_dir, tokenizer):
    dataset = MusicQADataset(data_dir / "test.jsonl", tokenizer, tasks=["binary"], load_audio=False)
    assert len(dataset) > 0 and all(r.task == "binary" for r in dataset.records)
    assert "wave" not in dataset[0]
    assert "wave" not in collate([dataset[0]])


def test_real_recordings_are_labelled_by_the_dsp_tools_and_only_known_fields_are_asked(data_dir, tmp_path):
    from training.augment import augment_recordings

    truth = read_labels(data_dir, "train")[0]
    (clip,) = augment_recordings([data_dir / truth.file_name], tmp_path, clip_s=10.0, per_file=1)
    assert clip.dataset == "debian" and (tmp_path / clip.file_name).is_file()
    assert clip.instruments is None and clip.style is None and clip.energy is None and clip.has_drums is None
    measured = [f for f in ("tempo_bpm", "meter", "mode", "chords") if getattr(clip, f) is not None]
    assert measured, "the DSP tools should be confident about a clean synthetic clip"
    if clip.tempo_bpm is not None:
        assert abs(clip.tempo_bpm - truth.tempo_bpm) / truth.tempo_bpm < 0.04
    if clip.key_tonic is not None:
        assert clip.key == truth.key
    records = load_records(tmp_path / "real.jsonl")
    assert records and all(r.file_name == clip.file_name for r in records)
    asked = {part for r in records for part in r.meta["attribute"].split("+")}
    assert asked <= {"tempo", "tempo_class", "meter", "key", "mode", "chords"}
