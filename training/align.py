"""Align the projector to the language model's word embeddings, cheaply (no LM forward).

    python -m training.align --data DIR --init CHECKPOINT --out CHECKPOINT [--steps 600]

Why: on a CPU, every step through the 30-layer LM costs about a second per sample, so
the LM cannot be what first teaches the projector that "this audio is a waltz in A
minor". This stage does it without the LM: it trains the projector so that the audio
tokens of a clip *are*, approximately, the input embeddings of a short text stating
the clip's labels ("waltz, minor key, A minor, fast tempo, 3/4 time, ...", repeated
to fill every audio position). The frozen encoder's outputs are cached once
(training/features.py), so a step is one small MLP over 63 tokens per clip. The LM
then starts from audio tokens it can already read like words, and the regular
training (training/train.py) only has to teach it to answer.

The encoder's tokens carry their time position (sin-cos embedding), which is how the
per-token projector knows which word of the label text a position should hold.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoints import load_checkpoint, save_checkpoint
from model.errors import InputError
from model.smollm2 import load_tokenizer
from training.features import encode_clips
from training.labels import ClipLabels


def label_text(labels: ClipLabels) -> str:
    """The clip's labels as a short, fixed-order text: the words the audio tokens should carry."""
    parts = []
    if labels.style:
        parts.append(f"{labels.style} music")
    if labels.lead_instrument:
        lead = labels.lead_instrument.lower()
        parts.append(f"lead {lead}" + (f" ({labels.lead_family})" if labels.lead_family else ""))
    if labels.families:
        parts.append("with " + ", ".join(labels.families))
    if labels.mode:
        parts.append(f"{labels.mode} key")
    if labels.key:
        parts.append(labels.key)
    if labels.tempo_class:
        parts.append(f"{labels.tempo_class} tempo, {int(round(labels.tempo_bpm))} BPM")
    if labels.meter:
        parts.append(f"{labels.meter} time")
    if labels.has_drums is not None:
        parts.append("drums" if labels.has_drums else "no drums")
    if labels.energy:
        parts.append(f"{labels.energy} energy")
    if labels.chords:
        parts.append("chords " + " - ".join(labels.chords))
    return "; ".join(parts) + "."


def clip_labels_in(data: Path, split: str = "train") -> dict[str, ClipLabels]:
    """Labels of the clips of one split, keyed by the `file_name` the records use.

    Reads `labels_<split>.jsonl` written by `training.dataset build`; a folder of
    clips with label JSON beside each wav (training/synth.py) works too."""
    listed = Path(data) / f"labels_{split}.jsonl"
    if listed.is_file():
        from training.dataset import read_labels

        return {clip.file_name: clip for clip in read_labels(data, split)}
    out = {}
    for meta in sorted(Path(data).rglob("*.json")):
        wav = meta.with_suffix(".wav")
        if wav.is_file():
            rel = wav.relative_to(data)
            # Records name clips relative to the data folder or to its clips/ folder.
            name = str(rel.relative_to("clips")) if rel.parts[0] == "clips" else str(rel)
            out[name] = ClipLabels.from_metadata(json.loads(meta.read_text()), file_name=name)
    if not out:
        raise InputError(f"no labelled clips under {data}: build them with `python -m training.dataset build`")
    return out


def slot_targets(text_ids: list[int], n_tokens: int) -> torch.Tensor:
    """Token id each audio position should carry: the label text repeated over all positions."""
    return torch.tensor([text_ids[i % len(text_ids)] for i in range(n_tokens)])


def align(data: Path, init: str, out: Path, *, steps: int = 600, batch: int = 32, lr: float = 1e-3,
          seed: int = 0, features_file: Path | None = None, quiet: bool = False) -> dict:
    """Train the projector of checkpoint `init` on the label texts of the training clips in
    `data` (never the test split); write the checkpoint `out`; return measurements."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, header = load_checkpoint(init)
    tokenizer = load_tokenizer(model.cfg.lm_weights)
    labels = clip_labels_in(data)
    names = sorted(labels)
    features = encode_clips(model.encoder, data, names, features_file or Path(out).with_suffix(".features.safetensors"),
                            seconds=model.cfg.audio_seconds, show_progress=not quiet)
    n_tokens = min(f.shape[0] for f in features.values())
    table = model.lm.get_input_embeddings().weight.detach()
    scale = table.pow(2).sum(-1).mean().sqrt()  # typical embedding norm: the loss is relative to it
    targets = {n: slot_targets(tokenizer(label_text(labels[n]), add_special_tokens=False).input_ids, n_tokens)
               for n in names}

    rng.shuffle(names)
    n_val = max(1, len(names) // 10)
    val, train = names[:n_val], names[n_val:]
    projector = model.projector
    for p in model.parameters():
        p.requires_grad_(False)
    for p in projector.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(projector.parameters(), lr=lr)

    def batch_of(chosen):
        x = torch.stack([features[n][:n_tokens] for n in chosen]).float()
        y = torch.stack([targets[n] for n in chosen])
        return x, y

    def loss_of(x, y):
        pred = projector(x)
        goal = table[y]
        return (pred - goal).pow(2).sum(-1).mean() / scale**2 + (1 - F.cosine_similarity(pred, goal, dim=-1)).mean()

    @torch.no_grad()
    def nearest_word_accuracy(chosen) -> float:
        """How often the nearest vocabulary embedding (cosine) of an audio token is its target word."""
        x, y = batch_of(chosen)
        pred = F.normalize(projector(x), dim=-1)
        hits = (pred @ F.normalize(table, dim=-1).T).argmax(-1) == y
        return float(hits.float().mean())

    started = time.time()
    history = []
    for step in tqdm(range(steps), desc="aligning projector", disable=quiet):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_of(*batch_of(rng.sample(train, min(batch, len(train)))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        val_loss = float(loss_of(*batch_of(val)))
    report = {"clips": len(names), "steps": steps, "loss_first": history[0] if history else None,
              "loss_last": history[-1] if history else None, "val_loss": val_loss,
              "val_nearest_word_accuracy": nearest_word_accuracy(val),
              "train_nearest_word_accuracy": nearest_word_accuracy(train[:len(val) * 2]),
              "seconds": round(time.time() - started, 1)}
    save_checkpoint(model, out, trained=False, notes=f"{header.notes}; align steps={steps}")
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.align", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--init", required=True, help="checkpoint with the (pretrained) encoder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", type=Path, default=None, help="feature cache file (shared with training.train)")
    a = p.parse_args(argv)
    print(json.dumps(align(a.data, a.init, a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                           features_file=a.features), indent=1))


if __name__ == "__main__":
    main()
