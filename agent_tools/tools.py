"""The tool functions: one toolbox whose methods every front end (MCP, LangChain, CLI) calls.

`MusicTools` holds what must exist once per process: the settings, the warm
madmom processors (`MusicAnalyzer`), the result cache and the lazily loaded
music-language model. Its public methods are the tools: flat, typed
arguments whose descriptions and docstrings are what an agent's LLM reads.

`TOOL_SPECS` lists them with their behaviour hints; the MCP server and the
LangChain toolkit both iterate it, so a tool is defined exactly once.

Every method is synchronous and may block for seconds (decoding, madmom, the
model): front ends run them in worker threads. Long calls report progress
through `agent_tools.context.progress_callback`, a context variable a front end may set.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
from pydantic import Field, Strict

from agent_tools.cache import ResultCache
from agent_tools.config import Settings
from agent_tools.context import report_progress
from agent_tools.digest import bounded
from agent_tools.dsp_workers import analyse_in_worker
from agent_tools.inputs import audio_kind, resolve_audio
from agent_tools.memory import MemoryBudget, MiB, process_tree_rss, return_freed_memory
from agent_tools.recommend import (
    AttributesReport,
    ClipPlot,
    attributes_report,
    clip_plot,
    index_report,
    similar_results,
)
from agent_tools.router import route
from agent_tools.schemas import (
    AudioFile,
    AudioFileList,
    AudioInfo,
    BeatsReport,
    ChordsReport,
    ClipReport,
    KeyReport,
    ModelAnswer,
    ModelBackend,
    MultipleChoice,
    MusicCaption,
    OptionProbability,
    RoutedAnswer,
    SectionsReport,
    TempoReport,
)
from agent_tools.similarity import (
    IndexReport,
    KeyMode,
    Method,
    SimilarResults,
    TempoConstraint,
)
from agent_tools.waiting import Slots
from model.audio import (
    ANALYSIS_BASE_BYTES,
    MODEL_RATE,
    AudioClip,
    AudioLimits,
    load_audio,
)
from model.cancel import cancel_event
from model.dsp import capabilities
from model.dsp.analyzer import MusicAnalyzer, default_analyzer
from model.errors import BackendError, InputError, ModelServiceError
from model.lm.measurements import Measurements
from model.lm.muchomusic import LETTERS
from model.lm.prompts import CAPTION_PROMPT, with_measurements

# --- argument types shared by the tools (their descriptions reach the agent's LLM) ---

Audio = Annotated[
    str,
    Field(
        description=(
            "The audio to analyse: an absolute file path under the server's allowed folders "
            "(or a path relative to the first allowed folder), a data:audio/<format>;base64,<data> URI, "
            "or an https:// URL if the server allows URLs. wav, flac, ogg and mp3 are supported."
        )
    ),
]
# Strict: a JSON number only (true is not 1.0, "5" is not 5); finite: Infinity, NaN and 1e400 are refused
# by the schema; the bound keeps every window computation in ordinary integers.
MAX_SECONDS = 1e7
Offset = Annotated[
    float, Strict(), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                           description="Start of the window to analyse, in seconds from the start of the file.")
]
Duration = Annotated[
    Annotated[float, Strict()] | None,
    Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False,
          description="Length of the window in seconds; omit to analyse to the end. Use it for long files."),
]
MAX_QUESTION_CHARS = 2000
Question = Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS,
                                description="A question about the music, in plain language.")]
# The model labels options with LETTERS (A-H): the schema advertises exactly what it can score.
MAX_OPTIONS = len(LETTERS)
Options = Annotated[
    list[Annotated[str, Field(max_length=200)]],
    Field(min_length=2, max_length=MAX_OPTIONS, description=f"The answer options (2 to {MAX_OPTIONS}), in order."),
]

# Set by a front end for each call; set() means the caller gave up (the call timed out), so the call's
# thread starts no more heavy work and gives its place in the queue for a compute slot to live calls. It is
# the model layer's cancellation token itself (`model.cancel`), so a madmom analysis or a generation running in
# the call's thread stops at its next stage boundary too and gives its slot and memory back.
call_abandoned: ContextVar[threading.Event | None] = cancel_event


# Set by a front end for each call of a session whose client named its roots: that session's settings
# (the server's, with the roots narrowed or replaced by the client's; see mcp_server.server.ClientRoots).
call_settings: ContextVar[Settings | None] = ContextVar("call_settings", default=None)


class CallAbandonedError(BackendError):
    """The call was abandoned by its caller (timed out) before its heavy work started."""


# Set while a front end asks a tool for an answer from memory only (`MusicTools.answer_from_cache`): the tool may
# open the file under the roots and look its window up in the in-memory cache, nothing more.
cache_only: ContextVar[bool] = ContextVar("cache_only", default=False)


class CacheLookupTimeoutError(BackendError):
    """A cache lookup did not finish within `cache_lookup_timeout_s` (the file's folder did not answer)."""


# Threads of their own for cache lookups, so a lookup never waits for a thread behind analyses, and a file system
# that hangs an open() stalls at most these threads, never the event loop that serves every other request.
CACHE_LOOKUP_THREADS = 4


class NotCachedError(Exception):
    """Raised in cache-only mode where answering would take more than a lookup in memory (decoding, analysing,
    reading the disk cache, a download): the front end then runs the call as usual."""


# What a bare server holds when it makes its toolbox (tinymu-mcp: about 160 MB, the interpreter and imports),
# with room to spare; a process holding more embeds the toolbox, and what it held is not the toolbox's to budget.
HOST_ALLOWANCE_BYTES = 512 * MiB

# Analyses leave this much of the server's memory budget free, so the decoding of cache hits (about 1 MB per
# 5 s of 44.1 kHz audio) is never queued behind long analyses that fill the rest.
DECODING_ROOM_BYTES = 64 * MiB


WINDOWS_REMEMBERED = 4096
# The last progress step of a call answered from the cache without decoding: a front end may send such a
# call's progress not at all (its answer comes at once).
ANSWERED_FROM_CACHE = "answered from the cache"


def file_window(resolved, offset_s: float, duration_s: float | None) -> tuple | None:
    """The identity of a window of a file, from its opened descriptor: device, inode, size, modification and
    change times (any write changes the change time) and the window; None for downloads and data URIs."""
    if resolved.file is None:
        return None
    try:
        st = os.fstat(resolved.file.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, float(offset_s),
            None if duration_s is None else float(duration_s))


def window_decode_bytes(readable, offset_s: float, duration_s: float | None) -> int:
    """What decoding the window costs (mono float32 samples, plus all channels at once for MP3, which
    `load_audio` reads in one piece), from the header alone; 0 when the header cannot be read (decoding
    then refuses the file with the reason). The file is left where it was."""
    source = io.BytesIO(readable) if isinstance(readable, (bytes, bytearray)) else readable
    position = source.tell() if hasattr(source, "tell") else None
    try:
        with sf.SoundFile(source) as f:
            rate, total, channels, whole = f.samplerate, f.frames, f.channels, f.format in ("MP3", "MPEG")
    except Exception:  # noqa: BLE001 - load_audio reports what is wrong with the file
        return 0
    finally:
        if position is not None:
            source.seek(position)
    start = round(offset_s * rate)
    frames = max(0, total - start if duration_s is None else min(round(duration_s * rate), total - start))
    return frames * 4 * (1 + (channels if whole else 0))


def argument_window(audio: str, offset_s, duration_s) -> tuple:
    """A call's `audio` argument and window, as the tools' defaults read them."""
    return (audio, float(offset_s or 0.0), None if duration_s is None else float(duration_s))


def analysis_bytes(clip: AudioClip, limits: AudioLimits) -> int:
    """What analysing the decoded `clip` costs beyond its samples (see AudioLimits.window_bytes)."""
    frames = len(clip.samples)
    return max(0, limits.window_bytes(frames, clip.sample_rate) - frames * 4)

@dataclass(frozen=True)
class ToolSpec:
    """How a front end should expose one `MusicTools` method.

    read_only / idempotent: the tool changes nothing and the same call gives the same result.
    reads_audio: the tool takes an `audio` argument, so it may fetch URLs when the server allows them
    (the MCP open-world hint is `reads_audio and settings.allow_urls`).
    uses_model: needs the music-language model (fails with ModelUnavailableError without one).
    answers_from_cache: a window of an unchanged file analysed before is answered from memory with no heavy work
    (`MusicTools.answer_from_cache`), so a front end may ask for that answer before queueing the call.
    """

    name: str
    title: str
    read_only: bool = True
    idempotent: bool = True
    reads_audio: bool = True
    uses_model: bool = False
    answers_from_cache: bool = False

    def bind(self, tools: MusicTools) -> Callable:
        return getattr(tools, self.name)

    def open_world(self, settings: Settings) -> bool:
        return self.reads_audio and settings.allow_urls


TOOL_SPECS: list[ToolSpec] = [
    ToolSpec("analyze_clip", "Analyse a music clip (tempo, beats, meter, key, chords)", answers_from_cache=True),
    ToolSpec("estimate_tempo", "Estimate tempo (BPM)", answers_from_cache=True),
    ToolSpec("track_beats", "Track beats, downbeats and meter", answers_from_cache=True),
    ToolSpec("detect_key", "Detect the musical key", answers_from_cache=True),
    ToolSpec("recognize_chords", "Recognise chords", answers_from_cache=True),
    ToolSpec("detect_sections", "Find song sections and repeats", answers_from_cache=True),
    ToolSpec("ask_about_music", "Ask the music-language model about a clip", uses_model=True),
    ToolSpec("describe_music", "Describe a clip in words", uses_model=True),
    ToolSpec("choose_answer", "Answer a multiple-choice question about a clip", uses_model=True),
    ToolSpec("answer_music_question", "Answer any music question (routed to DSP or the model)", uses_model=True),
    # recommendation and pictures (agent_tools/recommend.py, agent_tools/similarity.py)
    ToolSpec("clip_attributes", "Recommendation attributes (tempo, key, loudness, energy, danceability, tags)"),
    ToolSpec("index_folder", "Index a folder of music for similarity search", read_only=False, reads_audio=False),
    ToolSpec("find_similar", "Find indexed clips similar to a clip, with constraints"),
    ToolSpec("plot_clip", "Draw a clip: spectrogram, chords, beats and downbeats"),
    ToolSpec("list_audio_files", "List the audio files under the allowed folders", reads_audio=False),
]


class MusicTools:
    """The toolbox: one per process, safe to call from several threads at once."""

    def __init__(self, settings: Settings | None = None, *, analyzer: MusicAnalyzer | None = None, model=None):
        self._settings = settings or Settings.from_env()
        self.cache = ResultCache(self.settings.cache_dir)
        self._analyzer = analyzer
        self._model = model
        self._model_lock = threading.Lock()
        # Bounds the heavy work (madmom, the model) running at once. Decoding has slots of its own (as
        # many): it is bounded too, but a cache hit, which needs only the decoded hash, never queues
        # behind a long analysis.
        self._compute_slots = Slots(max(1, self.settings.max_concurrency))
        self._decode_slots = Slots(max(1, self.settings.max_concurrency))
        # One memory budget for the whole server (this process, its DSP workers, every call): each call reserves
        # its decoded window before decoding, and its analysis before analysing (agent_tools.memory). A process
        # that already held more than a bare server when the toolbox was made embeds it (a test runner, an agent
        # framework): what it held then is its host's, not counted.
        held = process_tree_rss()
        host = held if held > HOST_ALLOWANCE_BYTES else 0
        self.memory = MemoryBudget(int(self._settings.server_memory_mb * MiB), host_bytes=host)
        # Which decoded window an unchanged file's window is (by the opened file's identity), so a cache hit on
        # a file is answered without decoding it again: decoding and hashing a 4-minute song took 150 ms of
        # the server's CPU per cache hit, 4.5 of the 8.5 ms on a 5 s clip.
        self._windows: OrderedDict[tuple, AudioInfo] = OrderedDict()
        self._windows_lock = threading.Lock()
        # The `audio` arguments (as sent, with their window) whose file was decoded here: only those can be in
        # `_windows`, so a lookup for any other is skipped on the event loop (see `answer_from_cache_async`).
        self._decoded_arguments: OrderedDict[tuple, None] = OrderedDict()
        self._arguments_lock = threading.Lock()  # for writers; the event loop reads without it (see there)
        self._lookups = ThreadPoolExecutor(CACHE_LOOKUP_THREADS, thread_name_prefix="tinymu-cache-lookup")

    # --- shared plumbing -------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The current call's settings: the toolbox's own, or its session's (client roots) when a front end set them."""
        return call_settings.get() or self._settings

    @property
    def analyzer(self) -> MusicAnalyzer:
        """The madmom processors: the process-wide analyzer unless one was given."""
        if self._analyzer is None:
            self._analyzer = default_analyzer()
        return self._analyzer

    @property
    def model(self):
        """The music-language model (embedded, or the remote service when TINYMU_URL is set), loaded once."""
        with self._model_lock:
            if self._model is None:
                settings = self.settings
                if settings.model_url:
                    from model.service.client import RemoteMusicLM

                    # Its own timeout, well inside the call's, so a hung service is reported as such and a
                    # routed answer still has time to return its DSP part.
                    self._model = RemoteMusicLM(settings.model_url, token=settings.model_token,
                                                timeout_s=min(settings.model_timeout_s, settings.call_timeout_s / 2))
                else:
                    from model.lm import smollm2
                    from model.lm.engine import get_engine

                    smollm2.use_weights_dir(settings.weights_dir)
                    self._model = get_engine(settings.checkpoint, settings.device, settings.quantize_weights,
                                             settings.threads)
            return self._model

    def load(self, audio: str, offset_s: float = 0.0, duration_s: float | None = None, *,
             dsp: bool = True) -> tuple[AudioClip, AudioInfo]:
        """Resolve and decode the `audio` argument of a call: the clip and what it is.

        dsp: the clip will be analysed by madmom, whose working memory counts in the call's budget
        (False: only the model listens, to the first seconds, so decoding is all that counts)."""
        report_progress(0, 3, "fetching audio")
        resolved = resolve_audio(audio, self.settings)
        return self._decode(resolved, offset_s, duration_s, dsp, audio)

    def _decode(self, resolved, offset_s: float, duration_s: float | None, dsp: bool,
                audio: str | None = None) -> tuple[AudioClip, AudioInfo]:
        """`load` once the audio is resolved: decode its window within the memory budget (closes `resolved`).
        `audio`: the argument as sent, remembered with the window (`_decoded_arguments`)."""
        if cache_only.get():  # never heavy work where only a lookup was asked for (e.g. on an event loop)
            resolved.close()
            raise NotCachedError("decoding is not a cache lookup")
        report_progress(1, 3, "decoding audio")
        window = file_window(resolved, offset_s, duration_s)
        try:
            limits = self.settings.audio_limits if dsp else replace(self.settings.audio_limits,
                                                                     analysis_bytes_per_second=0)
            # A call gets at most what the server's budget leaves beside the server itself; beyond that it is
            # refused (with the longest duration_s that fits) before anything is decoded.
            alone = self.memory.available_alone()
            if limits.max_memory_bytes is None or alone < limits.max_memory_bytes:
                limits = replace(limits, max_memory_bytes=alone)
            held = self.memory.acquire(window_decode_bytes(resolved.readable, offset_s, duration_s),
                                       call_abandoned.get(), "decoding")
            try:
                with self._slot(self._decode_slots, "decoding"):
                    # From the descriptor opened under the root (never the path again), within the memory budget.
                    clip = load_audio(resolved.readable, offset_s=offset_s, duration_s=duration_s, limits=limits,
                                      name=resolved.label)
            except BaseException:
                self.memory.release(held)
                raise
            # The decoded window stays reserved as long as the clip lives (the call, or a queue for a slot).
            weakref.finalize(clip, self.memory.release, held)
        finally:
            resolved.close()
        if clip.is_silent:
            # The DSP would only report "nothing found"; telling the agent plainly lets it fix the call.
            raise InputError(
                f"{resolved.label}: the analysed window ({clip.offset_s:.1f}-{clip.offset_s + clip.duration_s:.1f} s) "
                f"is silent (peak {20 * np.log10(max(clip.peak, 1e-12)):.0f} dBFS), so there is no tempo, key or "
                "chords to measure. Check the file, or choose another offset_s/duration_s."
            )
        info = AudioInfo.from_clip(clip, resolved.label)
        if window is not None:
            with self._windows_lock:
                self._windows[window] = info
                while len(self._windows) > WINDOWS_REMEMBERED:
                    self._windows.popitem(last=False)
            if audio is not None:
                key = argument_window(audio, offset_s, duration_s)
                with self._arguments_lock:
                    self._decoded_arguments[key] = None
                    self._decoded_arguments.move_to_end(key)
                    while len(self._decoded_arguments) > WINDOWS_REMEMBERED:
                        self._decoded_arguments.popitem(last=False)
        return clip, info

    def _measured(self, kind: str, audio: str, offset_s: float, duration_s: float | None):
        """DSP result `kind` of the window and what was analysed. A window of an unchanged file whose result is
        cached is answered from the cache without decoding the file again (the file is still opened through
        the roots' checks: its identity is read from the opened descriptor)."""
        only_cached = cache_only.get()
        if only_cached and not (isinstance(audio, str) and audio_kind(audio) == "file"):
            raise NotCachedError("a data URI or a URL is decoded or downloaded before its cache key is known")
        report_progress(0, 3, "fetching audio")
        resolved = resolve_audio(audio, self.settings)
        try:
            window = file_window(resolved, offset_s, duration_s)
            with self._windows_lock:
                known = self._windows.get(window) if window is not None else None
            if known is not None:
                params = {"offset_s": known.offset_s} if known.offset_s else {}
                cached = self.cache.get(kind, known.sha256, params, capabilities.capability(kind).result,
                                        memory_only=only_cached)
                if cached is not None:
                    resolved.close()
                    report_progress(3, 3, ANSWERED_FROM_CACHE)
                    return cached, known.model_copy(update={"source": resolved.label})
            if only_cached:
                raise NotCachedError("this window is not in the in-memory cache")
        except BaseException:
            resolved.close()
            raise
        clip, info = self._decode(resolved, offset_s, duration_s, True, audio)
        return self.measure(kind, clip), info

    def answer_from_cache(self, name: str, kwargs: dict, settings: Settings | None = None):
        """Tool `name`'s answer if memory has it: a window of an unchanged local file analysed before, its result
        in the in-memory cache. None when the call needs more (decoding, analysing, the disk cache, a download)
        or is refused: the front end then runs it as usual, which gives the answer or the refusal.

        It costs a few system calls (the file is opened under the roots' checks and fstat'ed, no audio is read)
        and a copy of the result, so a front end may call it on its event loop before the call takes a worker
        thread, a compute slot or memory: a cache hit never queues behind analyses, nor behind other requests'
        hops between the event loop and worker threads. `settings`: the session's (see `call_settings`)."""
        if not TOOLS_ANSWERING_FROM_CACHE.get(name):
            return None
        token, session = cache_only.set(True), call_settings.set(settings)
        try:
            return getattr(self, name)(**kwargs)
        except Exception:  # noqa: BLE001 - NotCachedError; refusals and anything unforeseen are the ordinary call's to report
            return None
        finally:
            call_settings.reset(session)
            cache_only.reset(token)

    async def answer_from_cache_async(self, name: str, kwargs: dict, settings: Settings | None = None):
        """`answer_from_cache` for a front end's event loop: run in the toolbox's own cache-lookup threads (never
        behind analyses), within `cache_lookup_timeout_s`. The lookup opens the file, which a hung network file
        system can block for minutes: on the loop that stalled every request. Raises `CacheLookupTimeoutError`
        (with what to do) when the lookup takes longer; its thread is left to finish on its own. A lookup that
        could not even start in time (every lookup thread stuck elsewhere) gives None: the ordinary call runs."""
        if not TOOLS_ANSWERING_FROM_CACHE.get(name):
            return None
        if not self.may_answer_from_cache(kwargs):
            # Never decoded here: memory cannot have it. Skipping the hop to a lookup thread and back saves the
            # event loop two turns per new call; under load those turns delayed the cached calls queued behind.
            return None
        timeout = (settings or self.settings).cache_lookup_timeout_s
        started = threading.Event()

        def look_up():
            started.set()
            return self.answer_from_cache(name, kwargs, settings)

        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._lookups, look_up), timeout)
        except TimeoutError:
            if not started.is_set():
                # Queued behind lookups stuck on another (hung) folder: this file is not the one to blame, so the
                # call goes the ordinary way (a runner thread, under the call's timeout).
                return None
            audio = kwargs.get("audio")
            what = f"{audio[:200]}: " if isinstance(audio, str) and audio_kind(audio) == "file" else ""
            raise CacheLookupTimeoutError(
                f"{what}opening the file to look its answer up took over {timeout:g} s: its folder is not "
                "answering (a hung or very slow network file system?). Check that the file is reachable, or copy "
                "it to a local folder; TINYMU_CACHE_LOOKUP_TIMEOUT_S sets this limit."
            ) from None

    def may_answer_from_cache(self, kwargs: dict) -> bool:
        """False when a call's `audio` argument was never decoded here with this window, so `answer_from_cache`
        would find nothing (no system call: safe on an event loop). True does not promise an answer: the file
        may have changed, or a relative path may name another file in another session."""
        audio = kwargs.get("audio")
        if not isinstance(audio, str):
            return False
        key = argument_window(audio, kwargs.get("offset_s", 0.0), kwargs.get("duration_s"))
        # No lock: the event loop must never wait for a thread; a membership test is one atomic dict operation
        # under the GIL, and a write racing with it only makes this call go the ordinary way.
        return key in self._decoded_arguments

    @contextmanager
    def computing(self):
        """Hold one of the `max_concurrency` compute slots while doing heavy work (DSP, model inference)."""
        with self._slot(self._compute_slots, "computing"):
            yield

    @contextmanager
    def _slot(self, slots: Slots, what: str):
        """Hold one of `slots`; while waiting (asleep until a slot is released), give up as soon as the call is
        abandoned (timed out), so timed-out calls never take a slot a live call is waiting for."""
        abandoned = call_abandoned.get()
        if not slots.acquire(abandoned=abandoned):
            raise CallAbandonedError(f"the call was abandoned (timed out) before {what} started")
        try:
            if abandoned is not None and abandoned.is_set():
                raise CallAbandonedError(f"the call was abandoned (timed out) before {what} started")
            yield
        finally:
            slots.release()

    def _dsp(self, kind: str, clip: AudioClip) -> Callable:
        """How to compute DSP analysis `kind` of `clip`: in a worker process when configured, else here.

        A call that times out while its analysis runs: in a worker, the worker is killed and replaced, so the
        call's compute slot and memory are free at once (`dsp_workers.AnalysisAbandonedError`). Here, in the
        calling thread, the analyzer checks `call_abandoned` between its stages (each network step, each
        window) and stops at the next one (`model.cancel.ComputationCancelled`), which releases the analyzer's
        lock, the memory reservation and the slot; the features computed so far stay in the analyzer's memo, so
        a retry of the same window goes on from there."""
        if self.settings.dsp_workers:
            return lambda: analyse_in_worker(kind, clip, self.settings.dsp_workers, call_abandoned.get())
        analyzer = self.analyzer
        return lambda: capabilities.run(analyzer, kind, clip)

    def measure(self, kind: str, clip: AudioClip, compute: Callable | None = None):
        """A DSP result from the cache, or computed (and cached) now.

        `kind` is a row of `model.dsp.capabilities.CAPABILITIES` ("analysis" is everything);
        `compute` overrides how it is computed (default: the madmom analyzer, in worker
        processes if configured).
        """
        if cache_only.get():
            raise NotCachedError("measuring is not a cache lookup")
        result_cls = capabilities.capability(kind).result
        compute = compute or self._dsp(kind, clip)
        report_progress(2, 3, f"measuring {kind}")
        # Results carry file times, so a window's offset is part of the key.
        params = {"offset_s": round(clip.offset_s, 3)} if clip.offset_s else {}

        def compute_in_slot():
            with self.computing():
                # Another call may have computed it while this one waited for a slot.
                cached = self.cache.get(kind, clip.sha256, params, result_cls)
                if cached is not None:
                    return cached
                # The analysis' memory (its 44.1 kHz copy and madmom's working memory), leaving room for the
                # decoding of cache hits, which are answered while analyses fill the budget.
                needed = analysis_bytes(clip, self.settings.audio_limits)
                with self.memory.analysing(needed, call_abandoned.get(), f"measuring {kind}",
                                           leave_free=DECODING_ROOM_BYTES, reusable=needed - ANALYSIS_BASE_BYTES):
                    try:
                        return compute()
                    finally:
                        return_freed_memory()  # so the server's resident size, read as its own, is what it holds

        result = self.cache.get_or_compute(kind, clip.sha256, params, result_cls, compute_in_slot)
        report_progress(3, 3, "done")
        return result

    # --- DSP tools ---------------------------------------------------------------------

    def analyze_clip(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> ClipReport:
        """Measure everything the DSP knows about a music clip in one call: tempo (BPM), beats,
        downbeats and meter (e.g. 3/4 or 4/4), key (e.g. A minor) and timed chords (e.g. A:min F:maj C:maj G:maj).

        Use it first for any question about how a piece is built, or when you need several of these facts;
        it costs about as much as two single measurements, and its result is cached by content.
        Prefer a single tool (estimate_tempo, detect_key, ...) when only one fact is needed. For
        instruments, genre, mood or a description use describe_music or ask_about_music instead.
        """
        analysis, info = self._measured("analysis", audio, offset_s, duration_s)
        return ClipReport(summary=analysis.summary, audio=info, analysis=analysis)

    def estimate_tempo(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> TempoReport:
        """Estimate the tempo in beats per minute (BPM), with a confidence and the half/double-tempo
        alternatives a listener might also report.

        Use it for "how fast", "what BPM", "is it slow/fast". For beat positions, downbeats or
        the time signature use track_beats; for everything at once use analyze_clip.
        """
        tempo, info = self._measured("tempo", audio, offset_s, duration_s)
        return TempoReport(summary=tempo.summary, audio=info, tempo=tempo)

    def track_beats(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> BeatsReport:
        """Find the beat times, the downbeats (first beat of each bar) and the meter (3/4 or 4/4), in seconds.

        Use it to align things to the music, count bars, or tell a waltz (3/4) from common time (4/4).
        For just the BPM use estimate_tempo.
        """
        beats, info = self._measured("beats", audio, offset_s, duration_s)
        return BeatsReport(summary=beats.summary, audio=info, beats=beats)

    def detect_key(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> KeyReport:
        """Detect the musical key (tonic and major/minor mode) with a confidence and the runners-up.

        Use it for "what key", "major or minor", transposition and harmonic-mixing questions.
        For the chords themselves use recognize_chords.
        """
        key, info = self._measured("key", audio, offset_s, duration_s)
        return KeyReport(summary=key.summary, audio=info, key=key)

    def recognize_chords(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> ChordsReport:
        """Recognise the chords: timed segments with Harte labels (A:min, F#:maj, N = no chord) and a
        compact summary of the progression (e.g. the repeating loop).

        Use it for "what chords", "chord progression", "harmony", or to play along.
        For the overall key use detect_key.
        """
        chords, info = self._measured("chords", audio, offset_s, duration_s)
        return ChordsReport(summary=chords.summary, audio=info, chords=chords)

    def detect_sections(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> SectionsReport:
        """Find the song's sections (verse, chorus, bridge ...) as bar-aligned time spans lettered so that
        sections that sound alike share a letter: form 'ABAB' means two sections, each heard twice.

        Use it for "what is the structure/form", "where does the chorus come back", or to cut a song
        into parts. Works best on whole songs (a 30 s excerpt holds only a section or two).
        """
        sections, info = self._measured("sections", audio, offset_s, duration_s)
        return SectionsReport(summary=sections.summary, audio=info, sections=sections)

    # --- model tools -------------------------------------------------------------------

    def _backend(self, info) -> ModelBackend:
        return ModelBackend(
            name=info.name,
            checkpoint=getattr(info, "checkpoint", None),
            remote=bool(getattr(info, "remote", False) or self.settings.model_url),
            trained=info.trained,
            caveat=(getattr(info, "note", "") or None) if info.trained else None,
        )

    def _model_audio(self, audio: str, offset_s: float, duration_s: float | None):
        """The clip at the model's sample rate, the model, its backend description and the DSP
        measurements it reads before the question (None when it was not trained to read them)."""
        if self._model is None:  # loading takes up to a minute: say so, so clients do not give up
            report_progress(0, 3, "loading the music-language model (first call only)")
        model = self.model  # fail fast, before decoding, when there is no model
        model_info = model.info()  # once: over HTTP each call is a request to the model service
        backend = self._backend(model_info)
        clip, info = self.load(audio, offset_s, duration_s, dsp=False)
        measured = None
        if getattr(model_info, "reads_measurements", False):
            # The model hears the first max_audio_s seconds: measure exactly those.
            heard = AudioClip.from_samples(clip.samples[: int(model_info.max_audio_s * clip.sample_rate)],
                                           clip.sample_rate)
            measured = Measurements.from_analysis(self.measure("analysis", heard))
        report_progress(2, 3, "listening (music-language model)")
        return clip.resampled(MODEL_RATE).samples, info, model, backend, measured

    def ask_about_music(
        self, audio: Audio, question: Question, offset_s: Offset = 0.0, duration_s: Duration = None
    ) -> ModelAnswer:
        """Ask the music-language model (TinyMU) a free-form question about the clip and get a short answer.

        Good for what the DSP cannot measure: instruments, timbre, genre, mood, production, what happens
        in the music. For tempo, key, chords, beats or meter the DSP tools are exact: use them (or
        answer_music_question, which picks the right backend by itself).
        """
        samples, info, model, backend, measured = self._model_audio(audio, offset_s, duration_s)
        with self.computing():
            answer = model.answer(samples, with_measurements(question, measured)).strip()
        report_progress(3, 3, "done")
        return ModelAnswer(audio=info, question=question, answer=answer, **backend.credit(answer))

    def describe_music(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> MusicCaption:
        """Describe the clip in a sentence or two: genre, instruments, mood, tempo feel (a caption).

        Use it for "what does this sound like", tagging, or to summarise a track for a listener.
        For exact numbers (BPM, key, chords) use the DSP tools.
        """
        samples, info, model, backend, measured = self._model_audio(audio, offset_s, duration_s)
        with self.computing():
            # A caption is an answer to the caption prompt; with measurements it is asked as one.
            caption = (model.answer(samples, with_measurements(CAPTION_PROMPT, measured), max_new_tokens=96)
                       if measured else model.caption(samples)).strip()
        report_progress(3, 3, "done")
        return MusicCaption(audio=info, caption=caption, **backend.credit(caption))

    def choose_answer(
        self,
        audio: Audio,
        question: Question,
        options: Options,
        offset_s: Offset = 0.0,
        duration_s: Duration = None,
    ) -> MultipleChoice:
        """Answer a multiple-choice question about the clip: the model scores every option and picks one.

        Returns the chosen option and each option's probability (they sum to 1), so you can see how sure
        it is. Use it for classification with known labels ("Is the lead a piano, a guitar or a violin?",
        "Which mood fits best?"). Options are labelled A, B, C... in the order given.
        """
        if len({o.strip().lower() for o in options}) != len(options) or any(not o.strip() for o in options):
            raise InputError(f"options must be non-empty and distinct; give 2 to {MAX_OPTIONS} different answers.")
        samples, info, model, backend, measured = self._model_audio(audio, offset_s, duration_s)
        with self.computing():
            choice = model.choose(samples, with_measurements(question, measured), options)
        report_progress(3, 3, "done")
        if choice.index is None or not choice.probabilities:
            raise ModelServiceError("The model did not score the options; try again or rephrase the question.")
        letters = [chr(ord("A") + i) for i in range(len(options))]
        probabilities = [float(p) for p in choice.probabilities]
        chosen = options[choice.index]
        summary = f"({letters[choice.index]}) {chosen} with probability {probabilities[choice.index]:.2f}"
        return MultipleChoice(
            audio=info, question=question, choice=chosen, choice_letter=letters[choice.index],
            choice_index=choice.index,
            options=[OptionProbability(letter=l, option=o, probability=p) for l, o, p in zip(letters, options, probabilities)],
            **backend.credit(summary),
        )

    # --- routed questions ----------------------------------------------------------------

    def answer_music_question(
        self, audio: Audio, question: Question, offset_s: Offset = 0.0, duration_s: Duration = None
    ) -> RoutedAnswer:
        """Answer any question about a music clip, choosing the backend by itself: tempo, key, chords,
        beats and meter are measured with DSP (exact); instruments, genre, mood and descriptions go to the
        music-language model; mixed questions get both.

        The result says which backend answered, why, and the evidence (e.g. the measured BPM).
        Use it when unsure which tool fits; call a specific tool when you know what you need.
        """
        decision = route(question)
        clip, info = self.load(audio, offset_s, duration_s, dsp=bool(decision.dsp))
        measured: dict[str, object] = {}
        evidence: list[str] = []
        answers: list[str] = []
        if decision.dsp:
            analysis = self.measure("analysis", clip)
            for name in decision.dsp:
                result = getattr(analysis, name)
                measured[name] = result
                evidence.append(f"{name}: {result.summary}")
                answers.append(result.summary)
        model_answer = None
        warning = None
        if decision.uses_model:
            try:
                model_answer = self.ask_about_music(audio, question, offset_s, duration_s)
                warning = model_answer.warning
                if model_answer.trained:
                    evidence.append(f"model ({model_answer.backend.name}): {model_answer.answer}")
                    answers.append(model_answer.answer)
                else:
                    # An untrained model's words must never read as the answer; they stay in model_answer.
                    evidence.append(f"model ({model_answer.backend.name}): untrained, its answer is not used")
                    answers.append("The descriptive part is unanswered: the music-language model is untrained.")
            except BackendError as exc:  # no model, or its service is down: the measurements still stand
                if not decision.dsp:
                    raise
                warning = f"The music-language model could not answer the descriptive part: {exc}"
        backends = (["dsp"] if decision.dsp else []) + (["model"] if model_answer else [])
        summary = " ".join(answers)
        return RoutedAnswer(
            summary=summary, audio=info, question=question, backends=backends, reason=decision.reason,
            evidence=evidence, model_answer=model_answer, warning=warning, **measured,
        )

    # --- recommendation and pictures ------------------------------------------------------

    def clip_attributes(
        self,
        audio: Audio,
        offset_s: Offset = 0.0,
        duration_s: Duration = None,
        with_tags: Annotated[bool, Field(description="Also ask the music-language model for genre, mood and "
                                          "instrument tags (slower; skipped with a note when no model is available).")] = False,
    ) -> AttributesReport:
        """Measure the attributes music-recommendation systems use (like Spotify's audio-features): tempo (BPM),
        key and mode, integrated loudness (LUFS), energy (0-1), danceability (0-1), rhythmic strength (0-1),
        brightness and the pitch-class profile; optionally genre/mood/instrument tags from the model.

        Use it to describe a track for a playlist or recommendation, or to compare tracks by numbers. Every
        field's definition and range is in the result schema. For chords or beat times use the DSP tools.
        """
        return attributes_report(self, audio, offset_s, duration_s, with_tags)

    def index_folder(
        self,
        folder: Annotated[str, Field(description="A folder under the allowed roots; its audio files "
                                      "(and those of its subfolders) are indexed.")],
        with_embeddings: Annotated[bool, Field(description="Also store the model's audio embeddings "
                                                "(slower; used for similarity when the model is trained).")] = False,
    ) -> IndexReport:
        """Analyse every audio file in a folder once (tempo, key, energy, danceability, loudness, timbre, chroma)
        and store the results as a searchable index, so find_similar can recommend tracks from it.

        Call it once per folder before find_similar, and again after files were added or changed (unchanged
        files are reused, so re-indexing is cheap). Takes a few seconds per 30 s clip; reports progress.
        """
        return index_report(self, folder, with_embeddings)

    def find_similar(
        self,
        audio: Audio,
        folder: Annotated[str, Field(description="The folder indexed with index_folder to search in.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many clips to return.")] = 5,
        tempo: Annotated[TempoConstraint | None, Field(description="'faster' or 'slower' than the query "
                                                        "(by at least 4 %), or 'similar' (within 8 %).")] = None,
        key_mode: Annotated[KeyMode | None, Field(description="Only clips in a 'major' or a 'minor' key.")] = None,
        method: Annotated[Method, Field(description="'features' (tempo, key, energy, loudness, timbre, chroma), "
                                         "'embedding' (model embeddings) or 'auto'.")] = "auto",
    ) -> SimilarResults:
        """Recommend clips from an indexed folder that sound like the query clip, optionally constrained:
        "like X but faster" (tempo='faster'), "like X but in a minor key" (key_mode='minor'), or both.

        Returns the closest clips with a similarity (0-1) and why each matches (tempo change, key, energy).
        Run index_folder on the folder first.
        """
        return similar_results(self, audio, folder, k, tempo, key_mode, method)

    def plot_clip(self, audio: Audio, offset_s: Offset = 0.0, duration_s: Duration = None) -> ClipPlot:
        """Draw a picture (PNG) of the clip: mel spectrogram, the chord segments as a labelled strip, and the
        waveform with beats (grey) and downbeats (red bar lines).

        Use it when a person wants to see the structure of a track. The image is returned as image content
        and saved in the cache directory; the numbers behind it come from analyze_clip.
        """
        return clip_plot(self, audio, offset_s, duration_s)

    # --- finding files --------------------------------------------------------------------

    def list_audio_files(
        self,
        folder: Annotated[str | None, Field(description="A folder under the allowed roots to list; omit to list "
                                             "every allowed root.")] = None,
        pattern: Annotated[str, Field(max_length=200, description="Only file names matching this glob, e.g. "
                                       "'*.flac' or '*live*' (case-insensitive).")] = "*",
        limit: Annotated[int, Field(ge=1, le=1000, description="Most files to return.")] = 100,
    ) -> AudioFileList:
        """List the audio files (wav, flac, ogg, mp3, aiff, opus) this server may read, with their sizes and
        lengths, searching subfolders too.

        Use it to find the path to pass as `audio` when the user names a song, an album or a folder instead of
        a full path. The paths returned are absolute and accepted by every other tool.
        """
        import soundfile as sf

        from agent_tools.inputs import resolve_path

        roots = self.settings.allowed_roots()
        if folder:
            top = resolve_path(folder, self.settings)
            if not top.is_dir():
                raise InputError(f"{folder}: not a folder. Pass a folder under {', '.join(map(str, roots))}, "
                                 "or omit folder to list every allowed root.")
            searched = [top]
        else:
            searched = [r for r in roots if r.is_dir()]
        report_progress(0, 1, "listing audio files")
        matches, complete = find_audio_files(searched, pattern)
        files = []
        for path in matches[:limit]:
            try:
                duration = round(sf.info(str(path)).duration, 2)
            except Exception:  # an unreadable header is reported as unknown length, never a failed listing
                duration = None
            files.append(AudioFile(path=str(path), size_bytes=path.stat().st_size, duration_s=duration))
        where = ", ".join(map(str, searched)) or "(no existing allowed folder)"
        unfinished = "" if complete else (f" The search stopped after {MAX_FILES_EXAMINED:,} files, so there may "
                                          "be more: pass a folder to search in.")
        if not files:
            summary = (f"No audio files matching {pattern!r} under {where}.{unfinished} Other folders are not "
                       "readable by this server (see the resource music://roots); send audio as a data: URI instead.")
        else:
            # The text an LLM reads stays short; every listed file is in the structured result.
            entries = [f"{f.path} ({f.duration_s:.1f} s)" if f.duration_s is not None else f.path for f in files]
            shown = bounded(entries, "; ", LISTING_BUDGET_CHARS, "files", detail=False,
                            note="all are in the structured result; narrow with folder or pattern")
            more = f" The list stops at limit={limit}: narrow it with folder or pattern." if len(matches) > limit else ""
            summary = f"{len(matches)} audio file(s) under {where}: {shown}.{more}{unfinished}"
        return AudioFileList(summary=summary, roots=[str(r) for r in searched], files=files, total=len(matches))


TOOLS_ANSWERING_FROM_CACHE = {spec.name: spec.answers_from_cache for spec in TOOL_SPECS}


# list_audio_files and the completions stop walking after this many files (a root may be a home folder).
MAX_FILES_EXAMINED = 50_000
LISTING_BUDGET_CHARS = 6000


def find_audio_files(folders: list[Path], pattern: str = "*") -> tuple[list[Path], bool]:
    """The audio files under `folders` (subfolders too, hidden ones skipped) whose names match the glob
    `pattern` (case-insensitive), sorted, and whether the search was complete (it stops after
    MAX_FILES_EXAMINED files). Symlinks are neither listed nor followed, so the walk never leaves the folders."""
    import fnmatch
    import os

    from agent_tools.similarity import AUDIO_SUFFIXES

    found, examined = [], 0
    for top in folders:
        for directory, subfolders, names in os.walk(top, followlinks=False):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in names:
                path = Path(directory, name)
                if (path.suffix.lower() in AUDIO_SUFFIXES and fnmatch.fnmatch(name.lower(), pattern.lower())
                        and not path.is_symlink() and path.is_file()):
                    found.append(path)
            examined += len(names)
            if examined >= MAX_FILES_EXAMINED:
                return sorted(dict.fromkeys(found)), False
    return sorted(dict.fromkeys(found)), True
