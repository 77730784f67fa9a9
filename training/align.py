"""Align the projector to the language model's word embeddings, cheaply (no LM forward).

    python -m training.align --data DIR --init CHECKPOINT --out CHECKPOINT [--steps 1500]

Why: on a CPU, every step through the 30-layer LM costs about a second per sample, so
the LM cannot be what first teaches the projector that "this audio is a waltz in A
minor". This stage does it without the LM: each audio token learns to *be*, approximately,
the input embedding of one word naming one of the clip's labels.

The words sit in fixed slots: position i of the 63 audio tokens carries attribute
`SLOTS[i % len(SLOTS)]` ("waltz", "reed", "tenor", "C", "minor", "3", "fast", ...), one
single-token word each, so every clip uses the same position -> attribute layout and
each attribute appears five times across the clip. (A first version spelled the labels
as one sentence repeated over the positions; its word positions moved with each clip's
sentence length and the projector learned them poorly: 18 % of tokens nearest to their
word.) With `--labelled` each value word follows a word naming its attribute ("genre
waltz solo reed melody tenor key C key minor ..."; each attribute then appears two or
three times), so the decoder reads which attribute a word answers instead of having to
learn it from the word's position; the name tokens are the same for every clip, except
that a two-token tonic puts its second token before the mode ("key C # minor").

The encoder's tokens carry their time position (sin-cos embedding), which is how the
per-token projector knows its slot. The loss reads each token against the tied
embedding table (cosine similarity at a low temperature, cross-entropy over the words
the slots use) and pulls it to the word's embedding (squared distance), so the LM sees
inputs of the size it was trained on.
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

from model.errors import InputError
from model.lm.checkpoints import load_checkpoint, save_checkpoint
from model.lm.config import KEY_CLASSES
from model.lm.network import Projector
from model.lm.smollm2 import load_tokenizer
from training.features import encode_clips
from training.labels import GM_FAMILIES, MODES, ClipLabels, pitch_class
from training.qa import instrument_phrase

# The recipe's align steps (training.ship uses this default too): the one place this knob is set.
STEPS = 1500

# One slot per instrument family heard, in GM order: four, because 12 % of the clips have four
# families, and with three slots the family a question asked about was missing from 8 of the 96
# held-out family questions.
FAMILY_SLOTS = ("family_1", "family_2", "family_3", "family_4")
# The tonic comes right before the mode, so the labelled layout spells the key the way the
# answers do (see `slot_name_ids`).
SLOTS = ("style", "lead_family", "lead_instrument", "tonic", "mode", "meter", "tempo_class", "drums", "energy",
         *FAMILY_SLOTS)
# Value words are spelled with the tokens the answers use ("a clip in 3/4 time", "a moderately
# energetic song", "a piece in a minor key without drums"), so the decoder can match a slot to an
# option by copying a token. With " three", " moderate" and " drums" the fine-tuned decoder read
# these slots at chance even when fed the true words (option log-likelihood on the test questions:
# 12.5-37.5 % for mode+meter and meter+tempo, vs 100 % for genre and lead instrument).
_METER_WORDS = {"3/4": "3", "4/4": "4"}
_ENERGY_WORDS = {"low": "soft", "medium": "moderately", "high": "loud"}
# The word naming each slot in the labelled layout (first tokens differ from every value word).
SLOT_NAMES = {"style": "genre", "lead_family": "solo", "lead_instrument": "melody", "mode": "key",
              "meter": "meter", "tempo_class": "tempo", "drums": "percussion", "energy": "dynamics",
              "tonic": "key", **{slot: "instruments" for slot in FAMILY_SLOTS}}

# Clip-level classifiers the projector may read (`align(context=...)`): one per slot attribute,
# the 24-way key standing for tonic and mode (major/minor is not linear in the mean token, the key is).
CONTEXT_KINDS = {"none": (), "key": ("key",),
                 "clip": ("key",) + tuple(s for s in SLOTS if s not in ("tonic", "mode"))}


def naming_word(phrase: str) -> str:
    """The word of a label that tells it apart from the others: the first ("tenor sax" ->
    "tenor", "square lead" -> "square"), except after "synth", which many share ("synth pad"
    -> "pad", "synth choir" -> "choir")."""
    words = phrase.split()
    return words[1] if words[0] == "synth" and len(words) > 1 else words[0]


def slot_words(labels: ClipLabels) -> list[str]:
    """One word per slot of `SLOTS` ("none" where the clip lacks the label)."""
    families = [f for f in GM_FAMILIES if f in (labels.families or ())] + ["none"] * len(FAMILY_SLOTS)
    values = {
        "style": labels.style,
        "lead_family": labels.lead_family,
        # The phrase the questions use ("square lead", not "Lead 1 (square)", whose first word all synth leads share).
        "lead_instrument": instrument_phrase(labels.lead_instrument) if labels.lead_instrument else None,
        "mode": labels.mode,
        "meter": _METER_WORDS.get(labels.meter or ""),
        "tempo_class": labels.tempo_class,
        "drums": None if labels.has_drums is None else ("with" if labels.has_drums else "without"),
        "energy": _ENERGY_WORDS.get(labels.energy or ""),
        "tonic": labels.key_tonic,
        **dict(zip(FAMILY_SLOTS, families)),
    }
    return [naming_word(values[slot] or "none") for slot in SLOTS]


def key_class(labels: ClipLabels) -> int:
    """The clip's key as one of 24 classes (tonic x mode), or -1 when unknown."""
    if not labels.key_tonic or labels.mode not in MODES:
        return -1
    return pitch_class(labels.key_tonic) * len(MODES) + MODES.index(labels.mode)


def _first_token(tokenizer, word: str) -> int:
    """The first token of `word` with its leading space, as inside a sentence; for a number,
    the digit (SmolLM2 splits digits from the space before them: " 3" is " " + "3")."""
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    return ids[1] if len(ids) > 1 and tokenizer.decode(ids[:1]) == " " else ids[0]


def slot_token_ids(tokenizer, labels: ClipLabels) -> list[int]:
    """The first token of each slot word."""
    return [_first_token(tokenizer, word) for word in slot_words(labels)]


def clip_labels_in(data: Path, split: str = "train") -> dict[str, ClipLabels]:
    """Labels of the clips of one split, keyed by the `file_name` the records use.

    Reads `labels_<split>.jsonl` written by `training.dataset build`; a folder of
    clips with label JSON beside each wav (training/synth.py) works too."""
    listed = Path(data) / f"labels_{split}.jsonl"
    if listed.is_file():
        from training.labels import read_labels

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


def slot_name_ids(tokenizer, labels: ClipLabels | None = None) -> list[int]:
    """The token at each slot's name position (labelled layout), in `SLOTS` order: the first
    token of the slot's name word, except that the mode's name position carries the rest of
    the clip's tonic when it takes two tokens ("#" of " C#", "b" of " Bb"). The stream then
    reads "key C # minor", the tokens of the answer " C# minor"; the tonic slot alone cannot
    tell C# from C. (Fed each test clip's true words, the decoder picked the key of 7 of 8
    test questions with this layout, 4 of 8 with the tonic and the mode apart in the cycle.)"""
    ids = [_first_token(tokenizer, SLOT_NAMES[slot]) for slot in SLOTS]
    if labels is not None and labels.key_tonic:
        spelled = tokenizer(" " + labels.key_tonic, add_special_tokens=False).input_ids
        if len(spelled) > 1:
            ids[SLOTS.index("mode")] = spelled[1]
    return ids


def slot_positions(n_tokens: int, labelled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each audio position: the slot it serves, and whether it carries the slot's name
    (labelled layout: name, value, name, value, ...) rather than its value."""
    step = torch.arange(n_tokens) % (2 * len(SLOTS) if labelled else len(SLOTS))
    if not labelled:
        return step, torch.zeros(n_tokens, dtype=torch.bool)
    return step // 2, step % 2 == 0


def slot_targets(slot_ids: list[int], n_tokens: int, name_ids: list[int] | None = None) -> torch.Tensor:
    """Token id each audio position should carry: the value of its slot, or (labelled layout,
    `name_ids` given) the slot's name at the name positions."""
    slot, is_name = slot_positions(n_tokens, labelled=name_ids is not None)
    return torch.tensor([name_ids[k] if named else slot_ids[k] for k, named in zip(slot.tolist(), is_name.tolist())])


def true_word_ids(tokenizer, labels: ClipLabels, n_tokens: int) -> torch.Tensor:
    """What a perfect encoder and projector would hand the decoder for this clip: its slot
    words in the labelled layout, as token ids [n_tokens]."""
    return slot_targets(slot_token_ids(tokenizer, labels), n_tokens, slot_name_ids(tokenizer, labels))


def align(data: Path, init: str, out: Path, *, steps: int = STEPS, batch: int = 32, lr: float = 1e-3,
          temperature: float = 0.05, seed: int = 0, features_file: Path | None = None, word_readout: bool = False,
          labelled: bool = False, context: str = "none", hear_genre: bool = False, quiet: bool = False) -> dict:
    """Train the projector of checkpoint `init` on the slot words of the training clips in
    `data` (never the test split); write the checkpoint `out`; return measurements,
    including each slot's held-out accuracy (the slot's word read from the clip's tokens).

    `word_readout`: the checkpoint also switches on the model's word read-out over these
    slot words (`TinyMUConfig.audio_vocabulary`, at this `temperature`: the same softmax
    this loss trains), so the decoder is fed mixtures of real word embeddings.
    `labelled`: each value word follows its slot's name word (see the module docstring).
    `context`: "key": the projector also reads the clip's key posterior; "clip": the posterior
    of every slot's attribute (the key standing for tonic and mode; `CONTEXT_KINDS`), from
    classifiers over the clip's mean token that this stage trains on the labels (cross-entropy
    added to the loss; `TinyMUConfig.projector_context_classes`, set here).
    `hear_genre` (with the clip context): the engine states the genre the context's classifier
    hears in front of each prompt (`TinyMUConfig.heard_genre_words`, set here)."""
    if context not in CONTEXT_KINDS:
        raise InputError(f"context must be one of {', '.join(CONTEXT_KINDS)}, not {context!r}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, header = load_checkpoint(init)
    tokenizer = load_tokenizer(model.cfg.lm_weights)
    labels = clip_labels_in(data)
    names = sorted(labels)
    slot_ids = {n: slot_token_ids(tokenizer, labels[n]) for n in names}
    # Words each slot takes; the cross-entropy reads tokens against all of them (and the names).
    choices = [sorted({ids[k] for ids in slot_ids.values()}) for k in range(len(SLOTS))]
    groups = CONTEXT_KINDS[context]
    classes = tuple(KEY_CLASSES if g == "key" else len(choices[SLOTS.index(g)]) for g in groups)
    if classes != model.cfg.projector_context_classes:
        model.cfg.projector_context_classes = classes
        widened = Projector(model.cfg.encoder.output_dim, model.cfg.projector_hidden, model.cfg.lm.hidden_size,
                            classes, model.cfg.projector_context_width)
        kept = {k: v for k, v in model.projector.state_dict().items() if k.startswith("linear")}
        widened.load_state_dict(kept, strict=False)  # the context layers start fresh (seeded above)
        model.projector = widened

    def context_class(name: str, group: str) -> int:
        """The clip's class in one context group (-1: unknown, no loss)."""
        if group == "key":
            return key_class(labels[name])
        k = SLOTS.index(group)
        return choices[k].index(slot_ids[name][k])

    context_targets = {n: [context_class(n, g) for g in groups] for n in names}
    features = encode_clips(model.encoder, data, names, features_file or Path(out).with_suffix(".features.safetensors"),
                            seconds=model.cfg.audio_seconds, show_progress=not quiet)
    n_tokens = min(f.shape[0] for f in features.values())
    table = model.lm.get_input_embeddings().weight.detach()
    scale = table.pow(2).sum(-1).mean().sqrt()  # typical embedding norm: the loss is relative to it
    name_ids = {n: slot_name_ids(tokenizer, labels[n]) if labelled else None for n in names}
    targets = {n: slot_targets(slot_ids[n], n_tokens, name_ids[n]) for n in names}
    named = {w for ids in name_ids.values() for w in ids or ()}
    words = torch.tensor(sorted({w for c in choices for w in c} | named))
    column = {int(w): i for i, w in enumerate(words)}
    slot_of, is_name = slot_positions(n_tokens, labelled)

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
        return x, y, torch.tensor([context_targets[n] for n in chosen]).reshape(len(chosen), len(groups))

    def loss_of(x, y, context_y):
        pred = projector(x)
        loss = (pred - table[y]).pow(2).sum(-1).mean() / scale**2
        for g, logits in enumerate(projector.context_logits(x)):
            if (context_y[:, g] >= 0).any():  # all unknown: the cross-entropy would be NaN
                loss = loss + F.cross_entropy(logits, context_y[:, g], ignore_index=-1)
        # Cosine logits, sharpened: raw dot products span only a few units here, too soft for the
        # cross-entropy to separate close neighbours such as " C"/" D"
        # (measured: held-out slot accuracy of the key's tonic 17 % -> 68 %, lead instrument 28 -> 73 %).
        logits = F.normalize(pred, dim=-1) @ F.normalize(table[words], dim=-1).T / temperature
        wanted = torch.tensor([column[int(i)] for i in y.flatten()])
        return loss + F.cross_entropy(logits.flatten(0, 1), wanted)

    @torch.no_grad()
    def slot_accuracy(chosen) -> tuple[dict[str, float], dict[str, float]]:
        """Per slot: how often the mean of the slot's tokens is nearest (cosine) to the clip's
        word among the words that slot takes, and how often a single token is (what the
        decoder is fed); plus each context classifier's accuracy."""
        x, y, context_y = batch_of(chosen)
        pred = projector(x)
        pooled_right, token_right = {}, {}
        for k, slot in enumerate(SLOTS):
            options = torch.tensor(choices[k])
            at = (slot_of == k) & ~is_name
            table_options = F.normalize(table[options], dim=-1)
            picked = options[(F.normalize(pred[:, at].mean(1), dim=-1) @ table_options.T).argmax(-1)]
            pooled_right[slot] = round(float((picked == y[:, at][:, 0]).float().mean()), 3)
            each = options[(F.normalize(pred[:, at], dim=-1) @ table_options.T).argmax(-1)]
            token_right[slot] = round(float((each == y[:, at]).float().mean()), 3)
        for g, logits in enumerate(projector.context_logits(x)):
            known = context_y[:, g] >= 0
            pooled_right[f"{groups[g]} (context head)"] = round(
                float((logits.argmax(-1) == context_y[:, g])[known].float().mean()), 3)
        return pooled_right, token_right

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
    val_slots, val_tokens = slot_accuracy(val)
    report = {"clips": len(names), "steps": steps, "loss_first": history[0] if history else None,
              "loss_last": history[-1] if history else None, "val_loss": val_loss,
              "val_slot_accuracy": val_slots, "val_token_accuracy": val_tokens,
              "train_slot_accuracy": slot_accuracy(train[:len(val) * 2])[0],
              "slot_choices": {slot: len(c) for slot, c in zip(SLOTS, choices)}, "labelled": labelled,
              "context": context, "seconds": round(time.time() - started, 1)}
    if hear_genre:
        if "style" not in groups:
            raise InputError("the genre hint needs the clip context, whose classifier hears the genre: use --context clip "
                             "or turn the hint off (--no-hear-genre)")
        style = SLOTS.index("style")
        word_of = {slot_ids[n][style]: slot_words(labels[n])[style] for n in names}
        model.cfg.heard_genre_group = groups.index("style")
        model.cfg.heard_genre_words = tuple(word_of[token] for token in choices[style])  # in class order
    if word_readout:
        model.cfg.audio_vocabulary = tuple(int(w) for w in words)
        model.cfg.audio_vocabulary_temperature = temperature
    save_checkpoint(model, out, trained=False,
                    notes=f"{header.notes}; align steps={steps}{'; word read-out' if word_readout else ''}"
                          f"{'; labelled slots' if labelled else ''}{f'; {context} context' if groups else ''}"
                          f"{'; genre hint' if hear_genre else ''}")
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.align", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--init", required=True, help="checkpoint with the (pretrained) encoder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.05, help="of the cosine read-out in the loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", type=Path, default=None, help="feature cache file (shared with training.train)")
    p.add_argument("--word-readout", action="store_true",
                   help="feed the decoder mixtures of the slot words' embeddings (TinyMUConfig.audio_vocabulary)")
    p.add_argument("--labelled", action="store_true", help="precede each slot's value word with its name word")
    p.add_argument("--context", choices=tuple(CONTEXT_KINDS), default="none",
                   help="clip-level posteriors the projector also reads (classifiers trained here): "
                        "the key, or every slot's attribute")
    p.add_argument("--hear-genre", action="store_true",
                   help="state the genre the clip context hears in front of each prompt (needs --context clip)")
    a = p.parse_args(argv)
    print(json.dumps(align(a.data, a.init, a.out, steps=a.steps, batch=a.batch, lr=a.lr,
                           temperature=a.temperature, seed=a.seed,
                           features_file=a.features, word_readout=a.word_readout, labelled=a.labelled,
                           context=a.context, hear_genre=a.hear_genre), indent=1))


if __name__ == "__main__":
    main()
