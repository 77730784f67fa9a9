"""madmom analyses in worker processes, for servers under concurrent load.

Within one process the analyzer serialises its calls (one lock around the
madmom processors) and its Python parts hold the GIL, so while a long
analysis runs, every other request, cache hits included, waits for the
interpreter. Worker processes, each with its own warm processors, analyse in
parallel and leave the server's event loop free. Each pool is started once
per process (workers load madmom's networks at start) and reused.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from pydantic import BaseModel

from agent_tools.memory import return_freed_memory
from model.audio import AudioClip
from model.dsp.capabilities import capability
from model.errors import BackendError

_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def _warm_up(parent: int) -> None:
    from model.dsp.analyzer import default_analyzer

    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    default_analyzer().warm_up()


def _exit_with_parent(parent: int) -> None:
    """End this worker when the server process is gone. A worker inherits both ends of the pool's queues,
    so it never sees the server close them: a server stopped by a signal left its workers running (and
    holding madmom's memory) before this."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _analyse(kind: str, clip: AudioClip) -> BaseModel:
    from model.dsp import capabilities
    from model.dsp.analyzer import default_analyzer

    try:
        return capabilities.run(default_analyzer(), kind, clip)
    finally:
        return_freed_memory()  # the server reads this worker's resident size as its own memory


def _pool(workers: int) -> ProcessPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            # "spawn": the server process runs threads, which forking would copy in an unknown state.
            _pools[workers] = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_up,
                initargs=(os.getpid(),),
            )
        return _pools[workers]


def _ready() -> bool:
    return True


def worker_pids(workers: int) -> list[int]:
    """The process ids of the pool of `workers` workers (empty until it started)."""
    with _pools_lock:
        pool = _pools.get(workers)
        return sorted(getattr(pool, "_processes", None) or {}) if pool is not None else []


def start(workers: int) -> None:
    """Start the worker processes now; they load madmom's networks in the background."""
    pool = _pool(workers)
    for _ in range(workers):
        pool.submit(_ready)


def analyse_in_worker(kind: str, clip: AudioClip, workers: int) -> BaseModel:
    """Run one DSP analysis (a kind of `model.dsp.capabilities.CAPABILITIES`) in a worker process."""
    capability(kind)  # refuse an unknown kind here, not in the worker
    pool = _pool(workers)
    try:
        return pool.submit(_analyse, kind, clip).result()
    except BrokenProcessPool as exc:
        # A worker died (killed, out of memory): the pool is broken for good, so the next call starts a new one
        # (unless another call already did) and this one says what happened.
        with _pools_lock:
            if _pools.get(workers) is pool:
                del _pools[workers]
        pool.shutdown(wait=False, cancel_futures=True)
        raise BackendError(
            "A DSP worker process died during the analysis (killed, or out of memory); a new worker is started "
            "for the next call. Call again, or analyse a shorter window (offset_s/duration_s)."
        ) from exc
