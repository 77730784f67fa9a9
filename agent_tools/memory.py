"""One memory budget for the whole server: its process, its DSP worker processes and every call in flight.

Each call's memory is estimated from the file header before anything is decoded
(`model.audio.AudioLimits.window_bytes`): the decoded window, and on a cache miss
the analysis (its 44.1 kHz copy and madmom's working memory). A call reserves its
part before it spends it and waits while the reservations of running calls plus
the server's resident memory would exceed the budget; a call that could not fit
even alone is refused with the longest window that fits. Per-call budgets alone
did not bound the server: two long analyses at once reached about 3 GB.

The server's own memory (Python, madmom's networks in each worker, a loaded
model) is read from /proc whenever no reservation is outstanding, so what a
finished analysis left resident (the allocator keeps some) counts against later calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_tools.waiting import wait_s, woken_by
from model.errors import BackendError

MiB = 1024 * 1024


class MemoryWaitAbandoned(BackendError):
    """The call was abandoned (timed out) while it waited for memory."""


def process_tree_rss(pid: int | None = None, max_age_s: float | None = None) -> int:
    """Resident bytes of a process and all its descendants (its DSP workers); Linux /proc, else the
    process's own peak (getrusage), the best this platform tells. The list of descendants may be up to
    `max_age_s` old (default TREE_REFRESH_S)."""
    pid = os.getpid() if pid is None else pid
    if not Path(f"/proc/{pid}/statm").exists():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return sum(_rss_bytes(member) for member in _members(pid, TREE_REFRESH_S if max_age_s is None else max_age_s))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/PID/task/*/children), those still alive."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:  # the task or process ended meanwhile
                continue
    return found


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_tree_seen: dict[int, tuple[float, list[int]]] = {}
TREE_REFRESH_S = 2.0  # walking a server's ~70 threads for children costs about 2 ms: not on every call


def _members(pid: int, max_age_s: float) -> list[int]:
    seen = _tree_seen.get(pid)
    if seen is None or time.monotonic() - seen[0] > max_age_s:
        seen = _tree_seen[pid] = (time.monotonic(), process_tree(pid))
    return seen[1]


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):  # the process ended meanwhile
        return 0


def return_freed_memory() -> None:
    """Give memory freed by an analysis back to the system (glibc keeps freed heap, and the resident size
    read as the server's own memory would otherwise keep what the last analysis used); no-op elsewhere."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_libc = _load_libc()


class MemoryBudget:
    """Reservations against `total_bytes` for the whole process tree; thread-safe.

    `resident` measures what the server holds (default: this process tree's RSS); it is read again each
    time a reservation starts with none outstanding. What the analyzer keeps resident between analyses
    (madmom's last arrays: 1.1 GB after a 170 s song) is not counted as the server's own: the next analysis
    reuses it (measured: a second 170 s analysis raised the peak 138 MB above the first), and its
    reservation, an estimate above the measured peaks, covers it. That part is estimated as the most the
    resident size grew over one analysis, at most what the caller says is reusable (the toolbox: the
    reservation less madmom's fixed part, so the first analysis' one-time set-up stays the server's own).

    Two kinds of reservation: a call's decoded window (held until the call ends) and its analysis (held while
    it runs). An analysis is admitted whenever no other analysis runs, whatever the decoded windows hold: those
    belong to calls waiting for their own analysis, so waiting for them could wait forever.
    """

    def __init__(self, total_bytes: int, resident=process_tree_rss, host_bytes: int = 0):
        self.total_bytes = int(total_bytes)
        self._resident = resident
        # What the process held before the toolbox existed (the interpreter and its imports for tinymu-mcp, a
        # test runner or an agent framework when the toolbox is a library) is not the toolbox's to budget.
        self.host_bytes = int(host_bytes)
        self._baseline = 0
        self._reserved = 0
        self._analyses = 0
        self._kept = 0  # what the analyzer keeps resident between analyses (see above)
        self._before_analysis = 0
        self.most_reserved_bytes = 0  # the most reserved at once so far (benchmarks and tests read it)
        self._changed = threading.Condition()

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    def available_alone(self) -> int:
        """What one call could reserve with nothing else running: the budget less the server's own memory."""
        with self._changed:
            if self._reserved == 0:
                # A refusal rests on this: the list of worker processes is read afresh (workers start at any time).
                self._measure_baseline(fresh=True)
            return max(0, self.total_bytes - self._baseline)

    def _measure_baseline(self, fresh: bool = False) -> None:
        resident = self._resident(max_age_s=0.0) if fresh and self._resident is process_tree_rss else self._resident()
        self._baseline = max(0, resident - self._kept - self.host_bytes)

    def own_bytes(self) -> int:
        """What the toolbox holds now besides reservations (resident, less the host's and the analyzer's kept part)."""
        with self._changed:
            self._measure_baseline()
            return self._baseline

    def acquire(self, nbytes: int, abandoned: threading.Event | None = None, what: str = "the call",
                leave_free: int = 0, analysis: bool = False) -> int:
        """Reserve `nbytes` until `release(nbytes)`; wait while they do not fit beside the reservations of
        running calls (and `leave_free` bytes, which analyses keep free for the decoding of cache hits).
        With nothing else reserved a request is always admitted (the caller checked it against
        `available_alone`; the server's resident memory is a measurement), so no call waits forever;
        neither does an analysis (`analysis=True`) when no other analysis runs."""
        nbytes = max(0, int(nbytes))
        # Asleep until a reservation is released or the call is abandoned (agent_tools.waiting), not polling.
        with self._changed, woken_by(abandoned, self._changed):
            while True:
                if self._reserved == 0:
                    self._measure_baseline()
                    break
                if analysis and self._analyses == 0:
                    break
                if self._baseline + self._reserved + nbytes + leave_free <= self.total_bytes:
                    break
                if abandoned is not None and abandoned.is_set():
                    raise MemoryWaitAbandoned(f"the call was abandoned (timed out) while {what} waited for memory")
                self._changed.wait(timeout=wait_s(abandoned))
            if analysis and self._analyses == 0:
                self._before_analysis = self._resident()
            self._reserved += nbytes
            self._analyses += analysis
            self.most_reserved_bytes = max(self.most_reserved_bytes, self._reserved)
        return nbytes

    def release(self, nbytes: int, analysis: bool = False, reusable: int | None = None) -> None:
        """Give `nbytes` back; for an analysis, `reusable` is the most of what it leaves resident that the next
        analysis reuses (default: all of `nbytes`)."""
        with self._changed:
            self._reserved = max(0, self._reserved - max(0, int(nbytes)))
            if analysis and self._analyses == 1:
                grown = self._resident() - self._before_analysis
                self._kept = max(self._kept, min(grown, int(nbytes if reusable is None else reusable)))
            self._analyses = max(0, self._analyses - analysis)
            self._changed.notify_all()

    @contextmanager
    def analysing(self, nbytes: int, abandoned: threading.Event | None = None, what: str = "the analysis",
                  leave_free: int = 0, reusable: int | None = None) -> Iterator[None]:
        """Hold an analysis' reservation while the block runs (see `release` for `reusable`)."""
        held = self.acquire(nbytes, abandoned, what, leave_free, analysis=True)
        try:
            yield
        finally:
            self.release(held, analysis=True, reusable=reusable)
