"""Issue 21, timed-out work in the server's own threads: a call that times out stops its madmom analysis
(`TINYMU_DSP_WORKERS=0`, the default) or its model generation at the next stage boundary, so its compute
slot, memory reservation and locks are free long before the work would have ended. Real madmom, the real
TinyMU engine (the tiny preset: random weights, so it never stops early), the real MCP SDK client.

Each test fails on the code before the cancellation hooks (`model.cancel`): there the thread ran its
analysis or generation to the end and held the only compute slot meanwhile."""

from __future__ import annotations

import gc
import threading
import time

import anyio
import numpy as np
import pytest
from mcp import Client

from agent_tools.config import Settings
from agent_tools.tools import MusicTools
from mcp_server.server import build_server
from model import cancel
from model.dsp.analyzer import MusicAnalyzer
from model.lm.engine import load_engine
from training.synth import write_song

DSP_TIMEOUT_S = 3.0
# The longest stage between two stop checks: one spectrogram of the downbeat network on a 180 s window,
# 0.6 s on a quiet 2-core machine and 1.2 s while the lead's training ran (docs/reliability.md).
WORST_STAGE_S = 1.5


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cancel")
    # Its analysis takes 12-20 s of madmom (7.6 s for 300 s while training ran): long after the timeout.
    write_song(root, seed=21, duration_s=600.0, name="long", style="rock")
    write_song(root, seed=22, duration_s=4.0, name="short", style="pop")
    write_song(root, seed=23, duration_s=10.0, name="ten", style="pop")
    return root


async def slot_free_after(tools: MusicTools, limit_s: float) -> float:
    """Seconds until one of the toolbox's compute slots could be taken (fails after `limit_s`)."""
    started = time.monotonic()
    with anyio.fail_after(limit_s):
        while not tools._compute_slots.acquire(blocking=False):
            await anyio.sleep(0.02)
    tools._compute_slots.release()
    return time.monotonic() - started


async def test_a_timed_out_analysis_in_the_servers_threads_stops_and_frees_its_slot(songs, tmp_path):
    analyzer = MusicAnalyzer()
    analyzer.warm_up()  # so the call's time is all decoding and analysis
    settings = Settings(roots=(songs,), cache_dir=tmp_path / "cache", max_concurrency=1, dsp_workers=0,
                        call_timeout_s=DSP_TIMEOUT_S, preload_model=False,
                        server_memory_mb=4096)  # room for the long song's (conservative) estimate
    tools = MusicTools(settings, analyzer=analyzer)
    async with Client(build_server(settings, tools=tools)) as client:
        started = time.monotonic()
        timed_out = await client.call_tool("analyze_clip", {"audio": str(songs / "long.wav")})
        assert timed_out.is_error and "did not finish within" in timed_out.content[0].text
        # Before: the slot stayed taken until the analysis ended, many seconds later.
        waited = await slot_free_after(tools, WORST_STAGE_S + 1.0)
        answered = await client.call_tool("detect_key", {"audio": str(songs / "short.wav")})
        total = time.monotonic() - started
    assert not answered.is_error, answered.content[0].text
    assert answered.structured_content["key"]
    assert waited < WORST_STAGE_S + 1.0 and total < DSP_TIMEOUT_S + WORST_STAGE_S + 6
    assert analyzer._lock.acquire(blocking=False), "the stopped analysis still holds the analyzer"
    analyzer._lock.release()
    gc.collect()  # the timed-out call's decoded window is released with its traceback
    assert tools.memory.reserved_bytes == 0
    # Nothing half-done was cached: the long song's analysis is not there.
    assert not any(label.split(" ")[0] == "analysis" for _, label, _ in tools.cache._memory.values())


def test_a_generation_stops_between_tokens_when_its_call_is_abandoned():
    engine = load_engine("preset:tiny", device="cpu")
    audio = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32) * 0.1
    engine.answer(audio, "Describe the music.", max_new_tokens=4)  # warm
    abandoned, outcome = threading.Event(), {}

    def generate():
        cancel.cancel_event.set(abandoned)  # what the server's runner sets for each call's thread
        started = time.monotonic()
        try:
            outcome["answer"] = engine.answer(audio, "Describe the music.", max_new_tokens=512)
        except cancel.ComputationCancelled as exc:
            outcome["stopped"] = exc
        outcome["ended"] = time.monotonic()
        outcome["took"] = outcome["ended"] - started

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(0.5)
    abandoned.set()
    set_at = time.monotonic()
    thread.join(timeout=60)
    # 512 tokens of the random tiny model take 6-28 s here; one token 10-60 ms.
    assert "stopped" in outcome, f"the generation ran to its end ({outcome.get('took', 0):.1f} s)"
    assert outcome["ended"] - set_at < 1.0
    assert engine._lock.acquire(blocking=False), "the stopped generation still holds the engine"
    engine._lock.release()


async def test_a_timed_out_model_call_stops_its_generation_and_frees_its_slot(songs, tmp_path):
    engine = load_engine("preset:tiny", device="cpu")
    settings = Settings(roots=(songs,), cache_dir=tmp_path / "cache", max_concurrency=1, call_timeout_s=120.0,
                        preload_model=False)
    tools = MusicTools(settings, model=engine)
    arguments = {"audio": str(songs / "ten.wav")}
    async with Client(build_server(settings, tools=tools)) as client:
        assert not (await client.call_tool("describe_music", arguments)).is_error  # warm
        started = time.monotonic()
        whole = await client.call_tool("describe_music", arguments)  # 96 tokens: the random model never stops
        took = time.monotonic() - started
        assert not whole.is_error
    # The same call under a timeout of a quarter of what it takes: its slot must be free within a token or two
    # (before: only when the generation ended, three quarters of the call later; measured 0.54 of 0.67 s).
    timeout = took / 4
    settings = settings.with_overrides(call_timeout_s=timeout)
    tools = MusicTools(settings, model=engine)
    async with Client(build_server(settings, tools=tools)) as client:
        timed_out = await client.call_tool("describe_music", arguments)
        assert timed_out.is_error and "did not finish within" in timed_out.content[0].text
        waited = await slot_free_after(tools, took)
        again = await client.call_tool("list_audio_files", {})
    assert waited < took / 2, f"slot free {waited:.2f} s after the timeout; the whole call takes {took:.2f} s"
    assert not again.is_error
    gc.collect()
    assert tools.memory.reserved_bytes == 0
