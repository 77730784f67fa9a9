"""Issue 21, timed-out work: an analysis whose call timed out gives its compute slot back at once (its DSP
worker process is killed and replaced), and cache lookups never wait behind analyses. Real madmom in real
worker processes, real audio files, the real MCP SDK client; the timeout is the server's setting."""

from __future__ import annotations

import gc
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
