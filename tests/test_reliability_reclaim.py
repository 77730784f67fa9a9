"""Issue 21, timed-out work: an analysis whose call timed out gives its compute slot back at once (its DSP
worker process is killed and replaced), and cache lookups never wait behind analyses. Real madmom in real
worker processes, real audio files, the real MCP SDK client; the timeout is the server's setting."""

from __future__ import annotations

import gc
import os
import threading
import time

import anyio
import pytest
from mcp import Client

from agent_tools import dsp_workers
from agent_tools.config import Settings
from agent_tools.tools import MusicTools
from mcp_server.server import build_server
from training.synth import write_song

CALL_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reclaim")
    # Its analysis takes about 14 s of madmom in a warm worker (7 s for 150 s, measured on this project's
    # machine), several call timeouts; the short one's takes well under a second, and a new worker warms in ~1 s.
    write_song(root, seed=11, duration_s=300.0, name="long", style="rock")
    write_song(root, seed=12, duration_s=4.0, name="short", style="pop")
    return root


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except OSError:
        return False


async def test_a_timed_out_analysis_does_not_make_the_next_call_time_out(songs, tmp_path):
    # Before: the timed-out call's analysis kept running in its worker and kept the only compute slot, so the
    # next call waited behind it and timed out too. Now the worker is killed on timeout and replaced.
    workers = 1
    settings = Settings(roots=(songs,), cache_dir=tmp_path / "cache", max_concurrency=1, dsp_workers=workers,
                        call_timeout_s=CALL_TIMEOUT_S, preload_model=False,
                        server_memory_mb=4096)  # room for the long song's (conservative) estimate
    tools = MusicTools(settings)
    dsp_workers.start(workers, wait_s=120)  # warm, so the first call's time is all analysis
    old = dsp_workers.worker_pids(workers)
    async with Client(build_server(settings, tools=tools)) as client:
        started = time.monotonic()
        timed_out = await client.call_tool("analyze_clip", {"audio": str(songs / "long.wav")})
        assert timed_out.is_error and "did not finish within" in timed_out.content[0].text
        assert time.monotonic() - started < CALL_TIMEOUT_S + 5
        # The slot is free again at once (the runner's abandonment is noticed within 0.05 s).
        with anyio.fail_after(2):
            while not tools._compute_slots.acquire(blocking=False):
                await anyio.sleep(0.02)
        tools._compute_slots.release()
        answered = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
    assert not answered.is_error, answered.content[0].text
    assert answered.structured_content["key"]
    assert old and not any(alive(pid) for pid in old), "the timed-out call's worker is still running"
    new = dsp_workers.worker_pids(workers)
    assert new and not set(new) & set(old)
    gc.collect()  # the timed-out call's decoded window is released with its traceback
    assert tools.memory.reserved_bytes == 0


async def test_a_stalled_cache_lookup_fails_with_a_reason_and_never_stalls_the_server(songs, tmp_path):
    # A cache lookup opens the file; on a hung network file system that open() blocks. It ran on the event loop,
    # so one stalled lookup stalled every request. Now it runs in threads of its own with a short timeout. The
    # stall here is real: the lookup needs the toolbox's lock on its table of known windows, which this test
    # holds (a hung file system cannot be made without root).
    settings = Settings(roots=(songs,), cache_dir=tmp_path / "cache", call_timeout_s=60.0, preload_model=False,
                        cache_lookup_timeout_s=1.0)
    tools = MusicTools(settings)
    async with Client(build_server(settings, tools=tools)) as client:
        first = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
        assert not first.is_error
        held, release = threading.Event(), threading.Event()

        def hold_the_lock():  # from another thread, so the code before the fix stalls for 10 s instead of forever
            with tools._windows_lock:
                held.set()
                release.wait(timeout=10)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        held.wait()
        try:
            async with anyio.create_task_group() as group:
                stalled = []

                async def look_up():
                    began = time.monotonic()
                    stalled.append(await client.call_tool("detect_key", {"audio": str(songs / "short.wav")}))
                    stalled.append(time.monotonic() - began)

                group.start_soon(look_up)
                await anyio.sleep(0.2)
                started = time.monotonic()
                listed = await client.call_tool("list_audio_files", {})  # the server still answers others
                assert not listed.is_error and time.monotonic() - started < 0.9
        finally:
            release.set()
            holder.join()
        # The held lock stands for the hung open(): released only now, after the stalled call was answered.
        again = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
    text = stalled[0].content[0].text
    assert stalled[0].is_error and "took over 1 s" in text and "short.wav" in text, text
    assert "TINYMU_CACHE_LOOKUP_TIMEOUT_S" in text
    assert stalled[1] < 3.0, "the stalled call waited for the file system instead of its own timeout"
    assert not again.is_error and again.structured_content == first.structured_content


def test_dsp_workers_run_at_a_lower_cpu_priority_than_the_server():
    # So the server's event loop (requests in, cached answers out) gets a core while analyses fill both.
    dsp_workers.start(1, wait_s=120)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in dsp_workers.worker_pids(1):
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, mine + dsp_workers.WORKER_NICENESS)


async def test_a_lookup_queued_behind_stuck_lookups_goes_the_ordinary_way(songs, tmp_path):
    # Every lookup thread stuck on another folder (a hung mount elsewhere): a file that is fine is not refused
    # for it; its call is answered the ordinary way once its lookup could not start within the timeout.
    from agent_tools.tools import CACHE_LOOKUP_THREADS

    settings = Settings(roots=(songs,), cache_dir=tmp_path / "cache", call_timeout_s=60.0, preload_model=False,
                        cache_lookup_timeout_s=1.0)
    tools = MusicTools(settings)
    release = threading.Event()
    async with Client(build_server(settings, tools=tools)) as client:
        first = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
        stuck = [tools._lookups.submit(release.wait, 30) for _ in range(CACHE_LOOKUP_THREADS)]
        try:
            started = time.monotonic()
            again = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
            took = time.monotonic() - started
        finally:
            release.set()
    assert all(future.result(timeout=5) for future in stuck)
    assert not again.is_error, again.content[0].text
    assert again.structured_content == first.structured_content and took < 5.0
