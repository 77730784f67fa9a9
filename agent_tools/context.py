"""What a tool function runs with: the toolbox it may call back into, and the progress
reporter of the current call.

`MusicTools` (agent_tools.tools) satisfies `Toolbox`; the feature modules built on
it (recommend, similarity) depend on this protocol instead of importing the toolbox,
so the toolbox can import them without a cycle.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent_tools.cache import ResultCache
    from agent_tools.config import Settings
    from agent_tools.schemas import AudioInfo
    from model.audio import AudioClip
    from model.dsp.analyzer import MusicAnalyzer

ProgressCallback = Callable[[float, float, str], None]
progress_callback: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar(
    "progress_callback", default=None
)


def report_progress(done: float, total: float, message: str) -> None:
    """Tell the front end how far the current call is (no-op when nobody listens)."""
    callback = progress_callback.get()
    if callback is not None:
        callback(done, total, message)


class Toolbox(Protocol):
    """The parts of the toolbox that feature modules use."""

    settings: Settings
    cache: ResultCache

    @property
    def analyzer(self) -> MusicAnalyzer: ...

    @property
    def model(self) -> Any: ...

    def load(self, audio: str, offset_s: float = 0.0, duration_s: float | None = None) -> tuple[AudioClip, AudioInfo]: ...

    def measure(self, kind: str, clip: AudioClip, compute: Callable | None = None) -> Any: ...
