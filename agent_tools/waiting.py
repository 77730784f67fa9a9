"""Waiting for a slot or for memory without polling, and still giving up as soon as the call is abandoned.

Each waiting call's thread used to wake every 0.05 s to see whether its call had timed out. Under load
(48 calls waiting for two compute slots) that was about 1,000 wake-ups a second, each one taking the GIL
from whoever held it, the event loop answering cached calls included. Now a waiting thread sleeps on a
condition that is notified when what it waits for is released, or when its call is abandoned
(`Abandonment.set`). A plain `threading.Event` as the abandonment flag still works: it is looked at
every FALLBACK_WAIT_S (`wait_s`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

FALLBACK_WAIT_S = 0.5


class Abandonment(threading.Event):
    """A call's abandonment flag (set when the call times out) that also wakes the conditions its thread
    waits on, so the thread gives up its place at once."""

    def __init__(self):
        super().__init__()
        self._waiting: list[threading.Condition] = []
        self._lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._lock:
            waiting = list(self._waiting)
        for condition in waiting:  # never while holding self._lock: a waiter holds its condition, then takes it
            with condition:
                condition.notify_all()

    @contextmanager
    def waking(self, condition: threading.Condition) -> Iterator[None]:
        with self._lock:
            self._waiting.append(condition)
        try:
            yield
        finally:
            with self._lock:
                self._waiting.remove(condition)


def wait_s(abandoned: threading.Event | None) -> float | None:
    """How long to sleep on a condition before looking at `abandoned` again: until notified, unless only a
    look can tell that it was set (a plain Event)."""
    return None if abandoned is None or isinstance(abandoned, Abandonment) else FALLBACK_WAIT_S


@contextmanager
def woken_by(abandoned: threading.Event | None, condition: threading.Condition) -> Iterator[None]:
    """While the block waits on `condition`, setting `abandoned` (an `Abandonment`) notifies it."""
    if isinstance(abandoned, Abandonment):
        with abandoned.waking(condition):
            yield
    else:
        yield


class Slots:
    """A bounded semaphore whose waiters sleep until a slot is released or their call is abandoned."""

    def __init__(self, count: int):
        self._count = self._free = count
        self._changed = threading.Condition()

    def acquire(self, blocking: bool = True, timeout: float | None = None,
                abandoned: threading.Event | None = None) -> bool:
        """Take a slot; False when none came free in `timeout`, or the call was abandoned meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed, woken_by(abandoned, self._changed):
            while self._free == 0 or (abandoned is not None and abandoned.is_set()):
                left = wait_s(abandoned)
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    left = remaining if left is None else min(left, remaining)
                if not blocking or (left is not None and left <= 0) or (abandoned is not None and abandoned.is_set()):
                    if self._free:
                        self._changed.notify()  # a wake-up meant for a waiter that takes the slot
                    return False
                self._changed.wait(left)
            self._free -= 1
            return True

    def release(self) -> None:
        with self._changed:
            if self._free >= self._count:
                raise ValueError("Slots released too many times")
            self._free += 1
            self._changed.notify()  # one waiter; one that leaves instead of taking it passes the wake-up on
