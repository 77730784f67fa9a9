"""Reliability benchmark of the MCP server (`python -m training.bench reliability`): bombs, load, endurance, the race.

Starts `tinymu-mcp --http` as a real subprocess (the model not preloaded, so the numbers
are the server's own) and reports, from /proc:

1. bombs: the whole server's peak RSS (the server process and its DSP workers: the sum of
   each one's VmHWM) after decompression bombs (a 10-minute 96 kHz stereo FLAC by path, a
   long silent FLAC as a data URI), a long window that fits, and two long songs sent at
   once, against the server's memory budget (server_memory_mb);
2. load: N concurrent calls over S MCP sessions (warmed as an agent host's are), half on
   clips already analysed (cached) and half on new clips, alternating: failures and latency
   percentiles of each half, and the CPU the server and this client spent on them;
3. endurance: M calls in a row (cached answers and refused inputs alternating), RSS every
   tenth of the way: flat means nothing leaks per call;
4. race: a folder inside the root is swapped for a symlink to a folder outside it, over and
   over, while clients call a tool on a file in it: how many answers came from the outside file.

Every part is short by default (minutes on a 2-core machine); the options scale them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import soundfile as sf
from mcp import Client
from rich.console import Console

from agent_tools.config import Settings
from agent_tools.memory import process_tree
from training.bench._mcp_http import start_mcp_http
from training.bench.load import Call, render_clips, summarize

console = Console(stderr=True)
MiB = 1024 * 1024


# --- the server and its memory --------------------------------------------------------------


def start_server(root: Path, cache_dir: Path, env_changes: dict[str, str]) -> tuple[subprocess.Popen, str]:
    return start_mcp_http(root, {"TINYMU_CACHE_DIR": str(cache_dir), "TINYMU_PRELOAD_MODEL": "0", **env_changes})


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of the server: the sums over its process and its descendants
    (DSP workers, multiprocessing's tracker), MB. The summed peaks bound the peak of the sum from above."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0, "processes": 0}
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:  # ended meanwhile
            continue
        values["processes"] += 1
        for line in lines:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] += int(rest.split()[0]) / 1024
    return values


async def call(url: str, tool: str, args: dict) -> tuple[bool, str, dict | None, float]:
    start = time.perf_counter()
    try:
        async with Client(url, read_timeout_seconds=600) as client:
            result = await client.call_tool(tool, args)
        text = " ".join(getattr(c, "text", "") for c in result.content)[:160]
        return not result.is_error, text, result.structured_content, time.perf_counter() - start
    except Exception as exc:  # a failed call is a result here
        return False, f"{type(exc).__name__}: {exc}"[:160], None, time.perf_counter() - start


# --- 1. bombs ------------------------------------------------------------------------------------


def write_flac(path: Path, seconds: float, rate: int, channels: int, silent: bool) -> Path:
    """Written in 10 s blocks, so making the bomb does not need the memory it is meant to test."""
    if path.exists():
        return path
    t = np.arange(rate * 10) / rate
    tone = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    block = np.zeros((rate * 10, channels), dtype=np.int16) if silent else np.repeat(tone[:, None], channels, axis=1)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return path


def looped_song(workdir: Path, path: Path, seconds: int, gain: float = 1.0) -> Path:
    """A long real-sounding song: the rendered 30 s song looped (gain makes another file, a cache miss)."""
    if not path.exists():
        song = render_clips(workdir / "songs", ["song_30s"], 30.0, 4000)[0]
        samples, rate = sf.read(song, dtype="float32")
        looped = np.tile(samples, (seconds // 30 + 1,) + (1,) * (samples.ndim - 1))[: rate * seconds]
        sf.write(path, gain * looped, rate)
    return path


def bombs(workdir: Path, clips_dir: Path, env_changes: dict[str, str], long_s: int) -> list[dict]:
    long_flac = write_flac(clips_dir / "bomb_10min_96k_stereo.flac", 600, 96000, 2, silent=False)
    silent_flac = write_flac(workdir / "bomb_silent_10min_96k_stereo.flac", 600, 96000, 2, silent=True)
    # A long window that fits the budget, analysed for real (rendered music, looped).
    fits = looped_song(workdir, clips_dir / "fits_budget.wav", 50)
    # Two long songs at once: each fits the per-call budget, both together would not fit the server's.
    pair = [looped_song(workdir, clips_dir / f"long_{long_s}s_{i}.wav", long_s, gain=0.9 - 0.2 * i) for i in range(2)]
    inputs = [
        ("10 min 96 kHz stereo FLAC (path)", str(long_flac), f"{long_flac.stat().st_size / 1e6:.1f} MB"),
        ("10 min silent 96 kHz stereo FLAC (data URI)",
         "data:audio/flac;base64," + base64.b64encode(silent_flac.read_bytes()).decode(),
         f"{silent_flac.stat().st_size / 1e6:.2f} MB"),
        ("50 s song within the budget (path)", str(fits), f"{fits.stat().st_size / 1e6:.1f} MB"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {"TINYMU_MAX_DATA_URI_BYTES": str(20 * MiB), "TINYMU_CALL_TIMEOUT_S": "900", **env_changes}
        process, url = start_server(clips_dir, Path(cache_dir), env)
        try:
            ok, text, _, _ = asyncio.run(call(url, "detect_key", {"audio": str(fits), "duration_s": 5.0}))  # warm
            base = memory_mb(process.pid)
            rows.append({"input": "baseline (after one 5 s analysis)", "size": "", "result": "ok" if ok else text,
                         "seconds": 0.0, **base})
            for label, audio, size in inputs:
                ok, text, _, seconds = asyncio.run(call(url, "analyze_clip", {"audio": audio}))
                rows.append({"input": label, "size": size, "result": "answered" if ok else text, "seconds": seconds,
                             **memory_mb(process.pid)})

            async def together():
                return await asyncio.gather(*(call(url, "analyze_clip", {"audio": str(p)}) for p in pair))

            answers = asyncio.run(together())
            size = f"2 x {pair[0].stat().st_size / 1e6:.1f} MB"
            result = "; ".join(("answered" if ok else text) + f" in {seconds:.1f} s" for ok, text, _, seconds in answers)
            rows.append({"input": f"two {long_s} s songs at once (paths)", "size": size, "result": result,
                         "seconds": max(a[3] for a in answers), **memory_mb(process.pid)})
        finally:
            process.terminate()
            process.wait(timeout=30)
    return rows


# --- 2. load -------------------------------------------------------------------------------------


async def session_call(client: Client, path: Path, kind: str) -> tuple[Call, float]:
    """One timed call, and the longest silence in it: the most time between the request, its progress
    notifications and its answer (the server promises a heartbeat every 3 s)."""
    start = time.perf_counter()
    heard = [start]

    async def on_progress(done, total, message):
        heard.append(time.perf_counter())

    try:
        result = await client.call_tool("analyze_clip", {"audio": str(path)}, progress_callback=on_progress)
        ok, error = not result.is_error, "" if not result.is_error else result.content[0].text[:200]
    except Exception as exc:  # a failed call is a result here
        ok, error = False, f"{type(exc).__name__}: {exc}"[:200]
    end = time.perf_counter()
    silence = float(np.max(np.diff(heard + [end])))
    return Call(kind, end - start, ok, error), silence


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (from /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)
    return total / os.sysconf("SC_CLK_TCK")


def load(clips_dir: Path, calls: int, duration_s: float, max_concurrency: int, sessions: int,
         dsp_workers: int, order: str = "interleaved", warmup: str = "call") -> dict:
    """`calls` analyze_clip calls sent at once over `sessions` open MCP sessions (as agent hosts keep them),
    half on clips in the cache, half on new clips; each call timed from request to answer.

    order: "interleaved" (cached, new, cached, ...) or "cached-first" (every cached call sent before the new ones).
    warmup: what each session did before the burst. "call" (the default): listed the tools and called
    analyze_clip once, as a session in use has; "list": only listed the tools, as an agent host does when it
    connects, so the first answer in each session compiles the tool's output schema in the SDK client (about
    25 ms of this one client process's CPU per session, during the burst); "none" (the procedure before this
    option: only the first session had called the tool): the SDK client also lists the tools again for every
    answer that arrives before its session's first listing is done (76 kB each). Those costs are the client's
    start-up, not the server's load."""
    n_new = calls // 2
    cached = render_clips(clips_dir, [f"cached_{i}" for i in range(5)], duration_s, 1000)
    fresh = render_clips(clips_dir, [f"new_{i}" for i in range(n_new)], duration_s, 3000)
    env = {"TINYMU_MAX_CONCURRENCY": str(max_concurrency), "TINYMU_CALL_TIMEOUT_S": "600",
           "TINYMU_DSP_WORKERS": str(dsp_workers)}
    with tempfile.TemporaryDirectory() as cache_dir:
        process, url = start_server(clips_dir, Path(cache_dir), env)
        try:
            async def everything():
                async with AsyncExitStack() as stack:
                    clients = [await stack.enter_async_context(Client(url, read_timeout_seconds=600))
                               for _ in range(sessions)]
                    for path in cached:  # warm the cache
                        await clients[0].call_tool("analyze_clip", {"audio": str(path)})
                    for i, client in enumerate(clients[1:] if warmup != "none" else [], start=1):
                        await client.list_tools()
                        if warmup == "call":
                            await client.call_tool("analyze_clip", {"audio": str(cached[i % len(cached)])})
                    hits = [(cached[i % len(cached)], "cached") for i in range(calls - n_new)]
                    misses = [(path, "new") for path in fresh]
                    if order == "interleaved":
                        jobs = [job for pair in itertools.zip_longest(hits, misses) for job in pair if job]
                    else:
                        jobs = hits + misses
                    server_cpu, client_cpu = cpu_seconds(process_tree(process.pid)), time.process_time()
                    start = time.perf_counter()
                    results = await asyncio.gather(*(session_call(clients[i % sessions], path, kind)
                                                     for i, (path, kind) in enumerate(jobs)))
                    wall = time.perf_counter() - start
                    cpu = {"server_cpu_s": cpu_seconds(process_tree(process.pid)) - server_cpu,
                           "client_cpu_s": time.process_time() - client_cpu}
                    return list(results), wall, cpu

            answers, wall, cpu = asyncio.run(everything())
            rss = memory_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    results = [c for c, _ in answers]
    rows = {kind: summarize([c for c in results if c.kind == kind], wall) for kind in ("cached", "new")}
    errors = [c.error for c in results if not c.ok]
    silence = max(s for c, s in answers if c.kind == "new")
    return {"rows": rows, "wall_s": wall, "errors": errors, "longest_silence_s": silence, **cpu, **rss}


# --- 3. endurance ----------------------------------------------------------------------------


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def endurance(clips_dir: Path, calls: int) -> list[tuple[int, float, int]]:
    clip = render_clips(clips_dir, ["cached_0"], 5.0, 1000)[0]
    bad = [str(clips_dir / "missing.wav"), "data:audio/wav;base64,!!!", str(clips_dir)]
    samples = []
    with tempfile.TemporaryDirectory() as cache_dir:
        process, url = start_server(clips_dir, Path(cache_dir), {})
        try:
            async def run_all():
                async with Client(url, read_timeout_seconds=600) as client:
                    for i in range(calls):
                        args = {"audio": str(clip)} if i % 2 == 0 else {"audio": bad[i % len(bad)]}
                        await client.call_tool("estimate_tempo", args)
                        if i % max(1, calls // 10) == 0 or i == calls - 1:
                            samples.append((i + 1, memory_mb(process.pid)["VmRSS"], open_files(process.pid)))

            asyncio.run(run_all())
        finally:
            process.terminate()
            process.wait(timeout=30)
    return samples


# --- 4. the race ---------------------------------------------------------------------------------


def race(workdir: Path, seconds: float, clients: int = 4) -> dict:
    base = workdir / "race"
    shutil.rmtree(base, ignore_errors=True)
    root, outside = base / "root", base / "outside"
    for folder, level in ((root / "album", 0.2), (outside / "album", 0.8)):
        folder.mkdir(parents=True)
        sf.write(folder / "clip.wav", level * np.sin(np.linspace(0, 4000, 44100 * 2)), 44100, subtype="PCM_16")
    inside = root / "album"
    moved = root / "album_real"
    stop = threading.Event()
    swaps = 0

    def swap():
        nonlocal swaps
        while not stop.is_set():
            inside.rename(moved)
            inside.symlink_to(outside / "album")
            time.sleep(0.0005)
            inside.unlink()
            moved.rename(inside)
            swaps += 1
            time.sleep(0.002)  # the real folder is in place most of the time, so most calls are answered

    counts = {"calls": 0, "answered": 0, "refused": 0, "escapes": 0}
    with tempfile.TemporaryDirectory() as cache_dir:
        process, url = start_server(root, Path(cache_dir), {})
        try:
            async def first():
                return await call(url, "estimate_tempo", {"audio": str(inside / "clip.wav")})

            ok, text, data, _ = asyncio.run(first())
            if not ok:
                raise RuntimeError(f"the inside file cannot be analysed: {text}")
            inside_sha = data["audio"]["sha256"]
            swapper = threading.Thread(target=swap)
            swapper.start()
            deadline = time.monotonic() + seconds

            async def client_loop():
                async with Client(url, read_timeout_seconds=600) as client:
                    while time.monotonic() < deadline:
                        result = await client.call_tool("estimate_tempo", {"audio": str(inside / "clip.wav")})
                        counts["calls"] += 1
                        if result.is_error:
                            counts["refused"] += 1
                        else:
                            counts["answered"] += 1
                            counts["escapes"] += result.structured_content["audio"]["sha256"] != inside_sha

            async def clients_together():
                await asyncio.gather(*(client_loop() for _ in range(clients)))

            try:
                asyncio.run(clients_together())
            finally:
                stop.set()
                swapper.join()
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {**counts, "swaps": swaps, "seconds": seconds}


# --- report -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="bombs,load,endurance,race", help="comma-separated parts to run")
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls of the load part (half cached)")
    parser.add_argument("--duration", type=float, default=5.0, help="clip length of the load part, seconds")
    parser.add_argument("--sessions", type=int, default=10, help="MCP sessions the load part's calls share")
    parser.add_argument("--order", choices=("interleaved", "cached-first"), default="interleaved",
                        help="the load part's calls: cached and new alternating, or every cached call first")
    parser.add_argument("--session-warmup", choices=("call", "list", "none"), default="call",
                        help="load: what each session did before the burst: listed the tools and made a call (a "
                             "session in use), only listed them (a fresh agent host), or nothing but the first")
    parser.add_argument("--dsp-workers", type=int, default=None,
                        help="madmom worker processes of the server (default: the server's default)")
    parser.add_argument("--endurance-calls", type=int, default=1000)
    parser.add_argument("--race-seconds", type=float, default=60.0)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--max-call-memory-mb", type=float, default=None, help="default: the server's")
    parser.add_argument("--server-memory-mb", type=float, default=None, help="default: the server's")
    parser.add_argument("--long-seconds", type=int, default=170, help="the two long songs of the bombs part")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    workdir = Path(args.workdir or Path(".cache") / "bench" / "reliability").resolve()
    clips_dir = workdir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    out = Console(width=140)

    if "bombs" in parts:
        console.print("bombs: writing the inputs, then one server takes them in turn ...")
        settings = Settings(**{key: value for key, value in (("max_call_memory_mb", args.max_call_memory_mb),
                                                              ("server_memory_mb", args.server_memory_mb),
                                                              ("dsp_workers", args.dsp_workers)) if value is not None},
                            max_concurrency=args.max_concurrency)
        env = {"TINYMU_MAX_CONCURRENCY": str(settings.max_concurrency), "TINYMU_DSP_WORKERS": str(settings.dsp_workers),
               "TINYMU_MAX_CALL_MEMORY_MB": str(settings.max_call_memory_mb),
               "TINYMU_SERVER_MEMORY_MB": str(settings.server_memory_mb)}
        rows = bombs(workdir, clips_dir, env, args.long_seconds)
        budget = settings.server_memory_mb
        out.print(f"\n[b]1. bombs[/b] (server_memory_mb {budget:g}, max_call_memory_mb {settings.max_call_memory_mb:g}, "
                  f"max_concurrency {settings.max_concurrency}, dsp_workers {settings.dsp_workers}); the whole server: "
                  "its process and its workers")
        for row in rows:
            out.print(f"  {row['input']:<46} {row['size']:>14}  peak RSS {row['VmHWM']:7.0f} MB  RSS {row['VmRSS']:7.0f} MB"
                      f" ({row['processes']} processes)  {row['seconds']:6.2f} s  {row['result'][:110]}")
        peak = max(row["VmHWM"] for row in rows)
        verdict = "under" if peak <= budget else "OVER"
        failed |= verdict == "OVER" or not rows[-1]["result"].startswith("answered")
        out.print(f"  peak {peak:.0f} MB: {verdict} the server's budget ({budget:.0f} MB)")

    if "load" in parts:
        console.print(f"load: rendering clips, then {args.calls} concurrent clients ...")
        workers = args.dsp_workers if args.dsp_workers is not None else Settings.from_env().dsp_workers
        load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        result = load(clips_dir, args.calls, args.duration, args.max_concurrency, args.sessions, workers,
                      args.order, args.session_warmup)
        load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        sessions = f"{args.sessions} sessions (warm-up: {args.session_warmup})"
        out.print(f"\n[b]2. load[/b]: {args.calls} concurrent analyze_clip calls over HTTP on {sessions}, "
                  f"half cached, half new {args.duration:g} s clips, {args.order} (max_concurrency "
                  f"{args.max_concurrency}, dsp_workers {workers}); wall {result['wall_s']:.1f} s, CPU server "
                  f"{result['server_cpu_s']:.1f} s, client {result['client_cpu_s']:.1f} s; "
                  f"server RSS after {result['VmRSS']:.0f} MB (peak {result['VmHWM']:.0f}, {result['processes']} processes)")
        for kind, row in result["rows"].items():
            out.print(f"  {kind:<7} calls {row['calls']:4d}  failures {row['failures']:3d}  p50 {row['p50']:7.3f} s  "
                      f"p95 {row['p95']:7.3f} s  max {row['max']:7.3f} s")
        out.print(f"  load average (1, 5, 15 min) before {' '.join(load_before)}, after {' '.join(load_after)}; "
                  f"this process's niceness {os.nice(0)}")
        out.print(f"  longest silence in a new call (request, progress notifications, answer): "
                  f"{result['longest_silence_s']:.1f} s (heartbeat every 3 s)")
        failed |= bool(result["errors"]) or result["rows"]["cached"]["p95"] > 0.5
        for error in result["errors"][:5]:
            out.print(f"  [red]failure[/red]: {error}")

    if "endurance" in parts:
        console.print(f"endurance: {args.endurance_calls} calls in a row ...")
        samples = endurance(clips_dir, args.endurance_calls)
        out.print(f"\n[b]3. endurance[/b]: {args.endurance_calls} estimate_tempo calls in a row on one session "
                  "(cached answers and refused inputs alternating); server RSS, MB (open files):")
        out.print("  " + "  ".join(f"{n}: {rss:.0f} ({fds})" for n, rss, fds in samples))
        growth = samples[-1][1] - samples[1][1] if len(samples) > 2 else 0.0
        out.print(f"  growth after the first tenth: {growth:+.1f} MB, {samples[-1][2] - samples[1][2]:+d} open files")

    if "race" in parts:
        console.print(f"race: {args.race_seconds:g} s of swapping a folder for a symlink during calls ...")
        result = race(workdir, args.race_seconds)
        out.print(f"\n[b]4. race[/b]: {result['seconds']:g} s, {result['swaps']} swaps, {result['calls']} calls: "
                  f"{result['answered']} answered, {result['refused']} refused, {result['escapes']} read the outside file")
        failed |= result["escapes"] > 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
