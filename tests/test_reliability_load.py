"""Issue 21, cached calls under load: what the event loop does per call, besides answering cache hits.

Traced under load (docs/reliability.md, the load section), the loop spent per new call a hop to a cache-lookup
thread and back for a lookup that could only miss, and a Thread.start() when anyio's pool had no idle thread;
every cached call behind them in the loop's queue waited for both. Each test fails on the code before
(`3fba9a4`): there the new file's lookup waited for a lookup thread (the timeout, then the ordinary way), and
each concurrent call started a thread of its own from the loop."""

from __future__ import annotations

import os
import threading
import time

import anyio
from mcp import Client

from agent_tools.config import Settings
from agent_tools.tools import CACHE_LOOKUP_THREADS, MusicTools
from mcp_server.server import ToolRunner, build_server
from training.synth import write_song


async def test_a_file_never_decoded_is_not_looked_up_in_a_thread(tmp_path):
    write_song(tmp_path, seed=31, duration_s=4.0, name="known", style="pop")
    write_song(tmp_path, seed=32, duration_s=4.0, name="new", style="pop")
    settings = Settings(roots=(tmp_path,), cache_dir=tmp_path / "cache", call_timeout_s=60.0, preload_model=False,
                        cache_lookup_timeout_s=2.0)
    tools = MusicTools(settings)
    release = threading.Event()
    async with Client(build_server(settings, tools=tools)) as client:
        first = await client.call_tool("detect_key", {"audio": str(tmp_path / "known.wav")})
        assert not first.is_error
        # Every lookup thread busy: a lookup would have to queue for one.
        stuck = [tools._lookups.submit(release.wait, 30) for _ in range(CACHE_LOOKUP_THREADS)]
        try:
            started = time.monotonic()
            skipped = await tools.answer_from_cache_async("detect_key", {"audio": str(tmp_path / "new.wav")})
            took = time.monotonic() - started
            other_window = await tools.answer_from_cache_async(
                "detect_key", {"audio": str(tmp_path / "known.wav"), "offset_s": 1.0})
        finally:
            release.set()
        assert skipped is None and other_window is None
        assert took < 0.5, f"the lookup of a never-decoded file waited {took:.2f} s for a lookup thread"
        # A window decoded before is still looked up (and answered) from memory.
        hit = await tools.answer_from_cache_async("detect_key", {"audio": str(tmp_path / "known.wav")})
        again = await client.call_tool("detect_key", {"audio": str(tmp_path / "new.wav")})
    assert all(future.result(timeout=5) for future in stuck)
    assert hit is not None and hit.key.key == first.structured_content["key"]["key"]
    assert not again.is_error
    assert tools.may_answer_from_cache({"audio": str(tmp_path / "new.wav")})


async def test_concurrent_calls_start_no_thread_on_the_event_loop():
    runner = ToolRunner(timeout_s=30.0)
    calls = 24
    everyone = threading.Barrier(calls + 1)
    before = threading.active_count()
    counted = []

    def in_a_thread():  # each call holds its thread until all of them run at once
        everyone.wait(timeout=20)
        return threading.get_ident()

    async def count_when_all_run():
        await anyio.to_thread.run_sync(lambda: (everyone.wait(timeout=20), counted.append(threading.active_count())))

    async with anyio.create_task_group() as group:
        names = []

        async def one():
            names.append(await runner.run("in_a_thread", in_a_thread, {}, None))

        for _ in range(calls):
            group.start_soon(one)
        group.start_soon(count_when_all_run)
    assert len(names) == calls and len(set(names)) == calls
    # At most the counting helper's thread (and one of anyio's) started: the runner's were all started with it.
    assert counted[0] - before <= 2, f"{counted[0] - before} threads were started during the burst"


def woken(native_ids: list[int]) -> int:
    """Voluntary context switches so far of these threads (each wake-up from a timed wait is one)."""
    total = 0
    for tid in native_ids:
        with open(f"/proc/self/task/{tid}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    return total


async def test_calls_waiting_for_a_slot_sleep_until_it_is_free_or_they_time_out(tmp_path):
    # Each waiting call's thread woke every 0.05 s to look at its abandonment flag: with 48 calls waiting under
    # load, about 1,000 GIL hand-offs a second. Now it sleeps until a slot is released or its call times out.
    tools = MusicTools(Settings(roots=(tmp_path,), cache_dir=tmp_path / "cache", max_concurrency=1,
                                preload_model=False))
    runner = ToolRunner(timeout_s=2.5)
    waiting, ids, ran, ended, timed_out = 20, [], [], [], []

    def wait_for_the_slot():
        ids.append(threading.get_native_id())
        try:
            with tools.computing():
                ran.append(threading.get_native_id())
        finally:
            ended.append(time.monotonic())

    tools._compute_slots.acquire()  # a long analysis holds the only slot
    try:
        async with anyio.create_task_group() as group:
            async def one():
                try:
                    await runner.run("estimate_tempo", wait_for_the_slot, {}, None)
                except Exception as exc:  # noqa: BLE001 - the expected timeout
                    assert "did not finish within" in str(exc)
                    timed_out.append(time.monotonic())

            for _ in range(waiting):
                group.start_soon(one)
            while len(ids) < waiting:
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            before = woken(ids)
            await anyio.sleep(1.0)
            wake_ups = woken(ids) - before
    finally:
        tools._compute_slots.release()
    # Each gave up its place as soon as its call timed out, and none took the slot released afterwards.
    await anyio.sleep(0.5)
    assert len(timed_out) == waiting and len(ended) == waiting and ran == []
    assert max(ended) - max(timed_out) < 0.3
    assert tools._compute_slots.acquire(blocking=False)
    tools._compute_slots.release()
    assert wake_ups < waiting, f"{waiting} waiting threads woke {wake_ups} times in 1 s"


def test_tool_calls_run_below_the_event_loops_cpu_priority():
    # So the loop (requests in, cached answers out) gets a core while analyses in the calls' threads fill
    # every core; measured by the load benchmark (docs/reliability.md), guarded here.
    from mcp_server.server import CALL_NICENESS

    runner = ToolRunner(timeout_s=10, max_calls_in_flight=2)

    def own_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert anyio.run(runner.run, "probe", own_priority, {}, None) == min(19, loop_priority + CALL_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_priority  # the loop's own is kept
