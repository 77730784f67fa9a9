"""madmom analyses in worker processes, for servers under concurrent load.

Within one process the analyzer serialises its calls (one lock around the
madmom processors) and its Python parts hold the GIL, so while a long
analysis runs, every other request, cache hits included, waits for the
interpreter. Worker processes, each with its own warm processors, analyse in
parallel and leave the server's event loop free. Each pool is started once
per process (workers load madmom's networks at start) and reused.

Each worker is a one-process executor of its own, so one worker can be
killed without breaking the others' calls: a call that is abandoned (timed
out) while its analysis runs kills that worker and starts a new one, which
gives the call's compute slot back at once (a running madmom analysis cannot
be interrupted any other way). A worker that died (killed, out of memory) is
replaced the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from pydantic import BaseModel

from agent_tools.memory import return_freed_memory
from model.audio import AudioClip
from model.dsp.capabilities import capability
from model.errors import BackendError


class AnalysisAbandonedError(BackendError):
    """The call was abandoned (timed out) while its analysis ran; its worker was killed to free its slot."""


POLL_S = 0.05  # how soon an abandoned call's worker is killed


# Workers run at a lower CPU priority than the server process (niceness added to the server's), so the event
# loop, which takes in requests and gives cached answers, gets a core when it needs one while analyses fill both.
# Nice rather than SCHED_IDLE: an idle-class worker starves outright while anything else wants the CPU.
WORKER_NICENESS = 10


def _warm_up(parent: int) -> None:
    from model.dsp.analyzer import default_analyzer

    # Relative to the server process, not to the thread that spawned this worker (a tool call's thread,
    # which runs below the server's priority itself: mcp_server.server.CALL_NICENESS).
    os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, parent) + WORKER_NICENESS))
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


def _new_worker(parent: int) -> ProcessPoolExecutor:
    # "spawn": the server process runs threads, which forking would copy in an unknown state.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_up,
                               initargs=(parent,))


def _kill(worker: ProcessPoolExecutor) -> None:
    """End a worker now, whatever it is doing. (Python 3.14 has `kill_workers()`; before it, the executor's
    processes are only reachable through its `_processes`.)"""
    for process in list((getattr(worker, "_processes", None) or {}).values()):
        process.kill()
    worker.shutdown(wait=False, cancel_futures=True)


class WorkerPool:
    """`size` worker processes, each lent to one analysis at a time."""

    def __init__(self, size: int):
        self.size = size
        self._parent = os.getpid()
        self._idle: queue.Queue[ProcessPoolExecutor] = queue.Queue()
        self._all: list[ProcessPoolExecutor] = []
        self._lock = threading.Lock()
        for _ in range(size):
            self._add(_new_worker(self._parent))

    def _add(self, worker: ProcessPoolExecutor) -> None:
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _replace(self, worker: ProcessPoolExecutor) -> None:
        _kill(worker)
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        fresh = _new_worker(self._parent)
        fresh.submit(_ready)  # starts it now, so it warms up before the next call needs it
        self._add(fresh)

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(pid for worker in self._all for pid in (getattr(worker, "_processes", None) or {}))

    def start(self) -> list:
        with self._lock:
            return [worker.submit(_ready) for worker in self._all]

    def _borrow(self, abandoned: threading.Event | None) -> ProcessPoolExecutor:
        # More calls than workers may be computing (max_concurrency > dsp_workers): they queue here.
        while True:
            try:
                return self._idle.get(timeout=POLL_S)
            except queue.Empty:
                if abandoned is not None and abandoned.is_set():
                    raise AnalysisAbandonedError("the call was abandoned (timed out) before its analysis started")

    def run(self, fn, *args, abandoned: threading.Event | None = None):
        """fn(*args) in a worker; when `abandoned` is set meanwhile, the worker is killed and replaced."""
        worker = self._borrow(abandoned)
        try:
            try:
                future = worker.submit(fn, *args)
            except BrokenProcessPool:  # it died while idle: nothing was lost, use a new one
                self._replace(worker)
                worker = self._borrow(abandoned)
                future = worker.submit(fn, *args)
            while True:
                try:
                    result = future.result(timeout=POLL_S)
                except FutureTimeout:
                    if abandoned is not None and abandoned.is_set():
                        self._replace(worker)
                        worker = None
                        raise AnalysisAbandonedError(
                            "the call was abandoned (timed out) during its analysis; its worker was stopped"
                        ) from None
                    continue
                self._idle.put(worker)
                worker = None
                return result
        except BrokenProcessPool as exc:
            self._replace(worker)
            worker = None
            raise BackendError(
                "A DSP worker process died during the analysis (killed, or out of memory); a new worker is "
                "started for the next call. Call again, or analyse a shorter window (offset_s/duration_s)."
            ) from exc
        finally:
            if worker is not None:  # an unexpected error (e.g. unpicklable arguments): the worker is still good
                self._idle.put(worker)


_pools: dict[int, WorkerPool] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> WorkerPool:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = WorkerPool(workers)
        return _pools[workers]


def _ready() -> bool:
    return True


def worker_pids(workers: int) -> list[int]:
    """The process ids of the pool of `workers` workers (empty until it started)."""
    with _pools_lock:
        pool = _pools.get(workers)
    return pool.pids() if pool is not None else []


def start(workers: int, wait_s: float | None = None) -> None:
    """Start the worker processes now; they load madmom's networks in the background (`wait_s`: wait up to
    that long for them to be warm)."""
    readies = _pool(workers).start()
    for ready in readies if wait_s else []:
        ready.result(timeout=wait_s)


def analyse_in_worker(kind: str, clip: AudioClip, workers: int, abandoned: threading.Event | None = None) -> BaseModel:
    """Run one DSP analysis (a kind of `model.dsp.capabilities.CAPABILITIES`) in a worker process. When
    `abandoned` is set (the call timed out) before it finishes, its worker is killed and replaced, so the
    call's compute slot and memory are free at once (`AnalysisAbandonedError`)."""
    capability(kind)  # refuse an unknown kind here, not in the worker
    return _pool(workers).run(_analyse, kind, clip, abandoned=abandoned)
