"""Pretrain the MATPAC++ audio encoder, at any size.

    python -m training.pretrain_encoder --data DIR --out FILE [--preset small] [--steps 300]
        [--supervised-steps 300] [--crop-frames 496] [--batch 16] [--resume]

Self-supervised part, the MATPAC++ recipe (arXiv 2508.12709), on log-mel patches:
- masked latent prediction: the student encoder sees the visible patches only; a small
  predictor fills in the masked ones; the targets are the EMA teacher's outputs for the
  masked patches computed from the full input;
- several prediction heads with winner-takes-all (multiple choice learning): each masked
  patch is charged only to the head that predicted it best, plus a small share for the
  other heads so none dies; music is ambiguous, and several hypotheses cover it;
- a DINO-style classification head on the teacher's targets and the student's predictions:
  the teacher's logits are centred (running mean) and sharpened (low temperature), the
  student matches them with cross-entropy, which keeps the latents from collapsing.

Supervised part (optional, for the CPU-scale shipped model): a multi-task warm-up on the
labels of our synthetic clips (instrument families, lead family, mode, meter, tempo class,
style, drums, energy, key tonic) through linear heads on the time-pooled encoder output,
plus distillation of a tagger trained on real music: where a `tags.json` written by
`training.tagger` lies in a clip folder, one more head learns to predict its 100 tag
probabilities (genres, instruments, voice, mood). Unlabelled real clips (`--extra-audio`)
take part through that head only.
A few CPU minutes of self-supervision give features that are too weak for the language
model to learn from quickly; `probe` measures both (linear probes on frozen features).

The result is a checkpoint in our format holding the (small) encoder, a random projector
and the base decoder reference, so training.train can start from it with `--init`.
Training crops clips to `--crop-frames` log-mel frames (multiples of 16) for speed; the
encoder still runs on whole 992-frame chunks afterwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.errors import InputError
from model.lm.config import TinyMUConfig, preset
from model.lm.encoder import Block, MatpacEncoder
from training.features import load_clip
from training.labels import (
    GM_FAMILIES,
    METERS,
    MODES,
    PITCH_CLASSES,
    TEMPO_CLASSES,
    ClipLabels,
    pitch_class,
)

# -- log-mel data ---------------------------------------------------------------------------------


def clip_files(data: Path) -> list[Path]:
    """Every rendered clip under `data` (wav files, searched recursively), sorted."""
    files = sorted(p for p in Path(data).rglob("*.wav"))
    if not files:
        raise InputError(f"no .wav clips under {data}; render some with `python -m training.dataset build`")
    return files


@torch.no_grad()
def log_mels(encoder: MatpacEncoder, files: list[Path], seconds: float) -> torch.Tensor:
    """Normalised log-mels [N, n_mels, frames] (float16) of the first `seconds` of each clip."""
    mels = [encoder.log_mel(torch.from_numpy(load_clip(f, seconds))[None])[0].half() for f in files]
    frames = min(m.shape[-1] for m in mels)
    return torch.stack([m[:, :frames] for m in mels])


def random_crops(mels: torch.Tensor, index: list[int], frames: int, rng: random.Random) -> torch.Tensor:
    starts = [rng.randrange(0, mels.shape[-1] - frames + 1) for _ in index]
    return torch.stack([mels[i, :, s: s + frames] for i, s in zip(index, starts)]).float()


# -- encoder internals the pretraining needs ------------------------------------------------------------


def patch_tokens(encoder: MatpacEncoder, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of a crop (at most one chunk) with their positional embedding: ([B, N, D], pos [1, N, D])."""
    x = encoder.patch_embed(mel)
    f, d = encoder.cfg.freq_patches, encoder.cfg.embed_dim
    t = x.shape[1] // f
    pos = encoder.pos_embed[:, 1:].reshape(1, f, encoder.chunk_time_patches, d)[:, :, :t].reshape(1, f * t, d)
    return x + pos, pos


def run_blocks(encoder: MatpacEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """CLS + tokens through the transformer; returns the normalised patch outputs (CLS dropped)."""
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    x = torch.cat([cls, tokens], dim=1)
    for block in encoder.blocks:
        x = block(x)
    return encoder.norm(x)[:, 1:]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# -- MATPAC++ --------------------------------------------------------------------------------------


@dataclass
class SSLConfig:
    mask_ratio: float = 0.6
    predictor_depth: int = 2
    heads: int = 3  # prediction hypotheses (winner takes all)
    wta_share: float = 0.05  # loss share of the losing heads, so every head keeps learning
    prototypes: int = 256  # classes of the DINO-style head
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    cls_weight: float = 1.0
    ema_start: float = 0.996  # teacher momentum, raised to 1 along a cosine


class MatpacPretrainer(nn.Module):
    """Student encoder + predictor + heads, and the EMA teacher (encoder + classification head)."""

    def __init__(self, encoder: MatpacEncoder, cfg: SSLConfig = SSLConfig()):
        super().__init__()
        self.cfg = cfg
        self.student = encoder
        dim = encoder.cfg.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        heads = max(1, encoder.cfg.num_heads)
        block_cfg = copy.copy(encoder.cfg)
        block_cfg.num_heads = heads
        self.predictor = nn.ModuleList(Block(block_cfg) for _ in range(cfg.predictor_depth))
        self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
        self.hypotheses = nn.ModuleList(nn.Linear(dim, dim) for _ in range(cfg.heads))
        self.cls_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, cfg.prototypes))
        self.teacher = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_cls_head = copy.deepcopy(self.cls_head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(cfg.prototypes))

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        tokens, pos = patch_tokens(self.student, mel)
        b, n, d = tokens.shape
        n_keep = max(1, int(round(n * (1 - self.cfg.mask_ratio))))
        order = torch.rand(b, n, generator=generator, device=mel.device).argsort(dim=1)
        keep, masked = order[:, :n_keep], order[:, n_keep:]

        with torch.no_grad():  # the teacher sees everything
            t_tokens, _ = patch_tokens(self.teacher, mel)
            targets = gather_tokens(run_blocks(self.teacher, t_tokens), masked)
            targets = F.layer_norm(targets, targets.shape[-1:])

        visible = run_blocks(self.student, gather_tokens(tokens, keep))
        # The predictor sees the student's visible outputs plus a mask token (with position) per masked patch.
        queries = self.mask_token + gather_tokens(pos.expand(b, -1, -1), masked)
        x = torch.cat([visible, queries], dim=1)
        for block in self.predictor:
            x = block(x)
        predicted = self.predictor_norm(x[:, n_keep:])
        guesses = torch.stack([head(predicted) for head in self.hypotheses])  # [H, B, M, D]
        errors = (guesses - targets).pow(2).mean(-1)  # [H, B, M]
        best_err, winner = errors.min(dim=0)
        pred_loss = (1 - self.cfg.wta_share) * best_err.mean() + self.cfg.wta_share * errors.mean()

        best_guess = torch.gather(guesses, 0, winner[None, ..., None].expand(1, -1, -1, d))[0]
        with torch.no_grad():
            t_logits = self.teacher_cls_head(targets)
            t_probs = F.softmax((t_logits - self.center) / self.cfg.teacher_temp, dim=-1)
        s_logp = F.log_softmax(self.cls_head(best_guess) / self.cfg.student_temp, dim=-1)
        cls_loss = -(t_probs * s_logp).sum(-1).mean()
        with torch.no_grad():
            batch_center = t_logits.mean(dim=(0, 1))
            self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)
        return {"loss": pred_loss + self.cfg.cls_weight * cls_loss, "predict": pred_loss.detach(),
                "classify": cls_loss.detach()}

    @torch.no_grad()
    def update_teacher(self, progress: float) -> None:
        momentum = 1 - (1 - self.cfg.ema_start) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2
        for s, t in ((self.student, self.teacher), (self.cls_head, self.teacher_cls_head)):
            for ps, pt in zip(s.parameters(), t.parameters()):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


# -- supervised warm-up ----------------------------------------------------------------------------------

# The tag head's loss is a mean over 100 soft binary targets, a weak gradient next to nine
# cross-entropy heads; this weight puts its starting loss (6.9) on the scale of theirs summed.
DISTILL_WEIGHT = 10.0


def load_tags(files: list[Path], folders: list[Path]) -> tuple[torch.Tensor, list[str]] | None:
    """The tagger's probabilities for each file ([N, tags], -1 rows where a file has none), read from
    `tags.json` in any of `folders`; None when no folder has one."""
    tagged, names = {}, None
    for folder in folders:
        tags_file = Path(folder) / "tags.json"
        if tags_file.is_file():
            found = json.loads(tags_file.read_text())
            if names is not None and found["tags"] != names:
                raise InputError(f"{tags_file} was written by other tagger models than the other tags files")
            names = found["tags"]
            tagged.update({(Path(folder) / rel).resolve(): probs for rel, probs in found["clips"].items()})
    if names is None:
        return None
    rows = [tagged.get(f.resolve(), [-1.0] * len(names)) for f in files]
    return torch.tensor(rows), names


def label_targets(labels: list[ClipLabels]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Per task: targets for every clip (-1 = unknown) and the class names."""
    styles = sorted({l.style for l in labels if l.style})  # a clip of unknown genre teaches no genre
    # The lead instrument has its own head: the family heads alone left its slot the weakest one
    # downstream (held-out 74 % vs 82 % for the lead family on 3,000 clips; 78 % with the head).
    leads = sorted({l.lead_instrument for l in labels if l.lead_instrument})
    classes = {"family": list(GM_FAMILIES), "lead_family": list(GM_FAMILIES), "lead_instrument": leads,
               "mode": list(MODES), "meter": list(METERS), "tempo_class": list(TEMPO_CLASSES), "style": styles,
               "drums": ["no", "yes"], "energy": ["low", "medium", "high"], "tonic": list(PITCH_CLASSES)}

    def index(values, value):
        return values.index(value) if value in values else -1

    targets = {
        # A clip whose instruments are unknown (a real recording) gets -1 rows: no family loss.
        "family": torch.tensor([[float(f in l.families) if l.families is not None else -1.0 for f in GM_FAMILIES]
                                for l in labels]),
        "lead_family": torch.tensor([index(GM_FAMILIES, l.lead_family) for l in labels]),
        "lead_instrument": torch.tensor([index(leads, l.lead_instrument) for l in labels]),
        "mode": torch.tensor([index(MODES, l.mode) for l in labels]),
        "meter": torch.tensor([index(METERS, l.meter) for l in labels]),
        "tempo_class": torch.tensor([index(TEMPO_CLASSES, l.tempo_class) for l in labels]),
        "style": torch.tensor([index(styles, l.style) for l in labels]),
        "drums": torch.tensor([-1 if l.has_drums is None else int(l.has_drums) for l in labels]),
        "energy": torch.tensor([index(["low", "medium", "high"], l.energy) for l in labels]),
        "tonic": torch.tensor([pitch_class(l.key_tonic) if l.key_tonic else -1 for l in labels]),
    }
    return targets, classes


def read_clip_labels(files: list[Path], unlabelled: set[Path] = frozenset()) -> list[ClipLabels]:
    """The label JSON written beside each clip by training/synth.py (nothing known for `unlabelled` ones)."""
    out = []
    for f in files:
        meta = f.with_suffix(".json")
        if f in unlabelled:
            out.append(ClipLabels(file_name=f.name))
        elif not meta.is_file():
            raise InputError(f"{f.name} has no label file {meta.name}; the supervised warm-up needs labelled clips")
        else:
            out.append(ClipLabels.from_metadata(json.loads(meta.read_text()), file_name=f.name))
    return out


def pooled(encoder: MatpacEncoder, mel: torch.Tensor) -> torch.Tensor:
    """Time-pooled encoder output [B, output_dim] of crops (no chunking needed: crops fit one chunk)."""
    return encoder.encode_mel(mel).mean(dim=1)


class LabelHeads(nn.Module):
    def __init__(self, dim: int, classes: dict[str, list[str]]):
        super().__init__()
        self.heads = nn.ModuleDict({task: nn.Linear(dim, len(names)) for task, names in classes.items()})

    def loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        total = features.new_zeros(())
        for task, head in self.heads.items():
            logits, y = head(features), targets[task]
            if task in ("family", "tags"):
                known = y[:, 0] >= 0
                if known.any():
                    weight = DISTILL_WEIGHT if task == "tags" else 1.0
                    total = total + weight * F.binary_cross_entropy_with_logits(logits[known], y[known])
            elif (y >= 0).any():
                total = total + F.cross_entropy(logits[y >= 0], y[y >= 0])
        return total

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
        scores = {}
        for task, head in self.heads.items():
            logits, y = head(features), targets[task]
            if task == "tags":  # how well the predicted probabilities follow the tagger's (Pearson r)
                known = y[:, 0] >= 0
                if known.sum() > 1:
                    scores[task] = float(torch.corrcoef(torch.stack([logits[known].sigmoid().flatten(),
                                                                     y[known].flatten()]))[0, 1])
            elif task == "family":
                known = y[:, 0] >= 0
                if known.any():
                    scores[task] = float(((logits[known] > 0).float() == y[known]).float().mean())
            elif (y >= 0).any():
                scores[task] = float((logits.argmax(-1)[y >= 0] == y[y >= 0]).float().mean())
        return scores


def _select(targets: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in targets.items()}


@torch.no_grad()
def clip_features(encoder: MatpacEncoder, mels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    encoder.eval()
    out = torch.cat([pooled(encoder, mels[i: i + batch].float()) for i in range(0, len(mels), batch)])
    encoder.train()
    return out


def linear_probe(train_x, train_y, val_x, val_y, classes, steps: int = 300) -> dict[str, float]:
    """Accuracy of linear heads fitted on frozen features (standardised), per task, on the val clips."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    heads = LabelHeads(train_x.shape[1], classes)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        heads.loss(train_x, train_y).backward()
        opt.step()
    return heads.accuracy(val_x, val_y)


# -- the command --------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    data: Path
    out: Path
    preset: str = "small"
    steps: int = 300  # self-supervised steps
    supervised_steps: int = 0
    batch: int = 16
    crop_frames: int = 496
    lr: float = 5e-4
    seconds: float = 10.0
    val_fraction: float = 0.15
    seed: int = 0
    probe: bool = True
    quiet: bool = False
    extra_audio: Path | None = None  # unlabelled clips with a tags.json: distillation only


def pretrain(cfg: PretrainConfig) -> dict:
    """Self-supervised (MATPAC++) then optionally supervised training of a fresh encoder; writes a
    checkpoint with it (random projector, base decoder by reference) and returns the measurements."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model_cfg: TinyMUConfig = preset(cfg.preset)
    if cfg.crop_frames % model_cfg.encoder.patch_size or cfg.crop_frames > model_cfg.encoder.chunk_frames:
        raise InputError(f"--crop-frames must be a multiple of {model_cfg.encoder.patch_size} "
                         f"and at most {model_cfg.encoder.chunk_frames}")
    encoder = MatpacEncoder(model_cfg.encoder)
    folders = [cfg.data] + ([cfg.extra_audio] if cfg.extra_audio else [])
    unlabelled = set(clip_files(cfg.extra_audio)) if cfg.extra_audio else set()
    files = clip_files(cfg.data) + sorted(unlabelled)
    started = time.time()
    mels = log_mels(encoder, files, cfg.seconds)
    crop = min(cfg.crop_frames, mels.shape[-1] // 16 * 16)
    n_val = max(1, int(len(files) * cfg.val_fraction)) if len(files) > 4 else 0
    order = list(range(len(files)))
    rng.shuffle(order)
    val_idx, train_idx = order[:n_val], order[n_val:]
    report: dict = {"clips": len(files), "crop_frames": crop, "preset": cfg.preset}

    have_labels = all(f.with_suffix(".json").is_file() for f in files if f not in unlabelled)
    if have_labels:
        targets, classes = label_targets(read_clip_labels(files, unlabelled))
        tags = load_tags(files, folders)
        if tags is not None:
            targets["tags"], classes["tags"] = tags
            report["tagged_clips"] = int((tags[0][:, 0] >= 0).sum())

    def probe(tag: str) -> None:
        if cfg.probe and have_labels and n_val:
            feats = clip_features(encoder, mels)
            report[f"probe_{tag}"] = linear_probe(feats[train_idx], _select(targets, train_idx), feats[val_idx],
                                                  _select(targets, val_idx), classes)

    probe("random")
    if cfg.steps:
        ssl = MatpacPretrainer(encoder)
        params = [p for p in ssl.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
        gen = torch.Generator().manual_seed(cfg.seed)
        history = []
        for step in tqdm(range(cfg.steps), desc="MATPAC++ pretraining", disable=cfg.quiet):
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.steps // 10)) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            mel = random_crops(mels, rng.sample(train_idx, min(cfg.batch, len(train_idx))), crop, rng)
            losses = ssl(mel, gen)
            opt.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
            ssl.update_teacher(step / cfg.steps)
            history.append({k: float(v.detach()) for k, v in losses.items()})
        report["ssl_loss_first"] = float(np.mean([h["loss"] for h in history[: max(1, len(history) // 10)]]))
        report["ssl_loss_last"] = float(np.mean([h["loss"] for h in history[-max(1, len(history) // 10):]]))
        report["ssl_history"] = history
        probe("ssl")

    if cfg.supervised_steps:
        if not have_labels:
            raise InputError("the supervised warm-up needs the label JSON beside every clip")
        heads = LabelHeads(model_cfg.encoder.output_dim, classes)
        params = list(encoder.parameters()) + list(heads.parameters())
        params = [p for p in params if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
        sup_history = []
        for step in tqdm(range(cfg.supervised_steps), desc="supervised warm-up", disable=cfg.quiet):
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.supervised_steps // 10)) * 0.5 * (
                1 + math.cos(math.pi * step / cfg.supervised_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            index = rng.sample(train_idx, min(cfg.batch, len(train_idx)))
            loss = heads.loss(pooled(encoder, random_crops(mels, index, crop, rng)), _select(targets, index))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
            sup_history.append(float(loss.detach()))
        report["supervised_loss_first"] = float(np.mean(sup_history[: max(1, len(sup_history) // 10)]))
        report["supervised_loss_last"] = float(np.mean(sup_history[-max(1, len(sup_history) // 10):]))
        if n_val:
            report["supervised_heads_val"] = heads.accuracy(clip_features(encoder, mels[val_idx]),
                                                             _select(targets, val_idx))
        probe("supervised")
    report["seconds"] = round(time.time() - started, 1)
    save_encoder_checkpoint(encoder, model_cfg, cfg.out, notes=f"pretrain_encoder steps={cfg.steps} "
                                                                f"supervised_steps={cfg.supervised_steps}")
    report_file = Path(cfg.out).with_suffix(".json")
    report_file.write_text(json.dumps(report, indent=1))
    return report


def save_encoder_checkpoint(encoder: MatpacEncoder, model_cfg: TinyMUConfig, out: Path, notes: str = "") -> Path:
    """A full TinyMU checkpoint (our format) around this encoder: random projector, decoder by reference."""
    from model.lm.checkpoints import save_checkpoint
    from model.lm.network import build_model

    model = build_model(model_cfg)
    model.encoder.load_state_dict(encoder.state_dict())
    return save_checkpoint(model, out, trained=False, notes=notes)


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.pretrain_encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with rendered clips (.wav + label .json)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--preset", default="small", choices=["official", "small", "tiny"])
    p.add_argument("--steps", type=int, default=300, help="self-supervised MATPAC++ steps")
    p.add_argument("--supervised-steps", type=int, default=0, help="multi-task label warm-up steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop-frames", type=int, default=496)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-audio", type=Path, help="unlabelled clips with a tags.json (distillation only)")
    p.add_argument("--no-probe", dest="probe", action="store_false")
    p.add_argument("--quiet", action="store_true")
    return PretrainConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    report = pretrain(parse_args(argv))
    report.pop("ssl_history", None)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
