"""Load benchmark of the MCP server over streamable HTTP (`python -m training.bench load`).

Starts `tinymu-mcp --http` as a real subprocess, then fires N concurrent
`analyze_clip` calls from N separate MCP clients: half on clips the server has
already analysed (answered from the cache) and half on clips it has never
seen (decoded and analysed by madmom). Reports failures, p50/p95/max latency
and throughput, beside a baseline measured in the same run: the same kinds of
calls made one at a time. It runs twice, on a server analysing in threads and
on one with DSP worker processes (`--dsp-workers`), and prints the ratios.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mcp import Client
from rich.console import Console
from rich.table import Table

from training.bench._mcp_http import start_mcp_http
from training.synth import write_song

console = Console(stderr=True)


@dataclass
class Call:
    kind: str  # "cached" or "new"
    seconds: float
    ok: bool
    error: str = ""


def render_clips(folder: Path, names: list[str], duration_s: float, seed0: int) -> list[Path]:
    """Render (or reuse) one synthetic clip per name; deterministic by seed."""
    paths = []
    for i, name in enumerate(names):
        path = folder / f"{name}.wav"
        if not path.exists():
            write_song(folder, seed=seed0 + i, duration_s=duration_s, name=name)
        paths.append(path)
    return paths


def start_server(root: Path, cache_dir: Path, max_concurrency: int, dsp_workers: int = 0) -> tuple[subprocess.Popen, str]:
    return start_mcp_http(root, {"TINYMU_CACHE_DIR": str(cache_dir)}, timeout_s=60.0,
                          extra_args=["--max-concurrency", str(max_concurrency), "--dsp-workers", str(dsp_workers),
                                      "--call-timeout", "600"])


async def timed_call(url: str, path: Path, kind: str) -> Call:
    start = time.perf_counter()
    try:
        async with Client(url, read_timeout_seconds=600) as client:
            result = await client.call_tool("analyze_clip", {"audio": str(path)})
        ok = not result.is_error
        error = "" if ok else result.content[0].text[:200]
    except Exception as exc:  # a failed call is a result of the benchmark, not a crash of it
        ok, error = False, f"{type(exc).__name__}: {exc}"
    return Call(kind, time.perf_counter() - start, ok, error)


async def sequential(url: str, jobs: list[tuple[Path, str]]) -> tuple[list[Call], float]:
    start = time.perf_counter()
    calls = [await timed_call(url, path, kind) for path, kind in jobs]
    return calls, time.perf_counter() - start


async def concurrent(url: str, jobs: list[tuple[Path, str]]) -> tuple[list[Call], float]:
    start = time.perf_counter()
    calls = await asyncio.gather(*(timed_call(url, path, kind) for path, kind in jobs))
    return list(calls), time.perf_counter() - start


def summarize(calls: list[Call], wall_s: float) -> dict:
    seconds = np.array([c.seconds for c in calls]) if calls else np.zeros(1)
    return {
        "calls": len(calls),
        "failures": sum(not c.ok for c in calls),
        "p50": float(np.percentile(seconds, 50)),
        "p95": float(np.percentile(seconds, 95)),
        "max": float(seconds.max()),
        "throughput": len(calls) / wall_s if wall_s else 0.0,
    }


def measure_server(clips_dir: Path, cached: list[Path], baseline_new: list[Path], fresh: list[Path],
                   calls: int, max_concurrency: int, dsp_workers: int) -> dict[str, tuple[list[Call], float]]:
    """Warm the cache, then the sequential baseline, then the concurrent load, on one fresh server."""
    n_cached = calls - len(fresh)
    with tempfile.TemporaryDirectory() as cache_dir:  # an empty cache: "new" clips are really new
        process, url = start_server(clips_dir, Path(cache_dir), max_concurrency, dsp_workers)
        try:
            warm, _ = asyncio.run(sequential(url, [(p, "warm") for p in cached]))
            if not all(c.ok for c in warm):
                raise RuntimeError(f"warm-up failed: {[c.error for c in warm if not c.ok]}")
            base_jobs = [(cached[i % len(cached)], "cached") for i in range(len(baseline_new))]
            base_jobs += [(p, "new") for p in baseline_new]
            baseline = asyncio.run(sequential(url, base_jobs))
            jobs = [(cached[i % len(cached)], "cached") for i in range(n_cached)] + [(p, "new") for p in fresh]
            load = asyncio.run(concurrent(url, jobs))
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {"sequential": baseline, "concurrent": load}


def run(calls: int = 50, duration_s: float = 10.0, cached_clips: int = 5, max_concurrency: int = 2,
        dsp_workers: int = 2, workdir: Path | None = None) -> dict:
    """Run the benchmark on a server analysing in threads and on one with DSP worker processes."""
    workdir = Path(workdir or Path(".cache") / "bench" / "load").resolve()
    clips_dir = workdir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    n_new = calls // 2
    baseline_n = max(2, cached_clips)
    console.print(f"rendering clips into {clips_dir} ...")
    cached = render_clips(clips_dir, [f"cached_{i}" for i in range(cached_clips)], duration_s, 1000)
    baseline_new = render_clips(clips_dir, [f"baseline_{i}" for i in range(baseline_n)], duration_s, 2000)
    fresh = render_clips(clips_dir, [f"new_{i}" for i in range(n_new)], duration_s, 3000)

    modes = {"threads": 0, f"{dsp_workers} DSP processes": dsp_workers} if dsp_workers else {"threads": 0}
    rows: dict[str, dict] = {}
    errors: list[str] = []
    for mode, workers in modes.items():
        console.print(f"server with madmom in {mode}: warm-up, sequential baseline, {calls} concurrent clients ...")
        runs = measure_server(clips_dir, cached, baseline_new, fresh, calls, max_concurrency, workers)
        for label, (group, wall) in runs.items():
            for kind in ("cached", "new"):
                rows[f"{mode}: {label} {kind}"] = summarize([c for c in group if c.kind == kind], wall)
                rows[f"{mode}: {label} {kind}"]["throughput"] = float("nan")  # throughput is per run
            rows[f"{mode}: {label} all"] = summarize(group, wall)
            errors += [c.error for c in group if not c.ok]
    ratios = {
        f"{mode}: concurrent / sequential throughput": rows[f"{mode}: concurrent all"]["throughput"]
        / rows[f"{mode}: sequential all"]["throughput"]
        for mode in modes
    }
    if len(modes) == 2:
        threads, processes = modes
        ratios["processes / threads concurrent throughput"] = (
            rows[f"{processes}: concurrent all"]["throughput"] / rows[f"{threads}: concurrent all"]["throughput"]
        )
        ratios["threads / processes cached p50 under load"] = (
            rows[f"{threads}: concurrent cached"]["p50"] / rows[f"{processes}: concurrent cached"]["p50"]
        )
    print_table(rows, ratios, calls, duration_s, max_concurrency)
    if errors:
        console.print("[red]failures:[/red]", *errors[:5], sep="\n  ")
    return {"rows": rows, "ratios": ratios, "errors": errors}


def print_table(rows: dict, ratios: dict, calls: int, duration_s: float, max_concurrency: int) -> None:
    table = Table(title=f"MCP load: analyze_clip over HTTP ({calls} concurrent clients, half cached / half new "
                        f"{duration_s:g} s clips; max concurrency {max_concurrency})")
    for column in ("server: run", "calls", "failures", "p50 s", "p95 s", "max s", "calls/s"):
        table.add_column(column, justify="left" if column == "server: run" else "right")
    for name, row in rows.items():
        throughput = "" if np.isnan(row["throughput"]) else f"{row['throughput']:.2f}"
        table.add_row(name, str(row["calls"]), str(row["failures"]), f"{row['p50']:.3f}", f"{row['p95']:.3f}",
                      f"{row['max']:.3f}", throughput)
    out = Console(width=120)
    out.print(table)
    for name, value in ratios.items():
        out.print(f"{name}: {value:.2f}x")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--cached-clips", type=int, default=5)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--dsp-workers", type=int, default=2, help="worker processes of the second server (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.calls, args.duration, args.cached_clips, args.max_concurrency, args.dsp_workers, args.workdir)
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
