"""The MCP server: every tool of `agent_tools.tools.TOOL_SPECS`, plus resources and prompts.

Tools are registered from the shared registry, never redefined here. Each MCP
tool is a thin async wrapper that runs the blocking `MusicTools` method in a
worker thread, under a process-wide concurrency limit and a per-call timeout,
forwards progress to the client, and turns the caller-fixable errors
(`InputError`) and our own failures (`BackendError`) into tool results with
`isError: true` and an actionable message, so the agent can correct itself and
the server keeps serving.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import json
import logging
import re
import threading
import typing
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations

from agent_tools.config import Settings
from agent_tools.context import progress_callback
from agent_tools.tools import TOOL_SPECS, MusicTools, call_abandoned
from model.errors import BackendError, InputError

log = logging.getLogger("tinymu.mcp")

INSTRUCTIONS = """\
Ears for music. Tools measure tempo (BPM), beats/downbeats/meter, key and chords with DSP (exact),
and a music-language model answers questions about timbre, instruments, genre and mood.
The `audio` argument is an absolute file path under the server's allowed folders (read the resource
music://roots), a data:audio/...;base64,... URI, or an https:// URL when the server allows URLs.
Use offset_s/duration_s to analyse part of a long recording. Start with analyze_clip; use
answer_music_question when unsure which tool fits."""


class StaticTokenVerifier:
    """Accepts exactly one bearer token (compared in constant time)."""

    def __init__(self, token: str):
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="tinymu-client", scopes=[])
        return None


class ToolRunner:
    """Runs blocking tool methods in worker threads with a timeout, progress and typed errors.

    Heavy work is bounded inside the toolbox (`MusicTools.computing`, `max_concurrency` slots held by
    the worker thread itself), so a call abandoned on timeout keeps its slot until its thread really
    finishes and timeouts can never pile up unbounded CPU work; cache hits never wait for a slot.
    """

    def __init__(self, timeout_s: float, max_calls_in_flight: int = 64):
        self.timeout_s = timeout_s
        self._threads = anyio.CapacityLimiter(max_calls_in_flight)

    async def run(self, name: str, method: Callable, kwargs: dict, ctx: Context | None):
        finished = threading.Event()
        abandoned = threading.Event()  # set on timeout: the worker thread starts no more heavy work

        def progress(done: float, total: float, message: str) -> None:
            if ctx is None or finished.is_set():
                return
            try:
                anyio.from_thread.run(ctx.report_progress, done, total, message)
            except Exception:  # progress is best effort; never fail the call for it
                log.debug("progress notification for %s dropped", name, exc_info=True)

        def job():
            token, gave_up = progress_callback.set(progress), call_abandoned.set(abandoned)
            try:
                return method(**kwargs)
            finally:
                call_abandoned.reset(gave_up)
                progress_callback.reset(token)

        try:
            with anyio.fail_after(self.timeout_s):
                return await anyio.to_thread.run_sync(job, abandon_on_cancel=True, limiter=self._threads)
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
        finally:
            finished.set()


def unexpected_error_message(name: str, exc: BaseException) -> str:
    """A tool error for a failure no check anticipated: what failed, and what the caller can change."""
    detail = str(exc).replace("\n", " ")[:300] or "no detail"
    return (f"{name} failed unexpectedly ({type(exc).__name__}: {detail}). Check the arguments (the audio path "
            "or data URI, offset_s and duration_s) or try another file; the server logged the details.")


def with_image_content(result):
    """Results that carry a picture (a `png` field, e.g. plot_clip) go out as image content plus the
    structured result, so clients show the image instead of receiving base64 inside JSON."""
    png = getattr(result, "png", None)
    if not isinstance(png, bytes) or not png:
        return result
    return CallToolResult(
        content=[
            TextContent(type="text", text=result.summary),
            ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
        ],
        structured_content=result.model_dump(mode="json"),
    )


def mcp_tool(name: str, method: Callable, runner: ToolRunner) -> Callable:
    """An async MCP tool with exactly the method's parameters, return type and docstring (+ a Context)."""

    async def tool(ctx: Context, **kwargs):
        return with_image_content(await runner.run(name, method, kwargs, ctx))

    signature = inspect.signature(method, eval_str=True)
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    tool.__signature__ = signature.replace(parameters=[*signature.parameters.values(), context])
    tool.__annotations__ = {**typing.get_type_hints(method, include_extras=True), "ctx": Context}
    tool.__name__ = name
    tool.__doc__ = inspect.getdoc(method)
    return tool


def build_server(
    settings: Settings | None = None,
    *,
    tools: MusicTools | None = None,
    token: str | None = None,
    public_url: str = "http://127.0.0.1:8000",
) -> MCPServer:
    """The MCP server over one `MusicTools` (one model, one set of warm DSP processors, one cache).

    token: when given, HTTP clients must send `Authorization: Bearer <token>`
    (stdio is unaffected: it is only reachable by the process that started it).
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
    for spec in TOOL_SPECS:
        server.add_tool(
            mcp_tool(spec.name, spec.bind(tools), runner),
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
    _add_resources(server, tools)
    _add_prompts(server)
    server.toolbox = tools  # the CLI warms it up; tests inspect it
    return server


def _add_resources(server: MCPServer, tools: MusicTools) -> None:
    settings = tools.settings

    @server.resource("music://roots", name="roots", mime_type="application/json")
    def roots() -> str:
        """The folders whose audio files the tools may read, and whether URLs are accepted."""
        return json.dumps(
            {
                "roots": [str(r) for r in settings.allowed_roots()],
                "urls_allowed": settings.allow_urls,
                "url_schemes": list(settings.url_schemes) if settings.allow_urls else [],
                "max_data_uri_bytes": settings.max_data_uri_bytes,
                "max_duration_s": settings.audio_limits.max_duration_s,
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinymu-agent-tools")
    except PackageNotFoundError:
        return "0.0.0"
