"""Training and evaluation data: rendered clips + QA records, and a torch Dataset over them.

Build a set (clips rendered with `training/synth.py`, QA written with `training/qa.py`):

    python -m training.dataset build --out .cache/data --n-train 400 --n-test 80 --seed 0

Layout of the output directory (file names in the records are relative to it):

    audio/{train,val,test}/clip_NNN.wav + .json    rendered clips and their ground truth
    {train,val,test}.jsonl                         QA records (MusicSkills format + meta)
    labels_{train,val,test}.jsonl                  one ClipLabels per clip
    manifest.json                                  seeds, counts, bounds

The splits are held out by clip: each is rendered from its own seed, so no test
clip (nor any of its melody, tempo or instrument draws) is seen in training.

`MusicQADataset` reads records (ours or MusicSkills-3.5M with the audio beside
them), loads the first `audio_seconds` of each clip at 16 kHz mono and
tokenises prompt and target in the reference layout; `collate` stacks a batch
into what `TinyMU.forward` takes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
import typer

from model.errors import InputError
from model.lm.config import EOS_ID, PAD_ID
from training.labels import TEMPO_CLASS_BOUNDS_BPM, ClipLabels, write_labels
from training.qa import QARecord, ValuePools, generate_qa, load_records, write_jsonl

SPLITS = ("train", "val", "test")
# Each split renders from its own seed range, far apart, so no clip is shared.
SPLIT_SEED_OFFSET = {"train": 0, "val": 500_000, "test": 1_000_000}
MODEL_RATE = 16000

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build and inspect TinyMU training data.")


# --- building ------------------------------------------------------------------------------


def render_split(out_dir: Path, split: str, n: int, seed: int, duration_s: float, workers: int) -> list[ClipLabels]:
    """Render `n` labelled clips of one split and return their labels (file names relative to `out_dir`)."""
    from training import synth

    folder = out_dir / "audio" / split
    songs = synth.generate_set(folder, n, seed=seed + SPLIT_SEED_OFFSET[split], duration_s=duration_s, workers=workers)
    return [
        ClipLabels.from_metadata(song.model_dump(), file_name=f"audio/{split}/{song.name}.wav", window_s=min(duration_s, 10.0))
        for song in songs
    ]


def build_dataset(out_dir: str | Path, *, n_train: int, n_test: int, n_val: int | None = None, seed: int = 0,
                  duration_s: float = 10.0, workers: int = 2) -> dict[str, Any]:
    """Render clips for every split and write their QA records; returns the manifest.

    Deterministic from `seed`: rebuilding gives the same audio and the same records
    (clips already rendered are reused)."""
    if n_train < 1 or n_test < 1:
        raise InputError("give at least one training and one test clip (--n-train, --n-test)")
    out = Path(out_dir)
    counts = {"train": n_train, "val": n_val if n_val is not None else max(2, n_train // 10), "test": n_test}
    labels = {split: render_split(out, split, n, seed, duration_s, workers) for split, n in counts.items() if n > 0}
    # One pool of values for all splits, so distractors and yes/no questions use the same vocabulary.
    pools = ValuePools.from_labels([clip for split_labels in labels.values() for clip in split_labels])
    manifest: dict[str, Any] = {
        "seed": seed, "duration_s": duration_s, "clips": counts, "records": {},
        "tempo_class_bounds_bpm": list(TEMPO_CLASS_BOUNDS_BPM), "splits_held_out_by": "clip (separate seeds)",
    }
    for split, split_labels in labels.items():
        records = generate_qa(split_labels, seed=seed + SPLIT_SEED_OFFSET[split], pools=pools)
        write_jsonl(records, out / f"{split}.jsonl")
        write_labels(out, split, split_labels)
        manifest["records"][split] = dict(Counter(r.task for r in records))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


@app.command()
def build(
    out: Path = typer.Option(..., help="output directory"),
    n_train: int = typer.Option(400, help="training clips"),
    n_test: int = typer.Option(80, help="held-out test clips"),
    n_val: int = typer.Option(None, help="validation clips (default: a tenth of the training clips, at least 2)"),
    seed: int = typer.Option(0, help="everything is deterministic from this"),
    duration: float = typer.Option(10.0, help="clip length in seconds (the model hears the first 10 s)"),
    workers: int = typer.Option(2, help="parallel rendering processes"),
) -> None:
    """Render labelled clips and write train/val/test QA records."""
    manifest = build_dataset(out, n_train=n_train, n_test=n_test, n_val=n_val, seed=seed, duration_s=duration,
                             workers=workers)
    typer.echo(json.dumps(manifest["records"], indent=1))


@app.command()
def stats(data: Path = typer.Argument(..., help="a directory made by `build`")) -> None:
    """Count records per split, task and attribute."""
    for split in SPLITS:
        path = data / f"{split}.jsonl"
        if path.exists():
            records = load_records(path)
            by = Counter((r.task, (r.meta or {}).get("attribute", "-")) for r in records)
            typer.echo(f"{split}: {len(records)} records")
            for (task, attribute), n in sorted(by.items()):
                typer.echo(f"  {task:16s} {attribute:24s} {n}")


# --- reading ------------------------------------------------------------------------------------


def load_clip(path: str | Path, seconds: float = 10.0, rate: int = MODEL_RATE) -> np.ndarray:
    """The first `seconds` of a clip as float32 mono at `rate` Hz, zero-padded to exactly that length.

    Channels are averaged (the reference takes channel 0; our rendered clips are mono, so both agree)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file {path} does not exist; build the data set first (python -m training.dataset build)")
    with sf.SoundFile(path) as handle:
        native = handle.samplerate
        audio = handle.read(frames=int(np.ceil(seconds * native)), dtype="float32", always_2d=True).mean(axis=1)
    if native != rate:
        audio = soxr.resample(audio, native, rate, quality="HQ")
    wanted = int(round(seconds * rate))
    return np.pad(audio[:wanted], (0, max(0, wanted - len(audio)))).astype(np.float32)


@dataclass
class TextIds:
    prompt_ids: list[int]
    target_ids: list[int]


def tokenize_pair(tokenizer, prompt: str, target: str, prompt_length: int = 129, target_length: int = 129) -> TextIds:
    """Prompt tokens (cut to `prompt_length`) and target tokens + eos (cut to `target_length`)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids[:prompt_length]
    target_ids = tokenizer(target, add_special_tokens=False).input_ids[: target_length - 1] + [EOS_ID]
    return TextIds(prompt_ids, target_ids)


def pad_ids(ids: Sequence[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids padded with PAD_ID to `length`, mask with 1 on real tokens)."""
    padded = torch.full((length,), PAD_ID, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.long)
    padded[: len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    mask[: len(ids)] = 1
    return padded, mask


class MusicQADataset(torch.utils.data.Dataset):
    """QA records with their audio, ready for `TinyMU.forward` after `collate`.

    Items are dicts: `wave` (float32 [audio_seconds * 16000]), `prompt_ids`,
    `target_ids` (lists of token ids, target ending in eos), `file_name` and
    `index` (so a trainer can substitute cached encoder outputs for `wave`).
    With `load_audio=False` the wave is left out (for training from cached
    encoder outputs)."""

    def __init__(self, records: str | Path | Sequence[QARecord], tokenizer, *, root: str | Path | None = None,
                 tasks: Sequence[str] | None = None, audio_seconds: float = 10.0, prompt_length: int = 129,
                 target_length: int = 129, load_audio: bool = True, audio_cache_size: int = 256):
        if isinstance(records, (str, Path)):
            root = root if root is not None else Path(records).parent
            records = load_records(records)
        self.records = [r for r in records if tasks is None or r.task in tasks]
        self.root = Path(root or ".")
        self.tokenizer = tokenizer
        self.audio_seconds = audio_seconds
        self.prompt_length, self.target_length = prompt_length, target_length
        self.load_audio = load_audio
        self._clip = lru_cache(maxsize=audio_cache_size)(self._read_clip)

    def __len__(self) -> int:
        return len(self.records)

    def _read_clip(self, file_name: str) -> np.ndarray:
        return load_clip(self.root / file_name, self.audio_seconds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        ids = tokenize_pair(self.tokenizer, record.input_text, record.target_text, self.prompt_length,
                            self.target_length)
        item: dict[str, Any] = {"prompt_ids": ids.prompt_ids, "target_ids": ids.target_ids,
                                "file_name": record.file_name, "index": index}
        if self.load_audio:
            item["wave"] = self._clip(record.file_name)
        return item


def collate(items: Sequence[dict[str, Any]], prompt_length: int = 129, target_length: int = 129) -> dict[str, Any]:
    """Stack items into `TinyMU.forward` arguments: prompt_ids/prompt_mask [B, 129], target_ids/target_mask
    [B, 129] (pads are 17 with mask 0, so their labels become -100) and `wave` [B, samples] when loaded."""
    prompts = [pad_ids(item["prompt_ids"], prompt_length) for item in items]
    targets = [pad_ids(item["target_ids"], target_length) for item in items]
    batch: dict[str, Any] = {
        "prompt_ids": torch.stack([p for p, _ in prompts]),
        "prompt_mask": torch.stack([m for _, m in prompts]),
        "target_ids": torch.stack([t for t, _ in targets]),
        "target_mask": torch.stack([m for _, m in targets]),
        "file_names": [item["file_name"] for item in items],
        "indices": torch.tensor([item["index"] for item in items]),
    }
    if "wave" in items[0]:
        batch["wave"] = torch.from_numpy(np.stack([item["wave"] for item in items]))
    return batch


if __name__ == "__main__":
    app()
