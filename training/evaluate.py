"""Evaluate a TinyMU checkpoint on a held-out QA split, beside blind and text-only baselines.

    python -m training.evaluate --checkpoint model/lm/shipped/tinymu-small.safetensors --data .cache/data

For every record of the split (default `test.jsonl`) and every condition:

- `audio`: the clip itself;
- `silence` / `noise`: the blind baselines, all zeros / seeded white noise in place of the clip;
- `text_only`: the same model with no audio tokens at all;
- `measurements_only`: silence in place of the clip, but the clip's own DSP measurements
  in the prompt (what the measurement sentence alone is worth);
- `smollm2`: the untouched SmolLM2 decoder the model started from, text only.

For a model trained to read them (`reads_measurements`; or with `--measure`), every
prompt starts with the DSP measurements of the audio that condition feeds the model
(`model.lm.measurements`), as the agent tools do:
the clip's own for `audio`, the noise's for `noise`, none for `silence` (nothing to
measure) and the text-only conditions. Measurements are cached in DATA/measurements/VERSION/.

Scores: yes/no and open answers are right when they state the true value
(`training.qa.binary_answer`, `open_answer_is_right`); multiple choice is scored
two ways, the MuChoMusic protocol (official prompt with one in-context example,
generation, official scorer; instruction-following rate reported) and option
log-likelihood (`engine.choose(method="loglik")`); captions with BLEU-4 and
ROUGE-L F1 against the reference caption. Accuracy is reported by question
type and by attribute; profile questions ("a fast piece in 3/4 time") also
credit each attribute they pair. The text-only "answer from wording" students
of `training/wording_baseline.py` are run in the same go when `train.jsonl`
is beside the split.

Writes `eval_results.json`, `eval_results.md` (tables) and `eval_accuracy.png`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from tqdm import tqdm

from model.errors import InputError
from model.lm.measurements import Measurements
from model.lm.prompts import with_measurements
from training.dataset import load_clip
from training.qa import (
    LETTERS,
    QARecord,
    binary_answer,
    load_records,
    measured_prompt,
    open_answer_is_right,
    says_unsure,
)

CONDITIONS = ("audio", "silence", "noise", "measurements_only", "text_only", "smollm2")
CHANCE = {"binary": 0.5, "multiple_choice/loglik": 0.25, "multiple_choice/muchomusic": 0.25}
NOISE_RMS = 0.1

app = typer.Typer(add_completion=False)


# --- caption metrics --------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9#/]+", text.lower())


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (one reference each, uniform weights, brevity penalty, +1 smoothing of n>1 precisions)."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = _tokens(hyp), _tokens(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            h_grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            r_grams = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, r_grams[g]) for g, c in h_grams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    logs = [math.log(matches[0] / totals[0])]
    logs += [math.log((matches[n] + 1) / (totals[n] + 1)) for n in range(1, 4)]
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(sum(logs) / 4)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 from the longest common subsequence of words."""
    h, r = _tokens(hypothesis), _tokens(reference)
    if not h or not r:
        return 0.0
    previous = [0] * (len(r) + 1)
    for word in h:
        current = [0]
        for j, other in enumerate(r):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# --- conditions ---------------------------------------------------------------------------------


def _text_only(engine):
    """The same engine with zero audio tokens: the LM sees only [separator][prompt]."""
    from model.lm.engine import MusicLM
    from model.lm.prompts import NOTHING_HEARD, HeardGenre

    class TextOnlyLM(MusicLM):
        def _audio_embeds(self, audio: np.ndarray) -> tuple[torch.Tensor, HeardGenre]:
            return torch.zeros(0, self.model.cfg.lm.hidden_size, device=self.device, dtype=self.dtype), NOTHING_HEARD

    clone = object.__new__(TextOnlyLM)
    clone.__dict__.update(engine.__dict__)
    return clone


def _base_smollm2(engine):
    """The decoder the checkpoint started from (e.g. SmolLM2-135M), untouched and text only."""
    import copy

    from model.lm.engine import MusicLM
    from model.lm.network import build_model

    cfg = copy.deepcopy(engine.model.cfg)
    cfg.lora_rank = 0
    base = MusicLM(build_model(cfg), engine.tokenizer, trained=False, checkpoint=None, device=str(engine.device),
                   max_audio_s=engine.max_audio_s, name="SmolLM2 (text only)")
    return _text_only(base)


def condition_engine(engine, condition: str):
    if condition in ("audio", "silence", "noise", "measurements_only"):
        return engine
    if condition == "text_only":
        return _text_only(engine)
    if condition == "smollm2":
        return _base_smollm2(engine)
    raise InputError(f"unknown condition {condition!r}; choose from {list(CONDITIONS)}")


def condition_audio(condition: str, clip: Callable[[str], np.ndarray], seed: int) -> Callable[[str], np.ndarray]:
    if condition in ("silence", "measurements_only"):
        return lambda name: np.zeros_like(clip(name))
    if condition == "noise":
        def noise(name: str) -> np.ndarray:
            rng = np.random.default_rng([seed, sum(name.encode())])
            return (rng.standard_normal(len(clip(name))) * NOISE_RMS).astype(np.float32)
        return noise
    return clip


class Measurer:
    """DSP measurements of what a condition feeds the model, cached in a JSON file per condition and
    analyzer version (a new version of the decision code measures again)."""

    def __init__(self, cache_dir: Path, condition: str, audio: Callable[[str], np.ndarray], seed: int):
        from model.dsp.analyzer import ANALYSIS_VERSION

        self.audio = audio
        name = f"{condition}-{seed}.json" if condition == "noise" else f"{condition}.json"
        self.file = cache_dir / ANALYSIS_VERSION / name
        self.known: dict[str, dict] = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self._analyzer = None

    def __call__(self, name: str) -> Measurements:
        if name not in self.known:
            from model.audio import AudioClip
            from model.dsp.analyzer import MusicAnalyzer

            self._analyzer = self._analyzer or MusicAnalyzer()
            analysis = self._analyzer.analyze(AudioClip.from_samples(self.audio(name), 16000))
            self.known[name] = Measurements.from_analysis(analysis).to_json()
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text(json.dumps(self.known))
        return Measurements(**self.known[name])


def condition_measurements(condition: str, audio: Callable[[str], np.ndarray], root: Path,
                           seed: int) -> Callable[[str], Measurements | None]:
    """What the measurement sentence says under `condition`: the DSP reading of the audio it feeds the
    model (the clip's own for measurements_only; nothing without audio)."""
    if condition in ("text_only", "smollm2", "silence"):
        return lambda name: None
    source = "audio" if condition == "measurements_only" else condition
    return Measurer(root / "measurements", source, audio, seed)


# --- running -----------------------------------------------------------------------------------


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_condition(engine, records: Sequence[QARecord], audio: Callable[[str], np.ndarray], *, batch_size: int = 8,
                  max_new_tokens: int = 48, caption_tokens: int = 96, desc: str = "",
                  measured: Callable[[str], Measurements | None] = lambda name: None) -> list[dict[str, Any]]:
    """One outcome dict per (record, method): task, attribute, right (or caption scores), answer text.
    `measured` gives the measurements stated in each clip's prompts (None: no sentence)."""
    outcomes: list[dict[str, Any]] = []
    progress = tqdm(total=len(records), desc=desc, unit="q", leave=False)
    free_text = [r for r in records if r.task in ("binary", "open_qa", "captioning")]
    for batch in _batches(free_text, batch_size):
        tokens = caption_tokens if any(r.task == "captioning" for r in batch) else max_new_tokens
        prompts = [measured_prompt(r.task, r.input_text, r.meta, measured(r.file_name)) for r in batch]
        answers = engine.answer_batch([(audio(r.file_name), p) for r, p in zip(batch, prompts)], max_new_tokens=tokens)
        for record, text in zip(batch, answers):
            meta = record.meta or {}
            outcome = {"task": record.task, "attribute": meta.get("attribute", "-"), "answer": text}
            if record.task == "binary":
                outcome["right"] = binary_answer(text) == meta.get("answer", binary_answer(record.target_text))
            elif record.task == "open_qa" and "value" in meta:
                outcome["right"] = open_answer_is_right(meta, text)
                outcome["unsure"] = says_unsure(text)
            elif record.task == "captioning":
                outcome.update(reference=record.target_text, rouge_l=rouge_l(text, record.target_text))
            outcomes.append(outcome)
        progress.update(len(batch))
    for record in records:
        meta = record.meta or {}
        if record.task != "multiple_choice" or "options" not in meta:
            continue
        wave = audio(record.file_name)
        question = with_measurements(meta["question"], measured(record.file_name))
        for method, label in (("loglik", "multiple_choice/loglik"), ("generate", "multiple_choice/muchomusic")):
            choice = engine.choose(wave, question, list(meta["options"]), method=method)
            outcome = {"task": label, "attribute": meta["attribute"], "right": choice.index == meta["answer"],
                       "answered": choice.index is not None,
                       "answer": choice.raw_answer if method == "generate" else (LETTERS[choice.index])}
            outcomes.append(outcome)
            if "parts" in meta and choice.index is not None:
                chosen, truth = meta["parts"][choice.index], meta["parts"][meta["answer"]]
                for attribute in truth:  # a profile choice also says something about each attribute it pairs
                    outcomes.append({"task": label + "/part", "attribute": attribute,
                                     "right": chosen[attribute] == truth[attribute]})
            elif "parts" in meta:
                for attribute in meta["parts"][meta["answer"]]:
                    outcomes.append({"task": label + "/part", "attribute": attribute, "right": False})
        progress.update(1)
    progress.close()
    return outcomes


def summarize(outcomes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy by question type, by attribute within each type, caption metrics, instruction following."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    by_attribute: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        if "right" in o:
            by_type[o["task"]].append(bool(o["right"]))
            by_attribute[o["attribute"]][o["task"]].append(bool(o["right"]))
    summary: dict[str, Any] = {
        "accuracy": {t: float(np.mean(v)) for t, v in sorted(by_type.items()) if not t.endswith("/part")},
        "n": {t: len(v) for t, v in sorted(by_type.items())},
        "by_attribute": {a: {t: float(np.mean(v)) for t, v in sorted(types.items())}
                         for a, types in sorted(by_attribute.items())},
        # One number per attribute: every yes/no, open and log-likelihood choice question that asks about it.
        "attribute_accuracy": {
            a: float(np.mean([x for t, v in types.items() if t in ("binary", "open_qa", "multiple_choice/loglik",
                                                                    "multiple_choice/loglik/part") for x in v]))
            for a, types in sorted(by_attribute.items())
            if any(t in types for t in ("binary", "open_qa", "multiple_choice/loglik", "multiple_choice/loglik/part"))
        },
    }
    doubts: dict[str, list[bool]] = defaultdict(list)
    for o in outcomes:
        if "unsure" in o:
            doubts[o["attribute"]].append(o["unsure"])
    if doubts:  # how often open answers say they are unsure, per attribute (the rest state it plainly)
        summary["unsure"] = {a: float(np.mean(v)) for a, v in sorted(doubts.items())}
    generated = [o for o in outcomes if o["task"] == "multiple_choice/muchomusic"]
    if generated:
        summary["muchomusic_instruction_following"] = float(np.mean([o["answered"] for o in generated]))
    captions = [o for o in outcomes if o["task"] == "captioning"]
    if captions:
        summary["captioning"] = {
            "bleu4": bleu4([o["answer"] for o in captions], [o["reference"] for o in captions]),
            "rouge_l": float(np.mean([o["rouge_l"] for o in captions])),
            "n": len(captions),
        }
    return summary


def evaluate(engine, records: Sequence[QARecord], root: str | Path, *, conditions: Sequence[str] = CONDITIONS,
             seed: int = 0, batch_size: int = 8, audio_seconds: float | None = None, max_new_tokens: int = 48,
             caption_tokens: int = 96, measure: bool | None = None) -> dict[str, Any]:
    """Run every condition over `records` (audio under `root`) and summarise each; with `measure` (default:
    when the model reads them), prompts start with the DSP measurements of the audio each condition feeds it."""
    if measure is None:
        measure = engine.info().reads_measurements
    seconds = audio_seconds or engine.model.cfg.audio_seconds
    clip = lru_cache(maxsize=512)(lambda name: load_clip(Path(root) / name, seconds))
    results: dict[str, Any] = {"conditions": {}, "model": engine.info().model_dump(), "records": len(records)}
    for condition in conditions:
        model = condition_engine(engine, condition)
        audio = condition_audio(condition, clip, seed)
        measured_audio = clip if condition == "measurements_only" else audio
        measured = condition_measurements(condition, measured_audio, Path(root), seed) if measure else lambda name: None
        outcomes = run_condition(model, records, audio, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 caption_tokens=caption_tokens, desc=condition, measured=measured)
        results["conditions"][condition] = summarize(outcomes)
    results["chance"] = CHANCE
    results["measured"] = measure
    return results


# --- reporting ----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    conditions = list(results["conditions"])
    head = "| | chance | " + " | ".join(conditions) + " |\n|---|---|" + "---|" * len(conditions) + "\n"
    rows = []
    first = results["conditions"][conditions[0]]
    for task in first["accuracy"]:
        cells = [_pct(results["conditions"][c]["accuracy"].get(task)) for c in conditions]
        chance = _pct(CHANCE.get(task))
        rows.append(f"| {task} (n={first['n'][task]}) | {chance} | " + " | ".join(cells) + " |")
    if "muchomusic_instruction_following" in first:
        cells = [_pct(results["conditions"][c].get("muchomusic_instruction_following")) for c in conditions]
        rows.append("| MuChoMusic instruction following | - | " + " | ".join(cells) + " |")
    if "captioning" in first:
        for metric in ("bleu4", "rouge_l"):
            cells = [_pct(results["conditions"][c].get("captioning", {}).get(metric)) for c in conditions]
            rows.append(f"| caption {metric} | - | " + " | ".join(cells) + " |")
    for attribute in first["attribute_accuracy"]:
        cells = [_pct(results["conditions"][c]["attribute_accuracy"].get(attribute)) for c in conditions]
        rows.append(f"| attribute: {attribute} | - | " + " | ".join(cells) + " |")
    for attribute in first.get("unsure", {}):
        cells = [_pct(results["conditions"][c].get("unsure", {}).get(attribute)) for c in conditions]
        rows.append(f"| open answers saying unsure: {attribute} | - | " + " | ".join(cells) + " |")
    text = head + "\n".join(rows) + "\n"
    wording = results.get("wording_baselines")
    if wording:
        text += ("\nAnswer-from-wording students (text classifiers trained on train.jsonl, no audio), "
                 f"multiple choice, n={int(wording['all']['n'])}: option prior {_pct(wording['all']['option_prior'])} %, "
                 f"logistic regression {_pct(wording['all']['logistic_regression'])} % (chance 25 %).\n")
    return text


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(results["conditions"])
    first = results["conditions"][conditions[0]]
    labels = list(first["accuracy"]) + [f"attr: {a}" for a in first["attribute_accuracy"]]
    width = 0.8 / len(conditions)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(labels) * len(conditions) / 2), 4.5))
    x = np.arange(len(labels))
    for i, condition in enumerate(conditions):
        summary = results["conditions"][condition]
        values = [summary["accuracy"].get(t, np.nan) for t in first["accuracy"]]
        values += [summary["attribute_accuracy"].get(a, np.nan) for a in first["attribute_accuracy"]]
        ax.bar(x + i * width - 0.4 + width / 2, 100 * np.array(values, dtype=float), width, label=condition)
    ax.axhline(25, color="grey", linestyle=":", linewidth=1)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"TinyMU on the held-out synthetic set ({results['model'].get('checkpoint') or 'untrained'})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval_results.json", "markdown": out / "eval_results.md", "plot": out / "eval_accuracy.png"}
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["markdown"].write_text(markdown_table(results))
    plot(results, paths["plot"])
    return paths


def limit_per_task(records: Sequence[QARecord], limit: int | None) -> list[QARecord]:
    """The first `limit` records of each (task, attribute), so a quick run still covers every attribute."""
    if not limit:
        return list(records)
    seen: Counter = Counter()
    kept = []
    for record in records:
        key = (record.task, (record.meta or {}).get("attribute"))
        if seen[key] < limit:
            seen[key] += 1
            kept.append(record)
    return kept


@app.command()
def main(
    checkpoint: str = typer.Option(..., help="checkpoint file, official tinymu.pt, or preset:NAME (untrained)"),
    data: Path = typer.Option(..., help="a directory made by `python -m training.dataset build`"),
    split: str = typer.Option("test", help="which split's records to score"),
    out: Path = typer.Option(None, help="where to write the results (default: DATA/eval)"),
    conditions: str = typer.Option(",".join(CONDITIONS), help="comma-separated subset of " + ", ".join(CONDITIONS)),
    limit: int = typer.Option(0, help="at most this many records per task and attribute (0: all)"),
    tasks: str = typer.Option("", help="comma-separated tasks to score (default: all)"),
    device: str = typer.Option("auto"),
    batch_size: int = typer.Option(8),
    max_new_tokens: int = typer.Option(48, help="answer length cap for yes/no and open questions"),
    seed: int = typer.Option(0),
    measure: bool = typer.Option(None, "--measure/--no-measure", show_default="when the model reads them",
                                 help="start prompts with the DSP measurements of the audio, as the tools do"),
) -> None:
    """Score a checkpoint on a held-out split under every condition and write tables and a plot."""
    from model.lm.engine import load_engine

    records = load_records(data / f"{split}.jsonl")
    if tasks:
        records = [r for r in records if r.task in tasks.split(",")]
    records = limit_per_task(records, limit)
    engine = load_engine(checkpoint, device=device)
    results = evaluate(engine, records, data, conditions=[c for c in conditions.split(",") if c], seed=seed,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, measure=measure)
    train_path = data / "train.jsonl"
    if train_path.exists():
        from training.wording_baseline import wording_baselines

        results["wording_baselines"] = wording_baselines(load_records(train_path), load_records(data / f"{split}.jsonl"))
    paths = write_report(results, out or data / "eval")
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    app()
