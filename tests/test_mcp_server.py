"""The MCP server with real clients: in-process `mcp.Client`, stdio and HTTP subprocesses,
the MCP Inspector CLI, and the example client script.

The music is rendered once per session by the project's own synthesiser; every
server process in this file shares one result cache directory, so a clip is
analysed by madmom only once.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import httpx2
import numpy as np
import pytest
import soundfile as sf
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agent_tools.config import Settings
from agent_tools.tools import TOOL_SPECS, MusicTools
from mcp_server.cli import rebinding_protection
from mcp_server.server import build_server
from training.synth import write_song

REPO = Path(__file__).resolve().parents[1]
CLIP = dict(style="rock", tempo_bpm=120.0, key=(9, "minor"))  # A minor rock at 120 BPM
DSP_TOOLS = {"analyze_clip", "estimate_tempo", "track_beats", "detect_key", "recognize_chords"}


# --- session fixtures: audio, bad inputs, settings --------------------------------------


@pytest.fixture(scope="session")
def music(tmp_path_factory):
    """A folder of test audio (the allowed root) and a folder outside it."""
    base = tmp_path_factory.mktemp("mcp")
    root, outside = base / "music", base / "outside"
    root.mkdir()
    outside.mkdir()
    labels = write_song(root, seed=3, duration_s=12.0, name="song", **CLIP)
    (root / "folder").mkdir()
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("these are my notes, not audio\n" * 20)
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + os.urandom(600))
    sf.write(root / "zero.wav", np.zeros(0, dtype=np.float32), 22050, subtype="PCM_16")
    sf.write(root / "silent.wav", np.zeros(3 * 22050, dtype=np.float32), 22050, subtype="PCM_16")
    sf.write(root / "long.wav", np.random.default_rng(0).normal(0, 0.1, 40 * 8000), 8000, subtype="PCM_16")
    sf.write(outside / "secret.wav", 0.1 * np.ones(2 * 22050), 22050, subtype="PCM_16")
    (root / "link.wav").symlink_to(outside / "secret.wav")
    return {"root": root, "outside": outside, "song": root / "song.wav", "labels": labels, "cache": base / "cache"}


def make_settings(music, **changes) -> Settings:
    base = dict(
        roots=(music["root"],),
        cache_dir=music["cache"],
        allow_urls=True,  # so URL cases reach the SSRF guard
        max_duration_s=30.0,
        max_data_uri_bytes=200_000,
        call_timeout_s=120.0,
    )
    return Settings(**{**base, **changes})


@pytest.fixture(scope="session")
def toolbox(music):
    return MusicTools(make_settings(music))


@pytest.fixture(scope="session")
def server(toolbox):
    return build_server(toolbox.settings, tools=toolbox)


def server_env(music) -> dict[str, str]:
    env = dict(os.environ, TINYMU_CACHE_DIR=str(music["cache"]), PYTHONUNBUFFERED="1")
    env.pop("TINYMU_MCP_TOKEN", None)
    return env


# --- in-process ----------------------------------------------------------------------


async def test_every_registry_tool_is_listed_with_schemas_and_annotations(server):
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {spec.name for spec in TOOL_SPECS} and DSP_TOOLS <= set(tools)
    for spec in TOOL_SPECS:
        tool = tools[spec.name]
        assert tool.output_schema and "summary" in tool.output_schema["properties"], spec.name
        assert len(tool.description) > 80 and tool.title == spec.title
        if spec.reads_audio:
            assert "audio" in tool.input_schema["required"]
            assert "allowed folders" in tool.input_schema["properties"]["audio"]["description"]
        hints = tool.annotations
        assert (hints.read_only_hint, hints.idempotent_hint) == (spec.read_only, spec.idempotent)
        assert hints.destructive_hint is False
        assert hints.open_world_hint is spec.reads_audio  # URLs are allowed in these settings
    for name in DSP_TOOLS | {"ask_about_music", "describe_music", "choose_answer"}:
        assert tools[name].annotations.read_only_hint is True
    assert tools["choose_answer"].input_schema["properties"]["options"]["minItems"] == 2


async def test_open_world_hint_follows_the_url_setting(music):
    async with Client(build_server(make_settings(music, allow_urls=False))) as client:
        tools = (await client.list_tools()).tools
    assert not any(tool.annotations.open_world_hint for tool in tools)


async def test_analyze_clip_returns_structured_measurements(server, music):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async with Client(server) as client:
        result = await client.call_tool("analyze_clip", {"audio": str(music["song"])}, progress_callback=on_progress)
    assert not result.is_error, result.content
    data = result.structured_content
    labels = music["labels"]
    assert data["audio"]["source"] == str(music["song"])
    assert data["audio"]["duration_s"] == pytest.approx(12.0, abs=0.05)
    assert data["audio"]["sample_rate_hz"] == 44100 and len(data["audio"]["sha256"]) == 64
    analysis = data["analysis"]
    assert analysis["tempo"]["bpm"] == pytest.approx(labels.tempo_bpm, rel=0.04)
    assert analysis["key"]["key"] == labels.key
    assert analysis["beats"]["meter"] == labels.meter
    # The text an LLM reads is the summary plus the timed facts; the full result is the structured content.
    text = result.content[0].text
    assert data["summary"] and text.startswith(data["summary"])
    first_change = data["analysis"]["chords"]["segments"][1]
    assert f"{first_change['start_s']:.1f} {first_change['label']}" in text and "Bar starts" in text
    # Progress reached the client, ending at "done".
    assert len(progress) >= 3 and progress[-1][0] == progress[-1][1]
    assert all(message for _, _, message in progress)


async def test_window_and_single_tools(server, music):
    async with Client(server) as client:
        window = await client.call_tool("estimate_tempo", {"audio": "song.wav", "offset_s": 2.0, "duration_s": 6.0})
        key = await client.call_tool("detect_key", {"audio": str(music["song"])})
        chords = await client.call_tool("recognize_chords", {"audio": str(music["song"])})
        beats = await client.call_tool("track_beats", {"audio": str(music["song"])})
    assert not any(r.is_error for r in (window, key, chords, beats))
    audio = window.structured_content["audio"]
    assert audio["offset_s"] == pytest.approx(2.0) and audio["duration_s"] == pytest.approx(6.0)
    assert audio["source_duration_s"] == pytest.approx(12.0, abs=0.05)
    assert window.structured_content["tempo"]["bpm"] == pytest.approx(120.0, rel=0.04)
    assert key.structured_content["key"]["key"] == music["labels"].key
    progression = chords.structured_content["chords"]["progression"]
    assert set(progression) & set(music["labels"].progression)
    downbeats = beats.structured_content["beats"]["downbeats_s"]
    assert len(downbeats) >= 4 and all(0 <= t <= 12.0 for t in downbeats)


async def test_resources_and_prompts(server, music):
    async with Client(server) as client:
        done = await client.call_tool("analyze_clip", {"audio": str(music["song"])})
        sha = done.structured_content["audio"]["sha256"]
        cached = await client.read_resource(f"music://analysis/{sha}")
        roots = await client.read_resource("music://roots")
        templates = (await client.list_resource_templates()).resource_templates
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        prompt = await client.get_prompt("compare_tracks", {"audio_a": "a.wav", "audio_b": "b.wav"})
        with pytest.raises(Exception, match="No cached analysis"):
            await client.read_resource("music://analysis/" + "0" * 64)
        with pytest.raises(Exception, match="not a sha256"):
            await client.read_resource("music://analysis/not-a-hash")
        with pytest.raises(Exception, match="Unknown resource"):  # the SDK refuses traversal itself
            await client.read_resource("music://analysis/..%2F..%2Fetc")
    analysis = json.loads(cached.contents[0].text)
    assert analysis["analysis"]["tempo"]["bpm"] == done.structured_content["analysis"]["tempo"]["bpm"]
    assert json.loads(roots.contents[0].text)["roots"] == [str(music["root"].resolve())]
    assert [t.uri_template for t in templates] == ["music://analysis/{sha256}"]
    assert {"analyze_track", "compare_tracks"} <= set(prompts)
    text = prompt.messages[0].content.text
    assert "a.wav" in text and "b.wav" in text and "analyze_clip" in text


def data_uri(payload: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(payload).decode()


def bad_cases(music) -> list[tuple[str, str, dict, str]]:
    """(case, tool, arguments, text the error message must contain)."""
    root, outside = music["root"], music["outside"]
    denied = "Allowed roots are"
    private = "not a public internet address"
    big = data_uri(b"RIFF" + b"\0" * 300_000)
    return [
        ("missing file", "analyze_clip", {"audio": str(root / "nope.wav")}, "no such file"),
        ("directory", "analyze_clip", {"audio": str(root / "folder")}, "not an audio file"),
        ("outside roots", "analyze_clip", {"audio": str(outside / "secret.wav")}, denied),
        ("dot-dot traversal", "analyze_clip", {"audio": f"{root}/../outside/secret.wav"}, denied),
        ("symlink out of root", "analyze_clip", {"audio": str(root / "link.wav")}, denied),
        ("non-audio file", "analyze_clip", {"audio": str(root / "notes.wav")}, "cannot decode"),
        ("empty file", "analyze_clip", {"audio": str(root / "empty.wav")}, "empty (0 bytes)"),
        ("corrupt header", "analyze_clip", {"audio": str(root / "corrupt.wav")}, "wav, flac, ogg or mp3"),
        ("zero-length audio", "analyze_clip", {"audio": str(root / "zero.wav")}, "0.00 s"),
        ("silent audio", "analyze_clip", {"audio": str(root / "silent.wav")}, "is silent"),
        ("over-long audio", "analyze_clip", {"audio": str(root / "long.wav")}, "offset_s and duration_s"),
        ("offset past the end", "estimate_tempo", {"audio": "song.wav", "offset_s": 99}, "past the end"),
        ("over-size base64", "analyze_clip", {"audio": big}, "limit for inline audio"),
        ("bad base64", "analyze_clip", {"audio": "data:audio/wav;base64,%%%"}, "not valid base64"),
        ("url 127.0.0.1", "analyze_clip", {"audio": "https://127.0.0.1/a.wav"}, private),
        ("url localhost", "analyze_clip", {"audio": "https://localhost/a.wav"}, private),
        ("url 10.0.0.1", "analyze_clip", {"audio": "https://10.0.0.1/a.wav"}, private),
        ("url metadata", "analyze_clip", {"audio": "https://169.254.169.254/latest/meta-data"}, private),
        ("url ::1", "analyze_clip", {"audio": "https://[::1]/a.wav"}, private),
        ("url mapped ::1", "analyze_clip", {"audio": "https://[::ffff:127.0.0.1]/a.wav"}, private),
        ("plain http", "analyze_clip", {"audio": "http://example.com/a.wav"}, "only https:// URLs"),
        ("wrong type audio", "analyze_clip", {"audio": 123}, "audio"),
        ("wrong type offset", "estimate_tempo", {"audio": "song.wav", "offset_s": "soon"}, "offset_s"),
        ("negative offset", "estimate_tempo", {"audio": "song.wav", "offset_s": -3}, "greater than or equal to 0"),
        ("options not a list", "choose_answer", {"audio": "song.wav", "question": "q?", "options": "a or b"}, "options"),
        ("missing audio", "analyze_clip", {}, "audio"),
        ("missing options", "choose_answer", {"audio": "song.wav", "question": "Which?"}, "options"),
        ("missing question", "ask_about_music", {"audio": "song.wav"}, "question"),
        ("unknown tool", "transcribe_lyrics", {"audio": "song.wav"}, "transcribe_lyrics"),
    ]


async def test_bad_input_battery_each_is_an_actionable_tool_error(server, music):
    """Every case is isError with its message, and the very next call still works."""
    failures = []
    async with Client(server) as client:
        for case, tool, arguments, expected in bad_cases(music):
            result = await client.call_tool(tool, arguments)
            text = result.content[0].text if result.content else ""
            if not result.is_error or expected not in text:
                failures.append(f"{case}: is_error={result.is_error} text={text[:300]!r}")
            healthy = await client.call_tool("estimate_tempo", {"audio": "song.wav"})
            if healthy.is_error:
                failures.append(f"after {case}: server stopped answering: {healthy.content[0].text}")
    assert not failures, "\n".join(failures)


class _Redirector(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "http://10.0.0.1/internal.wav")
        self.send_header("Content-Length", "0")
        self.end_headers()


async def test_redirect_to_a_private_address_is_a_tool_error(music):
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = web.server_address[1]
    try:
        # A LAN media server is explicitly trusted; where it redirects to is still checked.
        settings = make_settings(music, url_schemes=("https", "http"), url_trusted_hosts=(f"127.0.0.1:{port}",))
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("analyze_clip", {"audio": f"http://127.0.0.1:{port}/song.wav"})
    finally:
        web.shutdown()
    assert result.is_error and "10.0.0.1" in result.content[0].text and "not a public" in result.content[0].text


async def test_per_call_timeout_is_a_tool_error_and_the_work_still_lands_in_the_cache(music):
    arguments = {"audio": "song.wav", "offset_s": 1.5, "duration_s": 7.0}  # a window nobody analysed yet
    impatient = build_server(make_settings(music, call_timeout_s=0.05))
    async with Client(impatient) as client:
        late = await client.call_tool("recognize_chords", arguments)
    assert late.is_error and "did not finish within 0.05 s" in late.content[0].text
    async with Client(build_server(make_settings(music))) as client:
        again = await client.call_tool("recognize_chords", arguments)
    assert not again.is_error and again.structured_content["audio"]["offset_s"] == pytest.approx(1.5)


async def test_dsp_worker_processes_give_the_same_results(music, toolbox):
    window = {"offset_s": 3.0, "duration_s": 8.0}
    async with Client(build_server(make_settings(music, dsp_workers=1, cache_dir=music["cache"] / "workers"))) as client:
        result = await client.call_tool("analyze_clip", {"audio": "song.wav", **window})
    assert not result.is_error, result.content[0].text
    in_thread = toolbox.analyze_clip("song.wav", **window)
    assert result.structured_content["analysis"] == in_thread.analysis.model_dump(mode="json")


# --- subprocesses ----------------------------------------------------------------------


async def test_tinymu_serve_mcp_is_the_same_server(music):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "agent_tools.cli", "serve", "mcp", "--roots", str(music["root"])],
        env=server_env(music),
    )
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert names == {spec.name for spec in TOOL_SPECS}


async def test_stdio_subprocess(music):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server", "--roots", str(music["root"]), "--cache-dir", str(music["cache"])],
        env=server_env(music),
    )
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        bad = await client.call_tool("detect_key", {"audio": str(music["outside"] / "secret.wav")})
        good = await client.call_tool("detect_key", {"audio": str(music["song"])})
    assert DSP_TOOLS <= names
    assert bad.is_error and "Allowed roots are" in bad.content[0].text
    assert not good.is_error and good.structured_content["key"]["key"] == music["labels"].key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(music, *extra: str, env: dict | None = None):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--http", "--port", str(port), "--roots", str(music["root"]), *extra],
        env=env or server_env(music),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("HTTP server did not start")


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr.decode()


def http_client(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)))


INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_http_without_token(music):
    process, url = start_http_server(music)
    try:
        async with Client(http_client(url)) as client:
            result = await client.call_tool("estimate_tempo", {"audio": str(music["song"])})
            bad = await client.call_tool("estimate_tempo", {"audio": "https://10.0.0.1/x.wav"})
        # DNS-rebinding protection: a foreign Host header is refused.
        rebound = httpx.post(url, json=INIT, headers={**MCP_HEADERS, "Host": "evil.example:80"})
    finally:
        stop(process)
    assert not result.is_error and result.structured_content["tempo"]["bpm"] == pytest.approx(120, rel=0.04)
    assert bad.is_error
    assert rebound.status_code == 421


async def test_http_with_token(music, tmp_path):
    env = {**server_env(music), "MY_MCP_TOKEN": "s3cret-token"}
    process, url = start_http_server(music, "--token-env", "MY_MCP_TOKEN", env=env)
    try:
        anonymous = httpx.post(url, json=INIT, headers=MCP_HEADERS)
        wrong = httpx.post(url, json=INIT, headers={**MCP_HEADERS, "Authorization": "Bearer nope"})
        async with Client(http_client(url, "s3cret-token")) as client:
            result = await client.call_tool("detect_key", {"audio": str(music["song"])})
        # The third-party client over HTTP: refused without the token, served with it.
        base = ["--method", "tools/list", "--transport", "http", "--server-url", url]
        refused = run_inspector(music, tmp_path, *base)
        listed = run_inspector(music, tmp_path, *base, "--header", "Authorization: Bearer s3cret-token")
    finally:
        stop(process)
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert refused.returncode != 0 and "auth" in refused.stderr.lower()
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in inspector_result(listed)["tools"]} == {spec.name for spec in TOOL_SPECS}
    assert not result.is_error and result.structured_content["key"]["key"] == music["labels"].key


def test_rebinding_protection_serves_only_named_hosts():
    wildcard = rebinding_protection("0.0.0.0", ["music.lan:*"])
    assert wildcard.enable_dns_rebinding_protection
    assert "music.lan:*" in wildcard.allowed_hosts and "http://music.lan:*" in wildcard.allowed_origins
    assert not any(h.startswith("0.0.0.0") for h in wildcard.allowed_hosts)
    assert "192.168.1.20:*" in rebinding_protection("192.168.1.20", []).allowed_hosts


def test_non_loopback_bind_without_token_is_refused(music):
    env = server_env(music)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--http", "--host", "0.0.0.0", "--roots", str(music["root"])],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "without a token" in done.stderr and done.stdout == ""


def test_missing_root_is_refused_at_start(music, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--roots", str(tmp_path / "no-such-folder")],
        env=server_env(music), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "is not a directory" in done.stderr and done.stdout == ""


def test_example_client_script(music):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mcp_client_analyze.py"), str(music["song"])],
        env=server_env(music), capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    summary, _, body = done.stdout.partition("\n")
    result = json.loads(body)
    assert result["summary"] == summary
    assert result["analysis"]["tempo"]["bpm"] == pytest.approx(120, rel=0.04)


# --- MCP Inspector CLI (a third-party client) -------------------------------------------


def inspector_command() -> list[str] | None:
    local = REPO / ".cache" / "node" / "node_modules" / ".bin" / "mcp-inspector"
    if local.exists():
        return [str(local)]
    if shutil.which("npx"):
        return ["npx", "--yes", "@modelcontextprotocol/inspector@2.12.0"]
    return None


def run_inspector(music, tmp_path, *method_args: str) -> subprocess.CompletedProcess:
    command = inspector_command()
    if command is None:
        pytest.fail("MCP Inspector not installed: run `make test` (it installs it into .cache/node) or install Node.js")
    env = {**server_env(music), "HOME": str(tmp_path)}
    if "--server-url" in method_args:
        target = []
    else:  # the inspector starts the server itself over stdio
        target = ["-e", f"TINYMU_CACHE_DIR={music['cache']}", "--cwd", str(REPO), "--",
                  sys.executable, "-m", "mcp_server", "--roots", str(music["root"])]
    return subprocess.run(
        [*command, "--cli", "--format", "json", "-q", *method_args, *target],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )


def inspector_result(done: subprocess.CompletedProcess) -> dict:
    """The JSON-RPC result the inspector printed (its json format wraps it as {"result": ...})."""
    payload = json.loads(done.stdout)
    return payload.get("result", payload)


def test_inspector_lists_tools(music, tmp_path):
    done = run_inspector(music, tmp_path, "--method", "tools/list")
    assert done.returncode == 0, done.stderr
    tools = {tool["name"]: tool for tool in inspector_result(done)["tools"]}
    assert set(tools) == {spec.name for spec in TOOL_SPECS}
    assert tools["analyze_clip"]["annotations"]["readOnlyHint"] is True


def test_inspector_calls_analyze_clip(music, tmp_path):
    arguments = json.dumps({"audio": str(music["song"])})
    done = run_inspector(music, tmp_path, "--method", "tools/call", "--tool-name", "analyze_clip", "--tool-args-json", arguments)
    assert done.returncode == 0, done.stderr
    result = inspector_result(done)
    structured = result["structuredContent"]
    assert structured["analysis"]["tempo"]["bpm"] == pytest.approx(120, rel=0.04)
    # A third-party client shows the LLM-facing text: the summary and the timed chord changes.
    text = result["content"][0]["text"]
    assert text.startswith(structured["summary"]) and "Chord changes" in text
    assert structured["analysis"]["key"]["key"] == music["labels"].key
    assert structured["audio"]["duration_s"] == pytest.approx(12.0, abs=0.05)


def test_inspector_bad_path_exits_with_code_5(music, tmp_path):
    arguments = json.dumps({"audio": str(music["outside"] / "secret.wav")})
    done = run_inspector(music, tmp_path, "--method", "tools/call", "--tool-name", "analyze_clip", "--tool-args-json", arguments)
    assert done.returncode == 5
    assert "Allowed roots are" in done.stdout + done.stderr


# --- model tools ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_server(music):
    """A server whose model is a real but tiny, untrained TinyMU (fast on CPU; the SmolLM2 tokenizer
    comes from the offline GGUF conversion the model tests also use)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYMU_CACHE_DIR", str(REPO / ".cache" / "tinymu"))
        patch.setenv("TINYMU_CHECKPOINT", "preset:tiny")
        tools = MusicTools(make_settings(music))
        assert tools.model.info().trained is False  # load it now, inside the patched environment
    return build_server(tools.settings, tools=tools)


async def test_model_tools_flag_untrained_weights(model_server, music):
    options = ["an electric guitar", "a string quartet", "a solo flute"]
    async with Client(model_server) as client:
        asked = await client.call_tool("ask_about_music", {"audio": "song.wav", "question": "What instruments play?"})
        described = await client.call_tool("describe_music", {"audio": "song.wav", "duration_s": 10})
        chosen = await client.call_tool(
            "choose_answer", {"audio": "song.wav", "question": "What is the lead instrument?", "options": options}
        )
        duplicate = await client.call_tool(
            "choose_answer", {"audio": "song.wav", "question": "Which?", "options": ["rock", "Rock"]}
        )
    for result in (asked, described, chosen):
        assert not result.is_error, result.content[0].text
        data = result.structured_content
        assert data["trained"] is False and data["backend"]["trained"] is False
        assert "untrained" in data["warning"] and data["summary"].startswith("(untrained model)")
        assert data["audio"]["sha256"]
    assert isinstance(asked.structured_content["answer"], str)
    assert described.structured_content["audio"]["duration_s"] == pytest.approx(10.0)
    choice = chosen.structured_content
    assert [o["letter"] for o in choice["options"]] == ["A", "B", "C"]
    assert [o["option"] for o in choice["options"]] == options
    assert sum(o["probability"] for o in choice["options"]) == pytest.approx(1.0, abs=1e-4)
    assert choice["choice"] == options[choice["choice_index"]] and choice["choice_letter"] == "ABC"[choice["choice_index"]]
    best = max(choice["options"], key=lambda o: o["probability"])
    assert best["option"] == choice["choice"]
    assert duplicate.is_error and "distinct" in duplicate.content[0].text


async def test_answer_music_question_routes_and_shows_evidence(model_server, music):
    async with Client(model_server) as client:
        tempo = await client.call_tool("answer_music_question", {"audio": "song.wav", "question": "How many BPM is this?"})
        timbre = await client.call_tool("answer_music_question", {"audio": "song.wav", "question": "Which instruments are playing?"})
        mixed = await client.call_tool(
            "answer_music_question", {"audio": "song.wav", "question": "What key is it in, and what mood does it have?"}
        )
    assert not any(r.is_error for r in (tempo, timbre, mixed))
    t, m, x = tempo.structured_content, timbre.structured_content, mixed.structured_content
    assert t["backends"] == ["dsp"] and t["model_answer"] is None
    assert t["tempo"]["bpm"] == pytest.approx(120, rel=0.04) and any("BPM" in e for e in t["evidence"])
    assert m["backends"] == ["model"] and m["model_answer"]["trained"] is False and m["warning"]
    # The untrained model's words stay in model_answer; the summary an agent reads says it is unanswered.
    assert "untrained" in m["summary"] and m["model_answer"]["answer"] not in m["summary"]
    assert set(x["backends"]) == {"dsp", "model"}
    assert x["key"]["key"] == music["labels"].key and x["reason"]


async def test_unreachable_model_service_is_a_tool_error_and_dsp_still_answers(music):
    settings = make_settings(music, model_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with Client(build_server(settings)) as client:
        asked = await client.call_tool("describe_music", {"audio": "song.wav"})
        measured = await client.call_tool("answer_music_question", {"audio": "song.wav", "question": "What's the tempo?"})
        mixed = await client.call_tool(
            "answer_music_question", {"audio": "song.wav", "question": "What's the tempo and which instruments play?"}
        )
    assert asked.is_error and "ModelServiceError" in asked.content[0].text and "TINYMU_URL" in asked.content[0].text
    assert not measured.is_error and measured.structured_content["tempo"]["bpm"] == pytest.approx(120, rel=0.04)
    assert not mixed.is_error and mixed.structured_content["backends"] == ["dsp"]
    assert "could not answer" in mixed.structured_content["warning"]
