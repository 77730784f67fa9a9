"""What the checkpoint's clip context hears: its genre classifier on a real-recording set.

The projector's clip context (`training.align`, `--context clip`) holds a genre classifier
over the encoder's mean token; its posterior is what the decoder gets to know of a clip's
genre. Scoring that classifier directly, on every clip of a held-out set and with no
language model in the way, measures "genre from the audio" on all 138 clips instead of
the 15 genre questions of the gate, in seconds:

    python -m training.context_probe --checkpoint .cache/ship23/run/tinymu.safetensors \\
        --train-data .cache/ship23/data --data .cache/real-heldout

Each clip's genre is the one of the set's genres (plus the distractor the questions add)
to which the classifier gives the most probability; chance is one over their number.

`--teacher REAL_TRAIN` also scores the tagger the encoder distils (`training.tagger`): a
logistic regression on its 100 tag probabilities, fitted on the train-eligible real clips
(`real_sets build --split train`) and scored on the same set; both folders need a
`tags.json`. It says how much genre the teacher's outputs carry across sources.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch

from model.errors import InputError
from model.lm.checkpoints import load_checkpoint
from model.lm.smollm2 import load_tokenizer
from training.align import CONTEXT_KINDS, SLOTS, clip_labels_in, slot_token_ids
from training.features import encode_clips
from training.labels import ClipLabels, read_labels
from training.real_sets import EXTRA_STYLE_DISTRACTORS


@torch.no_grad()
def genre_probe(checkpoint: str, train_data: Path, data: Path) -> dict:
    model, _ = load_checkpoint(checkpoint)
    groups = CONTEXT_KINDS["clip"]
    if len(model.cfg.projector_context_classes) != len(groups):
        raise InputError(f"{checkpoint} has no clip context (align it with --context clip)")
    tokenizer = load_tokenizer(model.cfg.lm_weights)
    # The classifier's classes are the style words of the clips it was aligned on, in token order.
    style = SLOTS.index("style")
    trained = clip_labels_in(train_data)
    classes = sorted({slot_token_ids(tokenizer, clip)[style] for clip in trained.values()})
    clips = [c for c in read_labels(data, "real") if c.style]
    genres = sorted({c.style for c in clips} | set(EXTRA_STYLE_DISTRACTORS))
    token_of = {g: slot_token_ids(tokenizer, ClipLabels(file_name="", style=g))[style] for g in genres}
    missing = [g for g, t in token_of.items() if t not in classes]
    if missing:
        raise InputError(f"the checkpoint's genre classifier never saw {', '.join(missing)}")
    columns = torch.tensor([classes.index(token_of[g]) for g in genres])
    with tempfile.TemporaryDirectory() as tmp:
        features = encode_clips(model.encoder, data, [c.file_name for c in clips], Path(tmp) / "f.safetensors",
                                seconds=model.cfg.audio_seconds)
    right, seen, confusion = Counter(), Counter(), defaultdict(Counter)
    for clip in clips:
        logits = model.projector.context_logits(features[clip.file_name].float()[None])[groups.index("style")][0]
        guess = genres[int(logits[columns].argmax())]
        package = clip.file_name.split("/")[0]
        seen[package] += 1
        right[package] += guess == clip.style
        confusion[clip.style][guess] += 1
    return {"checkpoint": checkpoint, "clips": len(clips), "genres": genres, "chance": round(1 / len(genres), 3),
            "accuracy": round(sum(right.values()) / len(clips), 3),
            "by_package": {p: f"{right[p]}/{seen[p]}" for p in sorted(seen)},
            "confusion": {truth: dict(guesses) for truth, guesses in confusion.items()}}


def teacher_probe(real_train: Path, data: Path, steps: int = 500) -> dict:
    """Genre from the tagger's probabilities: a linear classifier fitted on `real_train`'s clips."""
    def tagged(folder: Path):
        tags_file = folder / "tags.json"
        if not tags_file.is_file():
            raise InputError(f"{tags_file} is missing: run `python -m training.tagger {folder}` first")
        probs = json.loads(tags_file.read_text())["clips"]
        clips = [c for c in read_labels(folder, "real") if c.style and c.file_name in probs]
        return torch.tensor([probs[c.file_name] for c in clips]), [c.style for c in clips]

    train_x, train_styles = tagged(real_train)
    test_x, test_styles = tagged(data)
    genres = sorted(set(train_styles))
    head = torch.nn.Linear(train_x.shape[1], len(genres))
    opt = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-3)
    y = torch.tensor([genres.index(g) for g in train_styles])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(train_x), y).backward()
        opt.step()
    with torch.no_grad():
        guesses = [genres[i] for i in head(test_x).argmax(-1).tolist()]
    confusion = defaultdict(Counter)
    for truth, guess in zip(test_styles, guesses):
        confusion[truth][guess] += 1
    return {"teacher_clips": len(test_styles), "teacher_genres": genres,
            "teacher_accuracy": round(sum(t == g for t, g in zip(test_styles, guesses)) / len(test_styles), 3),
            "teacher_confusion": {truth: dict(g) for truth, g in confusion.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.context_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--train-data", type=Path, required=True, help="the data folder the checkpoint was aligned on")
    p.add_argument("--data", type=Path, required=True, help="a real-recording set (`training.real_sets build`)")
    p.add_argument("--teacher", type=Path, help="the train-eligible real set: also score the tagger's outputs")
    args = p.parse_args(argv)
    report = genre_probe(args.checkpoint, args.train_data, args.data)
    if args.teacher:
        report |= teacher_probe(args.teacher, args.data)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
