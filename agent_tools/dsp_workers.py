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
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from pydantic import BaseModel

from model.audio import AudioClip
from model.dsp.capabilities import capability
from model.errors import BackendError

_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def _warm_up() -> None:
    from model.dsp.analyzer import default_analyzer

    default_analyzer().warm_up()


def _analyse(kind: str, clip: AudioClip) -> BaseModel:
    from model.dsp import capabilities
    from model.dsp.analyzer import default_analyzer

    return capabilities.run(default_analyzer(), kind, clip)


def _pool(workers: int) -> ProcessPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            # "spawn": the server process runs threads, which forking would copy in an unknown state.
            _pools[workers] = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_up
            )
        return _pools[workers]


def _ready() -> bool:
    return True


def start(workers: int) -> None:
    """Start the worker processes now; they load madmom's networks in the background."""
    pool = _pool(workers)
    for _ in range(workers):
        pool.submit(_ready)


def analyse_in_worker(kind: str, clip: AudioClip, workers: int) -> BaseModel:
    """Run one DSP analysis (a kind of `model.dsp.capabilities.CAPABILITIES`) in a worker process."""
    capability(kind)  # refuse an unknown kind here, not in the worker
    try:
        return _pool(workers).submit(_analyse, kind, clip).result()
    except BrokenProcessPool as exc:
        with _pools_lock:  # a crashed worker (e.g. out of memory) breaks the pool: start afresh next time
            _pools.pop(workers, None)
        raise BackendError(
            "A DSP worker process died during the analysis (out of memory?). Try a shorter window "
            "(offset_s/duration_s) or call again."
        ) from exc
