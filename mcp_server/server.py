"""The MCP server: every tool of `agent_tools.tools.TOOL_SPECS`, plus resources and prompts.

Tools are registered from the shared registry, never redefined here. Each MCP
tool is a thin async wrapper that gives a cached answer at once when memory has
it (`MusicTools.answer_from_cache_async`: in cache-lookup threads of its own,
with a short timeout; no runner thread, slot or memory), and otherwise runs the blocking `MusicTools` method in a
worker thread, under a process-wide concurrency limit and a per-call timeout,
forwards progress to the client, and turns the caller-fixable errors
(`InputError`) and our own failures (`BackendError`) into tool results with
`isError: true` and an actionable message, so the agent can correct itself and
the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import functools
import hmac
import inspect
import json
import logging
import math
import os
import re
import threading
import time
import typing
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp.types import (
    CallToolResult,
    ClientCapabilities,
    Completion,
    ImageContent,
    PromptReference,
    ResourceTemplateReference,
    RootsCapability,
    TextContent,
    ToolAnnotations,
)

from agent_tools.config import Settings
from agent_tools.context import progress_callback
from agent_tools.digest import DETAIL, Detail, digest, takes_detail
from agent_tools.tools import (
    ANSWERED_FROM_CACHE,
    TOOL_SPECS,
    MusicTools,
    call_abandoned,
    call_settings,
    find_audio_files,
)
from agent_tools.waiting import Abandonment
from model.errors import BackendError, InputError

log = logging.getLogger("tinymu.mcp")

INSTRUCTIONS = """\
Ears for music. Tools measure tempo (BPM), beats/downbeats/meter, key and chords with DSP (exact),
and a music-language model answers questions about timbre, instruments, genre and mood.
The `audio` argument is an absolute file path under the server's allowed folders (read the resource
music://roots), a data:audio/...;base64,... URI, or an https:// URL when the server allows URLs.
Use list_audio_files to find paths. Use offset_s/duration_s to analyse part of a long recording.
Start with analyze_clip; use answer_music_question when unsure which tool fits. Results list the timed
facts (chord changes, bar starts) in the text; pass detail=true for every beat and candidate."""

# A long step with no progress of its own (madmom on minutes of audio, loading the model) still gets a
# notification this often, so clients see the call is alive and do not give up on it.
HEARTBEAT_S = 3.0
# Heartbeats go out this long after the last notification, so a busy event loop (under load they were late by
# up to half a second) still keeps the HEARTBEAT_S promise.
HEARTBEAT_EARLY_S = 0.8 * HEARTBEAT_S
# Progress is sent once a call has run this long; a quicker call's steps go out just before its answer, and a
# cache hit's not at all: four notifications per cache hit were most of what 100 calls at once waited for
# (the answers queued behind them in the event loop).
PROGRESS_GRACE_S = 1.0


class StaticTokenVerifier:
    """Accepts exactly one bearer token (compared in constant time)."""

    def __init__(self, token: str):
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="tinymu-client", scopes=[])
        return None


class ProgressNotifier:
    """Forwards one call's progress to its client from the event loop, and keeps it from going quiet.

    The tool's thread only queues its steps (`report` never waits for the event loop). Once the call has
    run PROGRESS_GRACE_S a task in the event loop starts, sends the steps in order and, while a step is
    silent, repeats its message with the time spent on it every HEARTBEAT_S. A quicker call costs the loop
    nothing while it runs: its steps go out just before its answer, or not at all when it was answered
    from the cache (the toolbox reports ANSWERED_FROM_CACHE). MCP progress must increase: a step reported below the last value sent
    goes out just above it, and each heartbeat closes a tenth of the distance to the next whole step.
    """

    def __init__(self, ctx: Context, name: str):
        self._ctx = ctx
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._steps: collections.deque[tuple[float, float, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        self._from_cache = False
        self._sent, self._total, self._message = -1.0, 1.0, name
        self._since = self._at = time.monotonic()

    def report(self, done: float, total: float, message: str) -> None:
        """Queue a step; called from the tool's thread."""
        if self._closed:
            return
        self._steps.append((done, total, message))
        self._from_cache = message == ANSWERED_FROM_CACHE
        if self._task is None:
            return  # the task, once started, sends what is queued
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop has closed (server shutting down): nothing left to tell
            pass

    def start(self) -> None:
        """The call has run PROGRESS_GRACE_S: start sending (in the event loop)."""
        if not self._closed and self._task is None:
            self._wake.set()  # send what is queued at once
            self._task = self._loop.create_task(self._run())

    async def finish(self) -> None:
        """The call is over: send what is still queued (a cache hit within the grace sends nothing), then stop."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await self._task
        elif not self._from_cache:
            while self._steps:
                done, total, message = self._steps.popleft()
                await self._send(max(done, self._sent + 1e-3), total, message)

    def abandon(self) -> None:
        """The call was cancelled: stop without waiting."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            timeout = max(0.0, self._at + HEARTBEAT_EARLY_S - time.monotonic())
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake.clear()
            while self._steps:
                done, total, message = self._steps.popleft()
                self._message, self._since = message, time.monotonic()
                await self._send(max(done, self._sent + 1e-3), total, message)
            if self._closed:
                return
            if time.monotonic() - self._at >= HEARTBEAT_EARLY_S:
                sent = max(self._sent, 0.0)
                creep = sent + (math.floor(sent) + 1 - sent) * 0.1
                spent = time.monotonic() - self._since
                await self._send(creep, self._total, f"{self._message} (still working, {spent:.0f} s)")

    async def _send(self, done: float, total: float, message: str) -> None:
        self._sent, self._total, self._at = done, max(total, done), time.monotonic()
        try:
            await self._ctx.report_progress(done, self._total, message)
        except Exception:  # progress is best effort; never fail the call for it
            log.debug("progress notification for %s dropped", self._name, exc_info=True)


class ToolRunner:
    """Runs blocking tool methods in worker threads with a timeout, progress and typed errors.

    Heavy work is bounded inside the toolbox (`MusicTools.computing`, `max_concurrency` slots held by
    the worker thread itself), so timeouts can never pile up unbounded CPU work: a call abandoned on
    timeout gives up its place in the queue for a slot, and one whose analysis runs in a DSP worker process
    has that worker killed and replaced, freeing its slot at once; an analysis or a generation running in the
    thread itself stops at its next stage boundary (`model.cancel`: the abandonment event is its token) and
    gives its slot back there. Cache hits never wait for a slot (those
    memory has are answered before the call reaches the runner, see `mcp_tool`).
    """

    def __init__(self, timeout_s: float, max_calls_in_flight: int = 64):
        self.timeout_s = timeout_s
        self._threads = anyio.CapacityLimiter(max_calls_in_flight)
        # Threads of the runner's own, all started now. anyio's pool started a thread on the event loop for each
        # call that found none idle, and Thread.start() waits until the new thread runs: under load (the GIL
        # shared with two analyses) that was 3 ms of the loop per new call, in front of every request behind
        # it. Twice the calls in flight: timed-out calls leave the limiter at once but keep their thread until
        # their work reaches its next stop check (or a hung file system answers); beyond that, threads start
        # on demand as before.
        self._pool = ThreadPoolExecutor(2 * max_calls_in_flight, thread_name_prefix="tinymu-call",
                                        initializer=run_below_the_event_loop)
        start_threads(self._pool, max_calls_in_flight)

    async def run(self, name: str, method: Callable, kwargs: dict, ctx: Context | None,
                  settings: Settings | None = None):
        if ctx is None:
            return await self._run(name, method, kwargs, None, settings)
        notifier = ProgressNotifier(ctx, name)
        timer = asyncio.get_running_loop().call_later(PROGRESS_GRACE_S, notifier.start)
        try:
            result = await self._run(name, method, kwargs, notifier.report, settings)
        except Exception:
            timer.cancel()
            await notifier.finish()
            raise
        except BaseException:  # cancelled: nobody is listening any more
            timer.cancel()
            notifier.abandon()
            raise
        timer.cancel()
        await notifier.finish()  # the last steps go out before the answer
        return result

    async def _run(self, name: str, method: Callable, kwargs: dict, progress: Callable | None,
                   settings: Settings | None):
        abandoned = Abandonment()  # set on timeout: the worker thread starts no more heavy work, and wakes if waiting

        def job():
            token, gave_up = progress_callback.set(progress), call_abandoned.set(abandoned)
            session = call_settings.set(settings)
            try:
                return method(**kwargs)
            finally:
                call_settings.reset(session)
                call_abandoned.reset(gave_up)
                progress_callback.reset(token)

        try:
            with anyio.fail_after(self.timeout_s):
                async with self._threads:
                    # Cancelled (timed out): a job not yet started never starts, a running one is left to stop at
                    # its next check of `abandoned`, as anyio's abandon_on_cancel did.
                    return await asyncio.wrap_future(self._pool.submit(contextvars.copy_context().run, job))
        except TimeoutError:
            abandoned.set()
            raise ToolError(
                f"{name} did not finish within {self.timeout_s:g} s. Analyse a shorter window "
                "(offset_s/duration_s), or call again: finished analyses are cached."
            ) from None
        except InputError as exc:
            raise ToolError(str(exc)) from exc
        except BackendError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # The SDK would report only "Error executing tool X": say what failed, so the caller can change
            # the call, and log the traceback for the operator.
            log.exception("%s failed unexpectedly", name)
            raise ToolError(unexpected_error_message(name, exc)) from exc


# Tool calls run this many nice levels below the server's event loop (and its cache-lookup threads), so under
# load the loop gets a core to take in requests and give cached answers while analyses fill every core (the
# load benchmark, docs/reliability.md). Analyses in DSP worker processes run there too (dsp_workers.WORKER_NICENESS).
CALL_NICENESS = 10


def run_below_the_event_loop() -> None:
    """Lower the calling thread's CPU priority by CALL_NICENESS under the process's. On Linux a thread has a
    priority of its own; elsewhere (no per-thread priority) it keeps the process's."""
    try:
        process = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, process + CALL_NICENESS))
    except (AttributeError, OSError):  # no per-thread priorities here
        pass


def start_threads(pool: ThreadPoolExecutor, count: int) -> None:
    """Start `count` threads of `pool` now (an executor starts one per submission that finds none idle)."""
    everyone = threading.Barrier(count + 1)
    for _ in range(count):
        pool.submit(everyone.wait)  # each waits, so the next submission finds no idle thread and starts one
    everyone.wait()


def unexpected_error_message(name: str, exc: BaseException) -> str:
    """A tool error for a failure no check anticipated: what failed, and what the caller can change."""
    detail = str(exc).replace("\n", " ")[:300] or "no detail"
    return (f"{name} failed unexpectedly ({type(exc).__name__}: {detail}). Check the arguments (the audio path "
            "or data URI, offset_s and duration_s) or try another file; the server logged the details.")


def tool_result(result, detail: bool = False) -> CallToolResult:
    """The text an LLM reads is the digest (summary + compact timed facts; the JSON too with `detail`), the
    full result is the structured content; a picture (a `png` field, e.g. plot_clip) goes out as image
    content, so clients show it instead of receiving base64 inside JSON."""
    content: list = [TextContent(type="text", text=digest(result, detail=detail))]
    png = getattr(result, "png", None)
    if isinstance(png, bytes) and png:
        content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))


def mcp_tool(name: str, method: Callable, runner: ToolRunner, roots: ClientRoots | None = None,
             from_cache: Callable | None = None) -> Callable:
    """An async MCP tool with exactly the method's parameters, return type and docstring (+ a Context),
    plus a `detail` argument when the result carries timed measurements.

    from_cache(kwargs, settings): awaitable, the answer if memory has it, else None (`MusicTools.answer_from_cache_async`)."""
    detailed = takes_detail(method)

    async def tool(ctx: Context, **kwargs):
        detail = bool(kwargs.pop(DETAIL, False))
        settings = await roots.settings_for(ctx) if roots else None
        # A cached answer is given before the call takes a runner thread, a compute slot or memory: under load a
        # runner thread was started for each call (0.25 s) behind every other request's work. The lookup runs in
        # warm threads of its own, off the loop, so a file system that hangs an open() stalls only that lookup,
        # which fails at its own short timeout with a reason.
        try:
            result = await from_cache(kwargs, settings) if from_cache is not None else None
        except BackendError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc
        if result is None:
            result = await runner.run(name, method, kwargs, ctx, settings)
        return tool_result(result, detail)

    signature = inspect.signature(method, eval_str=True)
    extra = [inspect.Parameter(DETAIL, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Detail)] \
        if detailed else []
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    tool.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra, context])
    tool.__annotations__ = {**typing.get_type_hints(method, include_extras=True), "ctx": Context,
                            **({DETAIL: Detail} if detailed else {})}
    tool.__name__ = name
    tool.__doc__ = inspect.getdoc(method)
    return tool


def build_server(
    settings: Settings | None = None,
    *,
    tools: MusicTools | None = None,
    token: str | None = None,
    public_url: str = "http://127.0.0.1:8000",
    replace_roots_with_clients: bool = False,
) -> MCPServer:
    """The MCP server over one `MusicTools` (one model, one set of warm DSP processors, one cache).

    token: when given, HTTP clients must send `Authorization: Bearer <token>`
    (stdio is unaffected: it is only reachable by the process that started it).
    replace_roots_with_clients: a client's roots replace the server's instead of narrowing them (see
    `ClientRoots`); only for a local stdio server whose roots were not configured.
    """
    settings = settings or Settings.from_env()
    tools = tools or MusicTools(settings)
    auth = {}
    if token:
        auth = dict(
            token_verifier=StaticTokenVerifier(token),
            auth=AuthSettings(issuer_url=public_url, resource_server_url=None),
        )
    server = MCPServer("tinymu", instructions=INSTRUCTIONS, version=_version(), **auth)
    runner = ToolRunner(settings.call_timeout_s)
    client_roots = ClientRoots(tools, replace=replace_roots_with_clients)
    for spec in TOOL_SPECS:
        server.add_tool(
            mcp_tool(spec.name, spec.bind(tools), runner, client_roots,
                     from_cache=functools.partial(tools.answer_from_cache_async, spec.name) if spec.answers_from_cache
                     else None),
            name=spec.name,
            title=spec.title,
            annotations=ToolAnnotations(
                title=spec.title,
                read_only_hint=spec.read_only,
                destructive_hint=False,
                idempotent_hint=spec.idempotent,
                open_world_hint=spec.open_world(settings),
            ),
        )
    _add_resources(server, tools, client_roots)
    _add_prompts(server)
    _add_completions(server, tools)
    server.toolbox = tools  # the CLI warms it up; tests inspect it
    server.runner = runner  # tests inspect its worker threads
    return server


def _add_resources(server: MCPServer, tools: MusicTools, client_roots: ClientRoots) -> None:
    @server.resource("music://roots", name="roots", mime_type="application/json")
    def roots() -> str:
        """The folders whose audio files the tools may read, and whether URLs are accepted. A client that
        offers roots gets its own roots inside these (or instead of these, on a local server started without
        any), see client_roots; the SDK gives static resources no session, so this lists the server's."""
        settings = tools.settings
        return json.dumps(
            {
                "roots": [str(r) for r in settings.allowed_roots()],
                "urls_allowed": settings.allow_urls,
                "url_schemes": list(settings.url_schemes) if settings.allow_urls else [],
                "max_data_uri_bytes": settings.max_data_uri_bytes,
                "max_duration_s": settings.audio_limits.max_duration_s,
                "client_roots": "replace" if client_roots.replace else "narrow",
            },
            indent=2,
        )

    @server.resource("music://analysis/{sha256}", name="analysis", mime_type="application/json")
    def analysis(sha256: str) -> str:
        """Every cached analysis of the audio whose content hash is `sha256` (see a result's audio.sha256)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ResourceError(f"{sha256!r} is not a sha256: expect 64 lowercase hex digits, as in audio.sha256.")
        cached = tools.cache.analyses(sha256)
        if not cached:
            raise ResourceNotFoundError(
                f"No cached analysis for sha256 {sha256}; run analyze_clip (or another DSP tool) on the audio first."
            )
        # Keys are the analysis kinds ("analysis", "tempo", ...; windows add their offset).
        return json.dumps({label: entry.result for label, entry in cached.items()}, indent=2)


def _add_prompts(server: MCPServer) -> None:
    @server.prompt(name="analyze_track", title="Analyse a track")
    def analyze_track(audio: str) -> str:
        """Analyse one track: measurements plus a description, summarised for a listener."""
        return (
            f"Analyse the music in {audio}.\n"
            "1. Call analyze_clip with this audio to measure tempo, meter, key and chords.\n"
            "2. Call describe_music for instruments, genre and mood (if it reports an untrained model, say so "
            "and rely on the measurements).\n"
            "3. Write a short report: tempo (BPM) and feel, meter, key, the chord progression, and the character "
            "of the piece. Quote measured values as they are; do not invent any."
        )

    @server.prompt(name="compare_tracks", title="Compare two tracks")
    def compare_tracks(audio_a: str, audio_b: str) -> str:
        """Compare two tracks: tempo, key, meter, harmony and character side by side."""
        return (
            f"Compare two pieces of music: A = {audio_a} and B = {audio_b}.\n"
            "1. Call analyze_clip on each.\n"
            "2. Call describe_music on each for instruments, genre and mood.\n"
            "3. Present a side-by-side table (tempo BPM, meter, key, main chords, character) and say how "
            "compatible they are for a DJ mix or a playlist (tempo ratio, key relationship)."
        )


class ClientRoots:
    """Honours the roots a client offers (MCP roots capability): each call runs with that session's roots.

    By default the client's roots narrow the server's: the calls of a session may read only the client's
    roots that lie inside the server's allowed roots (those outside are ignored and logged), so a client
    can never widen what the operator allowed. With `replace` (a local stdio server started without
    configured roots, whose default is merely the folder it was started in) the client's roots are
    used as they are. A client that offers no roots, or none that qualifies, gets the server's roots.
    """

    def __init__(self, tools: MusicTools, *, replace: bool = False, timeout_s: float = 5.0):
        self.tools = tools
        self.replace = replace
        self.timeout_s = timeout_s
        self._settings: dict[tuple[Path, ...], Settings] = {}

    async def settings_for(self, ctx: Context | None) -> Settings | None:
        """This session's settings, or None to use the server's."""
        folders = await self.client_folders(ctx)
        if not folders:
            return None
        base = self.tools.settings
        if not self.replace:
            allowed = base.allowed_roots()
            inside = [f for f in folders if any(f.is_relative_to(root) for root in allowed)]
            if len(inside) < len(folders):
                log.info("client roots outside the server's roots ignored: %s",
                         ", ".join(str(f) for f in folders if f not in inside))
            folders = inside
        if not folders:
            return None
        key = tuple(folders)
        if key not in self._settings:
            self._settings[key] = base.with_overrides(roots=key)
        return self._settings[key]

    async def client_folders(self, ctx: Context | None) -> list[Path]:
        """The existing local folders among the client's file:// roots ([] when it offers none)."""
        try:
            session = ctx.session if ctx is not None else None
        except Exception:  # no request in flight (a resource read outside a session)
            return []
        if session is None or not session.check_client_capability(ClientCapabilities(roots=RootsCapability())):
            return []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # roots are deprecated from protocol 2026-07-28, still offered
                listing = session.list_roots()
            with anyio.fail_after(self.timeout_s):
                listed = await listing
        except Exception as exc:  # no back-channel (protocol 2026-07-28), or no answer: the server's roots
            log.debug("client roots unavailable (%s: %s); using the server's", type(exc).__name__, exc)
            return []
        folders = []
        for root in listed.roots:
            uri = urlparse(str(root.uri))
            if uri.scheme == "file" and uri.netloc in ("", "localhost"):
                folder = Path(unquote(uri.path)).resolve()
                if folder.is_dir():
                    folders.append(folder)
        return list(dict.fromkeys(folders))


def _add_completions(server: MCPServer, tools: MusicTools) -> None:
    """Completions: audio paths for the prompts' audio arguments, cached hashes for music://analysis/{sha256}."""

    @server.completion()
    async def complete(ref, argument, context) -> Completion | None:
        typed = argument.value or ""
        if isinstance(ref, ResourceTemplateReference) and ref.uri == "music://analysis/{sha256}":
            values = [sha for sha in cached_hashes(tools) if sha.startswith(typed.lower())]
        elif isinstance(ref, PromptReference) and argument.name.startswith("audio"):
            # The SDK passes no session to completion handlers, so these are the server's roots.
            paths, _ = await anyio.to_thread.run_sync(find_audio_files, list(tools.settings.allowed_roots()), "*")
            needle = typed.lower()
            # A typed prefix of the path, or any part of it (a song's name).
            values = [str(p) for p in paths if str(p).lower().startswith(needle)] or \
                     [str(p) for p in paths if needle in str(p).lower()]
        else:
            return None
        return Completion(values=values[:100], total=len(values), has_more=len(values) > 100)


def cached_hashes(tools: MusicTools) -> list[str]:
    """The content hashes with analyses in the cache directory (the store is <dir>/<sha[:2]>/<sha>/)."""
    directory = tools.cache.directory
    if directory is None or not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob("??/*") if re.fullmatch(r"[0-9a-f]{64}", p.name))


def preload_model(tools: MusicTools) -> threading.Thread:
    """Load the music-language model in a background thread, so the first model call does not pay for it
    (a call that comes earlier waits for this load instead of starting its own)."""

    def load() -> None:
        started = time.perf_counter()
        try:
            tools.model.info()
        except Exception as exc:  # no model here: the model tools will say so; the DSP tools work regardless
            log.warning("model preload failed (%s: %s); model tools will report it", type(exc).__name__, exc)
            return
        log.info("model loaded in the background in %.1f s", time.perf_counter() - started)

    thread = threading.Thread(target=load, name="model-preload", daemon=True)
    thread.start()
    return thread


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinymu-agent-tools")
    except PackageNotFoundError:
        return "0.0.0"
