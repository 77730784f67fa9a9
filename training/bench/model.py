"""Benchmark of TinyMU inference on this machine: `python -m training.bench model`.

Measures, for a 10 s and a 30 s clip: encoder time, prefill, decoding speed, a
4-option multiple-choice question, peak memory and the weight load time from the
cache; and, in the same run, the reference approach (every generated token
recomputes the whole padded sequence without a KV cache; every option scored by
its own full forward, encoder included), with the speed-up as a ratio.
The weights are the official sizes (SmolLM2-135M from the offline GGUF and an
official-size encoder); speed does not depend on whether they are trained.

`--memory` measures instead the peak resident memory of the default engine per decoder
setting (float32, int8), each in a fresh process: load, one 4-option question on a 10 s
clip, 32 generated tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

QUESTION = "Which instrument plays the melody in this clip?"
OPTIONS = ["an acoustic piano", "a distorted electric guitar", "a string quartet", "a brass section"]


def test_clip(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A chord of decaying harmonic tones with a pulse: music-like input made here."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    audio = np.zeros_like(t)
    for k, freq in enumerate((220.0, 277.2, 329.6)):
        audio += sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, 5)) / (k + 2)
    audio *= 0.6 + 0.4 * np.exp(-((t * 2) % 1.0) * 6)  # two pulses per second
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best of `repeats` wall-clock runs: on a shared machine the minimum is the least noisy."""
    times, result = [], None
    for _ in range(repeats):
        begin = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - begin)
    return min(times), result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(seconds_list=(10.0, 30.0), new_tokens: int = 32, reference_tokens: int = 8, repeats: int = 3,
        checkpoint: str = "preset:official", int8: bool = True) -> dict:
    from model.lm import decoding
    from model.lm.engine import load_engine
    from model.lm.muchomusic import build_prompt

    begin = time.perf_counter()
    engine = load_engine(checkpoint, device="cpu")
    load_s = time.perf_counter() - begin
    model = engine.model
    prompt = engine._tokens(QUESTION)
    mc_prompt = engine._tokens(build_prompt(QUESTION, OPTIONS))
    options = [engine._tokens(o) for o in OPTIONS]
    results = {"load_s": load_s, "threads": torch.get_num_threads(), "repeats": repeats, "clips": {}}
    engine.choose(test_clip(2.0), QUESTION, OPTIONS)  # warm-up
    clips = {f"{s:g}s": test_clip(s) for s in seconds_list}
    prepared = {}
    # Our path first for every clip, so its peak memory is not the reference's.
    for name, clip in clips.items():
        wave = torch.from_numpy(clip).unsqueeze(0)
        row: dict[str, float] = {}
        with torch.inference_mode():
            row["encoder_s"], tokens = timed(lambda: model.encode_audio(wave), repeats)
            embeds = model.audio_embeddings(tokens)[0]
            prefix = model.build_prefix([embeds], [prompt])
            start_pos = torch.tensor([model.target_start(embeds.shape[0])])
            row["audio_tokens"] = embeds.shape[0]
            row["prefill_s"], _ = timed(lambda: decoding.generate(model, prefix, start_pos, max_new_tokens=1,
                                                                  stop_ids=()), repeats)
            gen_s, _ = timed(lambda: decoding.generate(model, prefix, start_pos, max_new_tokens=new_tokens,
                                                       stop_ids=()), max(1, repeats - 1))
            row["tokens_per_s"] = (new_tokens - 1) / max(gen_s - row["prefill_s"], 1e-9)
            row["mc4_s"], _ = timed(lambda: engine.choose(clip, QUESTION, OPTIONS), repeats)
        results["clips"][name] = row
        prepared[name] = (wave, embeds)
    results["peak_rss_mb"] = peak_rss_mb()
    if int8:
        # The same clips with int8 decoder weights (CPU option), loaded the way the tools load
        # them (quantised while streaming in): decoding and multiple choice.
        int8_engine = load_engine(checkpoint, device="cpu", quantize="int8")
        for name, (wave, embeds) in prepared.items():
            row = results["clips"][name]
            with torch.inference_mode():
                qm = int8_engine.model
                q_embeds = qm.audio_embeddings(qm.encode_audio(wave))[0]
                prefix = qm.build_prefix([q_embeds], [prompt])
                start_pos = torch.tensor([qm.target_start(q_embeds.shape[0])])
                pre_s, _ = timed(lambda: decoding.generate(qm, prefix, start_pos, max_new_tokens=1, stop_ids=()),
                                 repeats)
                gen_s, _ = timed(lambda: decoding.generate(qm, prefix, start_pos, max_new_tokens=new_tokens,
                                                           stop_ids=()), max(1, repeats - 1))
                row["int8_tokens_per_s"] = (new_tokens - 1) / max(gen_s - pre_s, 1e-9)
                row["int8_mc4_s"], _ = timed(lambda: int8_engine.choose(clips[name], QUESTION, OPTIONS), repeats)
    # The reference approach: same weights, same run.
    for name, (wave, embeds) in prepared.items():
        row = results["clips"][name]
        with torch.inference_mode():
            ref_s, _ = timed(lambda: decoding.generate_reference(model, embeds.unsqueeze(0), prompt,
                                                                 max_new_tokens=reference_tokens, stop_ids=()), 1)
            row["ref_tokens_per_s"] = reference_tokens / ref_s
            row["ref_mc4_s"], _ = timed(lambda: decoding.score_options_reference(model, wave, mc_prompt, options), 1)
        row["mc4_speedup"] = row["ref_mc4_s"] / row["mc4_s"]
        row["decode_speedup"] = row["tokens_per_s"] / row["ref_tokens_per_s"]
    results["peak_rss_with_reference_mb"] = peak_rss_mb()
    return results


MEMORY_SETTINGS = {"float32": None, "int8": "int8"}  # table label -> load_engine(quantize=...)


def memory_probe(checkpoint: str | None, quantize: str | None) -> dict:
    """The memory scenario in this process: the peak RSS after loading, and after answering."""
    from model.lm.engine import load_engine

    begin = time.perf_counter()
    engine = load_engine(checkpoint, device="cpu", quantize=quantize)
    result = {"load_s": time.perf_counter() - begin, "peak_after_load_mb": peak_rss_mb()}
    clip = test_clip(10.0)
    engine.choose(clip, QUESTION, OPTIONS)
    engine.answer(clip, QUESTION, max_new_tokens=32)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_memory(checkpoint: str | None, runs: int, threads: int) -> dict:
    """Each setting `runs` times, every run in a fresh interpreter: the peak of a process
    never goes down, so measuring two settings in one process would show the larger."""
    results = {"checkpoint": checkpoint or "default", "runs": runs, "settings": {}}
    for label, quantize in MEMORY_SETTINGS.items():
        command = [sys.executable, "-m", "training.bench.model", "--probe", quantize or "none",
                   "--threads", str(threads)] + (["--checkpoint", checkpoint] if checkpoint else [])
        probes = []
        for _ in range(runs):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"memory probe {label} failed:\n{done.stderr[-2000:]}")
            probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results["settings"][label] = probes
    return results


def render_memory(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    settings = results["settings"]
    baseline = statistics.median(p["peak_rss_mb"] for p in settings["float32"])
    table = Table(title=f"TinyMU peak resident memory (ru_maxrss), checkpoint {results['checkpoint']}, "
                        f"load + 4-option MC on 10 s + 32 tokens, fresh process per run")
    for column in ("decoder weights", "peak RSS per run (MB)", "median (MB)", "vs float32",
                   "peak after load (MB)", "load (s)"):
        table.add_column(column, justify="left" if column == "decoder weights" else "right")
    for label, probes in settings.items():
        peak = statistics.median(p["peak_rss_mb"] for p in probes)
        table.add_row(label, ", ".join(f"{p['peak_rss_mb']:.0f}" for p in probes), f"{peak:.0f}",
                      f"{peak / baseline:.2f}x", f"{statistics.median(p['peak_after_load_mb'] for p in probes):.0f}",
                      f"{statistics.median(p['load_s'] for p in probes):.2f}")
    Console().print(table)


def render(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"TinyMU inference, CPU, {results['threads']} threads, official sizes, "
                        f"best of {results['repeats']}")
    table.add_column("metric")
    clips = list(results["clips"])
    for name in clips:
        table.add_column(name, justify="right")
    rows = [
        ("audio tokens", "audio_tokens", "{:.0f}"),
        ("encoder (s)", "encoder_s", "{:.3f}"),
        ("prefill (s)", "prefill_s", "{:.3f}"),
        ("decode, KV cache (tok/s)", "tokens_per_s", "{:.1f}"),
        ("decode, reference (tok/s)", "ref_tokens_per_s", "{:.2f}"),
        ("  speed-up", "decode_speedup", "{:.1f}x"),
        ("decode, int8 option (tok/s)", "int8_tokens_per_s", "{:.1f}"),
        ("4-option MC, ours (s)", "mc4_s", "{:.3f}"),
        ("4-option MC, int8 option (s)", "int8_mc4_s", "{:.3f}"),
        ("4-option MC, reference (s)", "ref_mc4_s", "{:.3f}"),
        ("  speed-up", "mc4_speedup", "{:.1f}x"),
    ]
    for label, key, fmt in rows:
        if key in results["clips"][clips[0]]:
            table.add_row(label, *(fmt.format(results["clips"][c][key]) for c in clips))
    console = Console()
    console.print(table)
    console.print(f"weights load from cache: {results['load_s']:.2f} s; peak RSS of our path "
                  f"{results['peak_rss_mb']:.0f} MB (with the reference runs: {results['peak_rss_with_reference_mb']:.0f} MB)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.bench model", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated with the KV cache")
    parser.add_argument("--reference-tokens", type=int, default=8, help="tokens generated the reference way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default=None,
                        help="weights to load (default: preset:official for speed, the engine default for --memory)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 (CPU) option rows")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory", action="store_true", help="measure peak memory per decoder setting instead")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per setting with --memory")
    parser.add_argument("--probe", choices=["none", "int8"], help=argparse.SUPPRESS)  # one --memory run
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(memory_probe(args.checkpoint, None if args.probe == "none" else args.probe)))
        return {}
    if args.memory:
        results = run_memory(args.checkpoint, args.runs, args.threads)
        render_memory(results)
    else:
        results = run(tuple(args.seconds), args.tokens, args.reference_tokens, args.repeats,
                      args.checkpoint or "preset:official", not args.no_int8)
        render(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
