"""Compare LM-stage settings quickly: train each briefly, score validation multiple choice.

    python -m training.sweep --data DIR --init ALIGNED.safetensors --features FEATURES.safetensors \\
        --out DIR --run '{"name": "lora"}' --run '{"name": "full", "mode": "full", "lr": 1e-4}'

Why: the held-out evaluation (training.evaluate) decodes every clip and runs the encoder
and several protocols; comparing recipes needs only the LM stage, and the encoder tokens
of the validation clips are already in the feature cache that training uses. Each run is
`training.train` with the run's overrides of TrainConfig (defaults below: the shipped
LoRA recipe, 600 steps; "init" too), then every validation multiple-choice question whose clip is in
the cache is answered by option log-likelihood (`MusicLM.choose_embedded`) with the clip's
tokens and with the tokens of silence in their place, and (`--true-words`) with the exact
embeddings of the clip's true slot words (the labelled layout of training.align) in their
place: what the LM stage reads when the encoder is perfect, so it tells a decoder that
cannot read its audio words from an encoder that hears wrong. Validation clips are few (40 in
the shipped data), so differences of a few points are noise; confirm a winner with
training.evaluate on the test clips. Runs on a GPU when one is present (bf16).
Writes OUT/sweep.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import torch

from model.lm.engine import load_engine
from training.features import encoder_fingerprint, read_features
from training.qa import load_records
from training.ship import ShipConfig, lm_stage
from training.train import TrainConfig, train

# The LM stage exactly as `python -m training.ship` runs it, unless a run overrides a field.
DEFAULTS = {**lm_stage(ShipConfig()), "quiet": True}


def run_config(data: Path, init: str, features: Path, out: Path, run: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    settings = {k: v for k, v in run.items() if k != "name"}
    unknown = set(settings) - known
    if unknown:
        raise SystemExit(f"unknown TrainConfig fields in run {run.get('name')!r}: {sorted(unknown)}")
    if "tasks" in settings:
        settings["tasks"] = tuple(settings["tasks"])
    # A run may also start from another checkpoint ("init"), e.g. one without the word read-out.
    cfg = {"data": data, "init": init, "features": features, "eval_every": 10**9, "save_every": 10**9,
           "bf16": torch.cuda.is_available(), **DEFAULTS, **settings, "out": out / run["name"]}
    return TrainConfig(**cfg)


def true_word_embeddings(model, tokenizer, labels, n_tokens: int) -> torch.Tensor:
    """The decoder inputs of a perfect encoder: the clip's slot words in the labelled layout."""
    from training.align import true_word_ids

    ids = true_word_ids(tokenizer, labels, n_tokens)
    return model.lm.get_input_embeddings().weight[ids.to(model.lm.device)]


def score_validation(checkpoint: Path, data: Path, features: Path, split: str = "val", true_words: bool = False) -> dict:
    """Multiple-choice accuracy (%) on the cached clips of `split`, with their audio tokens and with
    silence (and with their true slot words)."""
    engine = load_engine(str(checkpoint))
    model = engine.model
    # The cache is only valid for this encoder: read_features returns {} for another one.
    cached = read_features(features, encoder_fingerprint(model.encoder), model.cfg.audio_seconds)
    records = [r for r in load_records(data / f"{split}.jsonl") if r.task == "multiple_choice" and r.file_name in cached]
    if not records:
        raise SystemExit(f"no {split} multiple-choice records with cached features in {features}")
    with torch.inference_mode():
        # Each clip (and silence) is projected once, not once per question.
        silence = model.encode_audio(torch.zeros(1, int(model.cfg.audio_seconds * model.cfg.encoder.sample_rate),
                                                 device=engine.device))
        blind = model.audio_embeddings(silence)[0]
        heard = {name: model.audio_embeddings(cached[name][None].to(engine.device, engine.dtype))[0]
                 for name in {r.file_name for r in records}}
        if true_words:
            from training.align import clip_labels_in

            labels = clip_labels_in(data, split)
            exact = {name: true_word_embeddings(model, engine.tokenizer, labels[name], blind.shape[0]) for name in heard}
    right = {"audio": 0, "silence": 0, **({"true_words": 0} if true_words else {})}
    for record in records:
        meta = record.meta
        inputs = [("audio", heard[record.file_name]), ("silence", blind)]
        if true_words:
            inputs.append(("true_words", exact[record.file_name]))
        for condition, embeds in inputs:
            choice = engine.choose_embedded(embeds, meta["question"], meta["options"])
            right[condition] += choice.index == meta["answer"]
    return {"n": len(records), **{c: round(100 * k / len(records), 1) for c, k in right.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--init", required=True, help="aligned checkpoint every run starts from")
    p.add_argument("--features", type=Path, required=True, help="the feature cache of the training clips")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--true-words", action="store_true",
                   help="also score with the true slot words in place of the audio (labelled layout)")
    p.add_argument("--run", action="append", required=True, type=json.loads,
                   help='JSON object: "name" plus TrainConfig overrides, e.g. {"name": "long", "max_steps": 1600}')
    a = p.parse_args(argv)
    results = []
    for run in a.run:
        started = time.time()
        summary = train(run_config(a.data, a.init, a.features, a.out, run))
        scores = score_validation(a.out / run["name"] / "tinymu.safetensors", a.data, a.features,
                                  true_words=a.true_words)
        results.append({"run": run, **scores, "train_s": summary["seconds"], "total_s": round(time.time() - started)})
        print(json.dumps(results[-1]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sweep.json").write_text(json.dumps(results, indent=1))
    print("\n| run | settings | val MC with audio | with silence | with true words | n | train s |\n"
          "|---|---|---|---|---|---|---|")
    for r in results:
        settings = {k: v for k, v in r["run"].items() if k != "name"}
        print(f"| {r['run']['name']} | {json.dumps(settings)} | {r['audio']} | {r['silence']} | "
              f"{r.get('true_words', '-')} | {r['n']} | {r['train_s']} |")


if __name__ == "__main__":
    main()
