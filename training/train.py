"""Train TinyMU on question/answer records: the reference recipe, runnable on a CPU or many GPUs.

    python -m training.train --data DIR --out DIR [--preset small|official] [--mode full|lora|projector]
        [--init CHECKPOINT] [--epochs 3] [--lr 1e-4] [--batch 32] [--max-steps N] [--resume]

Defaults are the reference recipe (DESIGN.md section 2): encoder frozen; projector and
the whole LM trained; Adam (0.9, 0.999), no weight decay; lr 1e-4, cosine with 5 %
warm-up; validation loss at intervals and the best weights kept. `--mode lora` trains
the projector plus rank-32 adapters on q_proj/v_proj (alpha 128); `--mode projector`
only the projector.

The same command runs on one CPU, one GPU or several (launch it with `accelerate launch`
for DDP; `--bf16` for mixed precision): HF accelerate places the model, shards the
batches and gathers the losses.

Two things make it cheap on a CPU, neither changes what the model computes:
- the frozen encoder's outputs are computed once and cached on disk (training/features.py);
- prompts and targets are padded to the longest in the batch instead of to 129 tokens.
  The padding is masked out in the reference layout anyway, so each real token keeps its
  reference position id (prompt at n_audio + 1 + i, target at n_audio + 1 + 129 + j) and the
  last prompt column is the pad that predicts the first target token, as in the reference.
  Logits are computed only where a target token is predicted. The loss equals the
  reference layout's (tests/test_train.py checks it).

Outputs in --out: `state/` (trainable weights, optimizer, schedule and progress for
--resume, rewritten every --save-every steps), `history.json`, `loss.png`, `best.safetensors` (trainable weights with the lowest
validation loss) and `tinymu.safetensors` (a checkpoint in our format, delta over the
base decoder, loadable by `model.engine.load_engine`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.errors import InputError
from model.lm.config import EOS_ID, PAD_ID, TinyMUConfig, preset
from model.lm.measurements import Measurements
from model.lm.network import TinyMU, build_model
from model.lm.prompts import with_heard_genre
from training import qa_templates as T
from training.features import encode_clips
from training.labels import ClipLabels, read_labels
from training.qa import caption_text, measured_prompt

MODES = ("full", "lora", "projector")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    preset: str = "small"
    init: str | None = None  # a checkpoint to start from (e.g. the pretrained encoder + aligned projector)
    mode: str = "full"
    epochs: float = 3.0
    lr: float = 1e-4
    projector_lr: float | None = None  # None: same as lr; 0: the projector stays frozen
    warmup: float = 0.05
    batch: int = 32
    micro_batch: int = 8  # sequences per forward; gradients accumulate up to `batch`
    max_steps: int | None = None
    eval_every: int = 100
    save_every: int = 25
    val_records: int = 64
    seed: int = 0
    bf16: bool = False
    lora_rank: int = 32
    lora_alpha: float = 128.0
    mc_target: str = "option"  # "option": train multiple choice on the option text; "record": as written
    tasks: tuple[str, ...] = ()  # empty: every task
    max_records: int | None = None
    per_attribute: int | None = None  # at most this many training records per (task, attribute), drawn at random
    # Share of training examples whose audio tokens are replaced by the exact embeddings of the
    # clip's true slot words (training.align's labelled layout; needs the clips' labels).
    true_word_share: float = 0.0
    # Share of records whose prompt starts with the clip's DSP measurements (model.lm.measurements),
    # drawn from its labels with the errors a DSP makes; the rest learn to answer from audio alone.
    measured_share: float = 0.0
    # Captions state only what the prompt told (`ground_captions`); off in the shipped recipe:
    # round 25 tried it and missed the real gate (docs/model.md).
    ground_captions: bool = False
    resume: bool = False
    features: Path | None = None  # feature cache file; default <out>/features.safetensors
    quiet: bool = False


# -- records ----------------------------------------------------------------------------------


def find_split(data: Path, split: str) -> Path:
    for candidate in (data / f"{split}.jsonl", data / split / "records.jsonl", data / f"qa_{split}.jsonl"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no {split} records in {data}: expected {split}.jsonl (build them with "
                     "`python -m training.dataset build --out DIR`)")


def read_records(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def training_target(record: dict, mc_target: str) -> str:
    """What the model learns to say. Multiple-choice records carry "(B) text" as target;
    with mc_target="option" the model learns the option text alone, which is exactly what
    `MusicLM.choose(method="loglik")` scores and what the MuChoMusic scorer matches."""
    meta = record.get("meta") or {}
    if mc_target == "option" and record.get("task") == "multiple_choice" and "options" in meta:
        return meta["options"][meta["answer"]]
    return record["target_text"]


@dataclass
class Example:
    file_name: str
    prompt: list[int]
    target: list[int]  # ends with EOS_ID


def tokenize_records(records: list[dict], tokenizer, cfg: TinyMUConfig, mc_target: str) -> list[Example]:
    """Token ids per record; prompts longer than the layout allows are dropped (counted in the log)."""
    examples = []
    for record in records:
        prompt = tokenizer(record["input_text"], add_special_tokens=False).input_ids
        target = tokenizer(training_target(record, mc_target), add_special_tokens=False).input_ids
        if len(prompt) >= cfg.prompt_length:
            continue  # the layout needs at least one pad after the prompt
        examples.append(Example(record["file_name"], prompt, (target + [EOS_ID])[: cfg.target_length]))
    return examples


# How often a measurement sentence in training leaves a reading out, so the model learns to answer
# from the audio too. Stated readings are never wrong here: round 21 also slipped them the way a DSP
# does (tempo octave 10 %, relative key 8 %) with the true answer as target, which taught the model to
# overrule the sentence with its ear, and on real recordings its ear lost (docs/training-history.md).
MEASUREMENT_DROP = 0.15
# The reading each open question is about; an answer about a reading not stated says it is unsure.
READING_OF = {"tempo": "tempo_bpm", "tempo_class": "tempo_bpm", "key": "key", "mode": "key", "meter": "meter"}


def dropped_measurements(clip: ClipLabels, rng: random.Random) -> Measurements:
    """The clip's labels as the measurement sentence states them, each reading left out now and then."""
    truth = clip.measurements()
    kept = {name: value if rng.random() > MEASUREMENT_DROP else None for name, value in truth.to_json().items()}
    return Measurements(**kept)


def hedged_target(record: dict, measurements: Measurements | None, rng: random.Random) -> str:
    """An open answer about tempo, key or meter says it is unsure when that reading was not stated."""
    reading = READING_OF.get((record.get("meta") or {}).get("attribute", ""))
    target = record["target_text"]
    if record.get("task") != "open_qa" or reading is None:
        return target
    if measurements is not None and measurements.to_json()[reading] is not None:
        return target
    return f"{target} {rng.choice(T.UNSURE)}"


def add_measurements(records: list[dict], labels: dict[str, ClipLabels], share: float, seed: int) -> list[dict]:
    """`share` of the records get the measurement sentence of their clip in front of the question;
    open answers about a reading the prompt does not state end with a word of doubt."""
    rng = random.Random(seed)
    measured = []
    for record in records:
        clip = labels.get(record["file_name"])
        if clip is None:
            measured.append(record)
            continue
        readings = dropped_measurements(clip, rng) if rng.random() < share else None
        prompt = measured_prompt(record["task"], record["input_text"], record.get("meta"), readings)
        meta = {**(record.get("meta") or {}), "stated": readings.to_json() if readings else None}
        measured.append({**record, "input_text": prompt, "target_text": hedged_target(record, readings, rng),
                         "meta": meta})
    return measured


# How often the genre hint (TinyMUConfig.heard_genre_words) is left out in training: the engine states
# it only when its clip classifier is sure, so the model must answer without it too, and an open genre
# answer without it says it is unsure. A stated hint is always the clip's true genre: a hint that is
# sometimes wrong teaches the decoder to overrule it with its own ear, which on real recordings is at
# chance for genre (round 23), the lesson round 21 taught for the measurement sentence.
HEARD_DROP = 0.15


def add_heard_genre(records: list[dict], labels: dict[str, ClipLabels], words: tuple[str, ...], seed: int,
                    fits=lambda text: True) -> list[dict]:
    """Each record's prompt with 'Heard: genre X.' in front, as the engine puts it there: X is the
    clip's genre word when it is one of `words`, left out now and then (HEARD_DROP) and where the
    hinted prompt would not `fit` the layout."""
    from training.align import naming_word

    rng = random.Random(seed + 2)
    hinted = []
    for record in records:
        clip = labels.get(record["file_name"])
        word = naming_word(clip.style) if clip is not None and clip.style else None
        genre = word if word in words and rng.random() >= HEARD_DROP else None
        prompt = with_heard_genre(record["input_text"], genre)
        if not fits(prompt):
            genre, prompt = None, record["input_text"]
        target = record["target_text"]
        if genre is None and record.get("task") == "open_qa" and (record.get("meta") or {}).get("attribute") == "style":
            target = f"{target} {rng.choice(T.UNSURE_GENRE)}"
        hinted.append({**record, "input_text": prompt, "target_text": target,
                       "meta": {**(record.get("meta") or {}), "heard": genre}})
    return hinted


def ground_captions(records: list[dict], labels: dict[str, ClipLabels], seed: int, *, readings: bool,
                    genre: bool) -> list[dict]:
    """Each caption rebuilt from what its prompt tells the model, plus what the ear hears.

    Why: a caption states every label of its clip, so a caption whose prompt left the key or the
    tempo out (or had no measurement sentence at all) taught the model to state them from its ear,
    and on real recordings it stated a wrong key in 16 and a wrong tempo class in 27 of 100
    captions (round 23's fact check). So with `readings`, tempo, meter and key appear only where
    the measurement sentence (meta "stated", from `add_measurements`) stated them; with `genre`,
    the genre only where the prompt's genre hint (meta "heard") named it; chords never, as no
    prompt states them. Instruments, drums and energy stay: they are what the audio encoder hears.
    With `readings`, an open answer about chords also says it is unsure."""
    rng = random.Random(seed + 3)
    grounded = []
    for record in records:
        clip = labels.get(record["file_name"])
        meta = record.get("meta") or {}
        if readings and record.get("task") == "open_qa" and meta.get("attribute") == "chords":
            grounded.append({**record, "target_text": f"{record['target_text']} {rng.choice(T.UNSURE)}"})
            continue
        if record.get("task") != "captioning" or clip is None:
            grounded.append(record)
            continue
        told = {"chords": None}
        if readings:
            stated = meta.get("stated") or {}
            told.update({name: None for name in ("tempo_bpm", "meter") if stated.get(name) is None})
            if stated.get("key") is None:
                told.update(key_tonic=None, mode=None)
        if genre and not meta.get("heard"):
            told["style"] = None
        text = caption_text(replace(clip, **told), rng)
        if text:  # a clip with nothing left to say has no caption to learn
            grounded.append({**record, "target_text": text})
    return grounded


def balance_attributes(records: list[dict], per_group: int, seed: int) -> list[dict]:
    """At most `per_group` records of each (task, attribute), drawn at random, in their original order.

    Why: the generator asks some questions of every clip (lead instrument, key, chords) and
    the two-attribute profile questions of a few, so a uniform draw gives all ten profile
    kinds together an 11 % share of the steps, while they are most of what a per-attribute
    benchmark asks. Capping each kind gives every question type a similar share of the steps."""
    groups: dict[tuple, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault((record.get("task"), (record.get("meta") or {}).get("attribute")), []).append(i)
    rng = random.Random(seed)
    kept = set()
    for key in sorted(groups, key=str):
        members = groups[key]
        kept.update(rng.sample(members, min(per_group, len(members))))
    return [records[i] for i in sorted(kept)]


def length_batches(examples: list[Example], batch: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar length: sort within windows of 50 batches, then shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    window = batch * 50
    for start in range(0, len(order), window):
        chunk = sorted(order[start: start + window], key=lambda i: len(examples[i].prompt) + len(examples[i].target))
        batches += [chunk[i: i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


# -- the compact reference layout ----------------------------------------------------------------


@dataclass
class TextBatch:
    prompt_ids: torch.Tensor  # [B, P] real prompt then PAD; the last column is PAD for every row
    prompt_mask: torch.Tensor  # [B, P]
    target_ids: torch.Tensor  # [B, T] target + EOS then PAD
    target_mask: torch.Tensor  # [B, T]

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.prompt_ids, self.prompt_mask, self.target_ids, self.target_mask


def collate_text(examples: list[Example]) -> TextBatch:
    p_len = max(len(e.prompt) for e in examples) + 1
    t_len = max(len(e.target) for e in examples)
    b = len(examples)
    prompt_ids = torch.full((b, p_len), PAD_ID, dtype=torch.long)
    prompt_mask = torch.zeros(b, p_len, dtype=torch.long)
    target_ids = torch.full((b, t_len), PAD_ID, dtype=torch.long)
    target_mask = torch.zeros(b, t_len, dtype=torch.long)
    for i, e in enumerate(examples):
        prompt_ids[i, : len(e.prompt)] = torch.tensor(e.prompt)
        prompt_mask[i, : len(e.prompt)] = 1
        target_ids[i, : len(e.target)] = torch.tensor(e.target)
        target_mask[i, : len(e.target)] = 1
    return TextBatch(prompt_ids, prompt_mask, target_ids, target_mask)


def compact_loss(model: TinyMU, audio_tokens: torch.Tensor, text: TextBatch, reduction: str = "mean",
                 true_words: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss on the target tokens, equal to the reference layout's loss (module docstring).

    `true_words` [B, T] (optional): token ids that replace the projected audio of the rows
    where they are >= 0 (see TrainConfig.true_word_share)."""
    audio = model.audio_embeddings(audio_tokens)
    if true_words is not None:
        exact = model.token_embeddings(true_words.clamp(min=0)).to(audio.dtype)
        audio = torch.where((true_words >= 0).unsqueeze(-1), exact, audio)
    b, n_audio, _ = audio.shape
    device = audio.device
    sep = torch.full((b, 1), EOS_ID, dtype=torch.long, device=device)
    ids = torch.cat([sep, text.prompt_ids, text.target_ids], dim=1)
    embeds = torch.cat([audio, model.token_embeddings(ids).to(audio.dtype)], dim=1)
    mask = torch.cat([torch.ones(b, n_audio + 1, dtype=torch.long, device=device), text.prompt_mask, text.target_mask], 1)
    p_len, t_len = text.prompt_ids.shape[1], text.target_ids.shape[1]
    target_start = model.target_start(n_audio)
    positions = torch.cat([
        torch.arange(n_audio + 1 + p_len - 1, device=device),
        torch.tensor([target_start - 1], device=device),  # the last prompt pad of the reference layout
        target_start + torch.arange(t_len, device=device),
    ]).expand(b, -1)
    hidden = model.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    # Columns -t_len-1 .. -2 predict target tokens 0 .. t_len-1.
    logits = model.lm.lm_head(hidden[:, -t_len - 1: -1]).float()
    labels = text.target_ids.masked_fill(text.target_mask == 0, -100)
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none").view(b, t_len)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / text.target_mask.sum().clamp(min=1)


class LayoutLoss(torch.nn.Module):
    """`compact_loss` as a module, so accelerate/DDP see a forward pass they can wrap."""

    def __init__(self, model: TinyMU):
        super().__init__()
        self.model = model

    def forward(self, audio_tokens, prompt_ids, prompt_mask, target_ids, target_mask, true_words=None) -> torch.Tensor:
        text = TextBatch(prompt_ids, prompt_mask, target_ids, target_mask)
        return compact_loss(self.model, audio_tokens, text, "sum", true_words)


# -- which weights train ----------------------------------------------------------------------------


def set_trainable(model: TinyMU, mode: str, train_projector: bool = True) -> list[str]:
    """Freeze the encoder (always) and pick the trainable weights; returns their names.
    `train_projector=False` keeps the projector as the align stage left it, so the decoder
    learns to read the slot words it was aligned to instead of a code the two drift into."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {MODES}")
    for name, param in model.named_parameters():
        if name.startswith("projector."):
            param.requires_grad_(train_projector)
        elif name.startswith("lm."):
            param.requires_grad_(mode == "full" or (mode == "lora" and ".lora_" in name))
        else:
            param.requires_grad_(False)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: TinyMU) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def build_for_training(cfg: TrainConfig) -> TinyMU:
    """The model to train: from --init (a checkpoint in our format) or a preset; LoRA added for mode lora."""
    if cfg.init:
        from model.lm.checkpoints import load_checkpoint

        model, _ = load_checkpoint(cfg.init)
    else:
        model = build_model(preset(cfg.preset))
    if cfg.mode == "lora" and not model.cfg.lora_rank:
        from model.lm.network import add_lora

        torch.manual_seed(cfg.seed)
        add_lora(model.lm, cfg.lora_rank, cfg.lora_alpha, model.cfg.lora_targets)
        model.cfg.lora_rank, model.cfg.lora_alpha = cfg.lora_rank, cfg.lora_alpha
    return model


def cosine_with_warmup(total_steps: int, warmup: float):
    warm = max(1, int(round(total_steps * warmup)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# -- the loop ------------------------------------------------------------------------------------------


def clip_true_words(cfg: TrainConfig, examples: list[Example], features, tokenizer) -> dict[str, torch.Tensor]:
    """Each training clip's true slot words (token ids, one per audio token) for
    TrainConfig.true_word_share. Why feed them: the decoder learns to read its audio words
    from inputs that are always right, instead of only from an encoder that is often wrong."""
    from training.align import clip_labels_in, true_word_ids

    labels = clip_labels_in(Path(cfg.data), "train")
    missing = sorted({e.file_name for e in examples} - set(labels))
    if missing:
        raise InputError(f"true_word_share needs the labels of every training clip; none for {missing[:3]} "
                         f"({len(missing)} clips): build the data with `python -m training.dataset build`")
    return {name: true_word_ids(tokenizer, labels[name], features[name].shape[0])
            for name in {e.file_name for e in examples}}


def _batch_tensors(examples: list[Example], features: dict[str, torch.Tensor], dtype) -> tuple[torch.Tensor, TextBatch]:
    audio = [features[e.file_name] for e in examples]
    n = min(a.shape[0] for a in audio)  # equal for clips of the same length; crop the rare longer one
    return torch.stack([a[:n] for a in audio]).to(dtype), collate_text(examples)


def evaluate_loss(model: TinyMU, examples: list[Example], features, micro_batch: int, accelerator) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch):
            chunk = examples[start: start + micro_batch]
            audio, text = _batch_tensors(chunk, features, torch.float32)
            with accelerator.autocast():
                total += compact_loss(model, audio.to(accelerator.device), _to(text, accelerator.device), "sum").item()
            count += int(text.target_mask.sum())
    model.train()
    return total / max(1, count)


def _to(text: TextBatch, device) -> TextBatch:
    return TextBatch(*(t.to(device) for t in text.as_tuple()))


def plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, lw=0.8, alpha=0.6, label="train (per step)")
    if history["val"]:
        steps, losses = zip(*history["val"])
        ax.plot(steps, losses, "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / target token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run; returns a summary dict (also written to <out>/summary.json)."""
    from accelerate import Accelerator

    from model.lm.smollm2 import load_tokenizer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    if cfg.mode == "projector" and cfg.projector_lr == 0:
        raise InputError("--mode projector trains only the projector: give it a --projector-lr above 0")
    model = build_for_training(cfg)
    model.cfg.reads_measurements = model.cfg.reads_measurements or cfg.measured_share > 0
    trainable = set_trainable(model, cfg.mode, train_projector=cfg.projector_lr != 0)
    tokenizer = load_tokenizer(model.cfg.lm_weights)

    def load_split(split: str) -> list[dict]:
        records = read_records(find_split(Path(cfg.data), split))
        if cfg.tasks:
            records = [r for r in records if r.get("task") in cfg.tasks]
        if cfg.measured_share <= 0 and not model.cfg.heard_genre_words:
            return records
        labels = {clip.file_name: clip for clip in read_labels(Path(cfg.data), split)}
        if cfg.measured_share > 0:
            records = add_measurements(records, labels, cfg.measured_share, cfg.seed)
        if model.cfg.heard_genre_words:
            records = add_heard_genre(records, labels, model.cfg.heard_genre_words, cfg.seed, fits=lambda text: len(
                tokenizer(text, add_special_tokens=False).input_ids) < model.cfg.prompt_length)
        if not cfg.ground_captions:
            return records
        return ground_captions(records, labels, cfg.seed, readings=cfg.measured_share > 0,
                               genre=bool(model.cfg.heard_genre_words))

    train_records = load_split("train")
    if cfg.max_records:
        random.Random(cfg.seed).shuffle(train_records)
        train_records = train_records[: cfg.max_records]
    if cfg.per_attribute:
        train_records = balance_attributes(train_records, cfg.per_attribute, cfg.seed)
    val_records = load_split("val")
    random.Random(cfg.seed + 1).shuffle(val_records)
    val_records = val_records[: cfg.val_records]
    train_examples = tokenize_records(train_records, tokenizer, model.cfg, cfg.mc_target)
    val_examples = tokenize_records(val_records, tokenizer, model.cfg, cfg.mc_target)
    if not train_examples:
        raise InputError(f"no usable training records in {cfg.data}")

    with accelerator.main_process_first():
        features = encode_clips(model.encoder, cfg.data, [e.file_name for e in train_examples + val_examples],
                                cfg.features or out / "features.safetensors", seconds=model.cfg.audio_seconds,
                                show_progress=not cfg.quiet and accelerator.is_main_process)

    true_words = clip_true_words(cfg, train_examples, features, tokenizer) if cfg.true_word_share > 0 else {}

    steps_per_epoch = math.ceil(len(train_examples) / cfg.batch)
    total_steps = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    params = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("projector.")],
         "lr": cfg.lr if cfg.projector_lr is None else cfg.projector_lr},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")],
         "lr": cfg.lr},
    ]
    params = [g for g in params if g["params"]]
    optimizer = torch.optim.Adam(params, betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, cfg.warmup))
    wrapped, optimizer, scheduler = accelerator.prepare(LayoutLoss(model), optimizer, scheduler)
    core: TinyMU = accelerator.unwrap_model(wrapped).model

    history = {"train": [], "val": [], "config": _jsonable(asdict(cfg)), "trainable": len(trainable)}
    step, best = 0, math.inf
    state_dir = out / "state"
    # Only what training changes is saved (not the frozen encoder or base decoder): seconds, not minutes.
    if cfg.resume and (state_dir / "progress.json").is_file():
        saved = torch.load(state_dir / "train_state.pt", map_location="cpu", weights_only=False)
        core.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        progress = json.loads((state_dir / "progress.json").read_text())
        step, best, history = progress["step"], progress["best"], progress["history"]
        accelerator.print(f"resumed at step {step} of {total_steps}")

    def save_state() -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state_dir.mkdir(parents=True, exist_ok=True)
            # Write-then-rename, so an interrupted save never leaves a half state behind.
            torch.save({"trainable": trainable_state(core), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
                       state_dir / "train_state.pt.tmp")
            (state_dir / "train_state.pt.tmp").replace(state_dir / "train_state.pt")
            tmp = state_dir / "progress.json.tmp"
            tmp.write_text(json.dumps({"step": step, "best": best, "history": history}))
            tmp.replace(state_dir / "progress.json")

    def validate() -> None:
        nonlocal best
        if not val_examples:
            return
        loss = evaluate_loss(core, val_examples, features, cfg.micro_batch, accelerator)
        history["val"].append((step, loss))
        if loss < best and accelerator.is_main_process:
            best = loss
            save_file({k: v.contiguous() for k, v in trainable_state(core).items()}, str(out / "best.safetensors"),
                      metadata={"step": str(step), "val_loss": str(loss)})
        accelerator.print(f"step {step}: validation loss {loss:.4f} (best {best:.4f})")

    started = time.time()
    if step == 0:
        validate()  # the starting point of the curve
    wrapped.train()
    bar = tqdm(total=total_steps, initial=step, desc=f"training ({cfg.mode})", unit="step",
               disable=cfg.quiet or not accelerator.is_main_process)
    while step < total_steps:
        epoch, index_in_epoch = divmod(step, steps_per_epoch)
        batches = length_batches(train_examples, cfg.batch, cfg.seed + epoch)
        # Each process takes its share of the batch; micro-batches accumulate into one optimizer step.
        for batch_ids in batches[index_in_epoch:]:
            if step >= total_steps:
                break
            mine = batch_ids[accelerator.process_index:: accelerator.num_processes] or batch_ids[:1]
            micro = [mine[i: i + cfg.micro_batch] for i in range(0, len(mine), cfg.micro_batch)]
            n_tokens = sum(len(train_examples[i].target) for i in mine)
            step_loss = 0.0
            for k, chunk in enumerate(micro):
                # Gradients of all micro-batches add up; DDP syncs them once, on the last one.
                sync = contextlib.nullcontext() if k == len(micro) - 1 else accelerator.no_sync(wrapped)
                with sync:
                    examples = [train_examples[i] for i in chunk]
                    audio, text = _batch_tensors(examples, features, torch.float32)
                    inputs = [audio, *text.as_tuple()]
                    if true_words:
                        # Seeded by step and micro-batch, so a resumed run draws the same rows.
                        draw = random.Random(f"{cfg.seed}:{step}:{k}")
                        inputs.append(torch.stack([
                            true_words[e.file_name][: audio.shape[1]] if draw.random() < cfg.true_word_share
                            else torch.full((audio.shape[1],), -1) for e in examples]))
                    with accelerator.autocast():
                        loss = wrapped(*(t.to(accelerator.device) for t in inputs))
                    # Normalise by the whole batch's target tokens so micro-batching is exact.
                    accelerator.backward(loss / n_tokens)
                    step_loss += loss.item()
            accelerator.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            history["train"].append((step, step_loss / n_tokens))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss / n_tokens:.3f}", lr=f"{scheduler.get_last_lr()[-1]:.1e}")
            if step % cfg.eval_every == 0 or step == total_steps:
                validate()
            if step % cfg.save_every == 0 or step == total_steps:
                save_state()
                if accelerator.is_main_process:
                    plot_history(history, out / "loss.png")
    bar.close()

    summary = {"steps": step, "best_val_loss": best, "seconds": round(time.time() - started, 1),
               "train_examples": len(train_examples), "val_examples": len(val_examples), "mode": cfg.mode}
    if accelerator.is_main_process:
        if (out / "best.safetensors").is_file():
            core.load_state_dict(load_file(str(out / "best.safetensors")), strict=False)
        from model.lm.checkpoints import save_checkpoint

        save_checkpoint(core, out / "tinymu.safetensors", trained=True,
                        notes=f"training.train mode={cfg.mode} steps={step} best_val_loss={best:.4f}")
        (out / "history.json").write_text(json.dumps(history))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_history(history, out / "loss.png")
    return summary


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with train.jsonl / val.jsonl records and their audio")
    p.add_argument("--out", type=Path, required=True, help="run folder (state, curves, checkpoint)")
    p.add_argument("--preset", default="small", choices=["official", "small", "tiny"])
    p.add_argument("--init", default=None, help="start from this checkpoint (our .safetensors format)")
    p.add_argument("--mode", default="full", choices=MODES)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--projector-lr", type=float, default=None, help="default: --lr; 0 keeps the projector frozen")
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps with linear warm-up")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--val-records", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPUs)")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--lora-alpha", type=float, default=128.0)
    p.add_argument("--mc-target", default="option", choices=["option", "record"])
    p.add_argument("--tasks", default="", help="comma-separated tasks to train on (default: all)")
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--per-attribute", type=int, default=None,
                   help="at most N training records per (task, attribute): every question type gets a similar share")
    p.add_argument("--true-word-share", type=float, default=0.0,
                   help="share of training examples fed the clip's true slot words instead of its audio tokens")
    p.add_argument("--measured-share", type=float, default=0.0,
                   help="share of records whose prompt starts with the clip's DSP measurements (noisy, from labels)")
    p.add_argument("--ground-captions", action="store_true",
                   help="captions state only the readings and genre the prompt told, and no chords")
    p.add_argument("--features", type=Path, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    values = vars(a)
    values["tasks"] = tuple(t for t in a.tasks.split(",") if t)
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    summary = train(parse_args(argv))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
