"""Stopping long computations whose caller has gone (a call that timed out).

A front end sets `cancel_event` to a `threading.Event` for each call it runs in a thread and sets the
event when the call times out. Long computations in that thread (a madmom analysis, the model's
generation) call `check()` between their stages: each network, each window, each generated token. The
thread then stops at the next stage boundary with `ComputationCancelled`, and the `with` blocks above it
give back the call's compute slot, memory reservation and locks. Nothing else can stop a thread in
Python, so a single stage (one network over one window) still runs to its end.

Without an event set (benchmarks, training, the CLI) `check()` is one context-variable read.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

from model.errors import BackendError

cancel_event: ContextVar[threading.Event | None] = ContextVar("cancel_event", default=None)


class ComputationCancelled(BackendError):
    """The computation was stopped between two stages because its call was abandoned (timed out)."""


def check(what: str) -> None:
    """Raise `ComputationCancelled` when the current call was abandoned; `what` names the stage about to start."""
    event = cancel_event.get()
    if event is not None and event.is_set():
        raise ComputationCancelled(f"the call was abandoned (timed out); stopped before {what}")
