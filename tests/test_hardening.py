"""Issue 21: memory bombs, the roots race, failing caches, errors with reasons, honest contracts,
model-service failures, timed-out work and settings, each with real parts (real files, real madmom,
the real MCP SDK client, real HTTP servers and sockets)."""

from __future__ import annotations

import base64
import dataclasses
import gc
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import numpy as np
import pytest
import soundfile as sf
from mcp import Client

from agent_tools.cache import ResultCache
from agent_tools.config import Settings
from agent_tools.tools import MAX_OPTIONS, MusicTools
from mcp_server.server import ToolRunner, build_server
from model.audio import load_audio
from model.dsp.results import TempoResult
from model.errors import AudioTooLargeError, InputError, ModelServiceError
from model.lm.muchomusic import LETTERS
from model.service.client import RemoteMusicLM
from training.synth import write_song

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def silent_flac(path: Path, seconds: float, rate: int, channels: int) -> Path:
    """A long silent recording that compresses to almost nothing: the shape of a decompression bomb."""
    block = np.zeros((rate * 10, channels), dtype=np.int16)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return path


def data_uri(path: Path, media: str = "audio/flac") -> str:
    return f"data:{media};base64,{base64.b64encode(path.read_bytes()).decode()}"


def peak_allocated(fn) -> tuple[object, int]:
    """fn's result (or exception) and the peak bytes Python and numpy allocated while it ran."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - the caller inspects it
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    root, outside = base / "music", base / "outside"
    root.mkdir()
    outside.mkdir()
    write_song(root, seed=5, duration_s=6.0, name="song", style="rock", tempo_bpm=120.0, key=(9, "minor"))
    return {"root": root, "outside": outside, "song": root / "song.wav", "cache": base / "cache", "base": base}


def settings_for(music, **changes) -> Settings:
    values = dict(roots=(music["root"],), cache_dir=music["cache"], call_timeout_s=60.0, preload_model=False)
    return Settings(**{**values, **changes})


# --- 1. decompression bombs -------------------------------------------------------------


def test_a_silent_bomb_is_refused_from_its_header_before_decoding(tmp_path, music):
    # 5 minutes of 48 kHz stereo silence: a few kB of FLAC, 110 MB of float32 once decoded, and
    # about 1.4 GB inside madmom (long clips are analysed in windows). A 768 MB budget refuses it
    # before a sample is decoded.
    bomb = silent_flac(tmp_path / "bomb.flac", 300, 48000, 2)
    assert bomb.stat().st_size < 200_000
    tools = MusicTools(settings_for(music, max_call_memory_mb=768))
    error, peak = peak_allocated(lambda: tools.load(data_uri(bomb)))
    assert isinstance(error, AudioTooLargeError), error
    assert "memory budget" in str(error) and "duration_s <=" in str(error)
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MB allocated: the audio was decoded before the check"
    # The window the message suggests fits, and is decoded.
    fits = float(re.search(r"duration_s <= ([0-9.]+)", str(error)).group(1))
    clip = load_audio(bomb, duration_s=fits, limits=tools.settings.audio_limits)
    assert clip.duration_s == pytest.approx(fits, abs=0.01)
    # When only the model listens (no madmom), decoding is all that counts: the same file is decoded
    # (and then found silent), not refused for the analysis' memory.
    with pytest.raises(InputError, match="is silent"):
        tools.load(data_uri(bomb), dsp=False)


def test_decoding_runs_in_blocks_so_channels_never_exist_whole(tmp_path):
    rate, seconds, channels = 44100, 20, 8
    rng = np.random.default_rng(1)
    audio = rng.uniform(-0.5, 0.5, (rate * seconds, channels)).astype(np.float32)
    path = tmp_path / "eight.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    del audio
    clip, peak = peak_allocated(lambda: load_audio(path))
    mono_bytes = rate * seconds * 4
    # Reading all channels at once (the old way) allocates 8 x the mono window, plus the mix.
    assert peak < 3 * mono_bytes, f"peak {peak / MiB:.1f} MB for a {mono_bytes / MiB:.1f} MB mono window"
    reference = sf.read(path, dtype="float32")[0].mean(axis=1)
    np.testing.assert_allclose(clip.samples, reference, atol=1e-6)


def test_decoding_takes_a_bounded_slot(music):
    # Decoding is counted: with every decode slot taken, a load waits; it proceeds once one frees.
    tools = MusicTools(settings_for(music, max_concurrency=1))
    done = threading.Event()
    with tools._slot(tools._decode_slots, "decoding"):
        worker = threading.Thread(target=lambda: (tools.load(str(music["song"])), done.set()))
        worker.start()
        assert not done.wait(0.5)
    assert done.wait(10)


# --- 2. the roots race -------------------------------------------------------------------


def test_swapping_a_folder_for_a_symlink_never_leaks_the_outside_file(music):
    root, outside = music["root"] / "race", music["outside"] / "race"
    for folder, level in ((root, 0.25), (outside, 0.75)):
        folder.mkdir()
        sf.write(folder / "clip.wav", level * np.sin(np.linspace(0, 2000, 22050)), 22050, subtype="PCM_16")
    tools = MusicTools(settings_for(music))
    stop = threading.Event()
    moved = music["root"] / "race_real"

    def swap():
        while not stop.is_set():
            root.rename(moved)
            root.symlink_to(outside)
            root.unlink()
            moved.rename(root)

    swapper = threading.Thread(target=swap)
    swapper.start()
    escapes = reads = refusals = 0
    unexplained = []
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            try:
                clip, _ = tools.load(str(root / "clip.wav"))
            except Exception as exc:  # refused or not found mid-swap: both fine, never a leak
                refusals += 1
                if not any(reason in str(exc) for reason in ("outside", "symbolic link", "no such file")):
                    unexplained.append(repr(exc))
                continue
            reads += 1
            escapes += clip.peak > 0.5
    finally:
        stop.set()
        swapper.join()
    assert escapes == 0, f"{escapes} of {reads} reads returned the file outside the root"
    assert reads > 0 and reads + refusals > 50
    assert not unexplained, unexplained[:3]


def test_a_symlink_loop_a_nul_byte_and_overlong_names_are_refused_with_reasons(music):
    tools = MusicTools(settings_for(music))
    loop = music["root"] / "loop.wav"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    cases = {
        str(loop): "symbolic link",
        "song\0.wav": "NUL byte",
        str(music["root"] / ("n" * 300 + ".wav")): "too long",
        "x" * 1_000_000: "too long for a file path",
    }
    for audio, reason in cases.items():
        with pytest.raises(Exception) as caught:
            tools.load(audio)
        assert reason in str(caught.value), (audio[:40], caught.value)


# --- 4 + 5. no unexplained error, honest contracts (through the real MCP client) --------------


class NotJSONService(BaseHTTPRequestHandler):
    """A 'model service' that answers every request with an HTML page (a captive proxy, say)."""

    def do_GET(self):
        self._html()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._html()

    def _html(self):
        body = b"<html><body>Please log in to the proxy</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def not_json_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotJSONService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def hung_url():
    """A service that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture(scope="module")
def fuzz_files(music):
    root = music["root"]
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("not audio\n" * 50)
    (bad / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(2000))
    (bad / "dir.wav").mkdir()
    os.mkfifo(bad / "pipe.wav")
    (bad / "escape.wav").symlink_to(music["outside"] / "anything.wav")
    (bad / "loop.wav").symlink_to(bad / "loop.wav")
    bomb = silent_flac(music["base"] / "bomb.flac", 300, 48000, 2)
    # A valid file at a path over 1,024 characters (each name under the 255-byte limit).
    deep = root
    while len(str(deep)) < 1040:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    long_path = deep / "song.wav"
    long_path.write_bytes(music["song"].read_bytes())
    assert len(str(long_path)) > 1034
    return {"bad": bad, "bomb": bomb, "long_path": long_path}


def fuzzed_calls(music, files, count: int, seed: int = 21) -> list[tuple[str, dict]]:
    """Tool calls whose arguments mix every kind of bad value the attack battery used."""
    bad = files["bad"]
    audios = [
        "", "   ", "\0", "song\0.wav", "x" * 1_000_000, "n" * 300 + ".wav",
        "/".join(["d" * 250] * 20) + "/a.wav", str(bad / "loop.wav"), str(bad / "dir.wav"),
        str(bad / "pipe.wav"), str(bad / "missing.wav"), str(bad / "empty.wav"), str(bad / "notes.wav"),
        str(bad / "corrupt.flac"), str(bad / "escape.wav"), str(music["outside"]), "../../../../etc/passwd",
        "data:audio/wav;base64,!!!", "data:text/html;base64,PGh0bWw+", "data:audio/flac;base64," + "A" * 5000,
        data_uri(files["bomb"]), "https://127.0.0.1/a.wav", "file:///etc/passwd", "ftp://x/y.wav",
        str(music["song"]),
    ]
    numbers = [0.0, 1e308, float("inf"), float("-inf"), float("nan"), -1.0, True, False, "5", None, 10**30, [1]]
    tools = ["analyze_clip", "estimate_tempo", "track_beats", "detect_key", "recognize_chords", "ask_about_music",
             "describe_music", "choose_answer", "answer_music_question", "clip_attributes", "plot_clip"]
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        tool = rng.choice(tools)
        args: dict = {"audio": rng.choice(audios)}
        valid_audio = args["audio"] == str(music["song"])
        if rng.random() < 0.6:
            args["offset_s"] = rng.choice(numbers[1:] if valid_audio else numbers)
        if rng.random() < 0.4:
            args["duration_s"] = rng.choice(numbers[1:])
        if tool in ("ask_about_music", "choose_answer", "answer_music_question"):
            args["question"] = rng.choice(["What is the tempo and which instruments play?", "", "q" * 5000, 7])
        if tool == "choose_answer":
            args["options"] = rng.choice([["a", "b", "c", "d", "e", "f", "g", "h", "i"], ["a"], ["a", "a"],
                                          ["x" * 1000, "y"], "a,b", ["piano", "guitar"]])
        calls.append((tool, args))
    return calls


def is_unexplained(text: str) -> bool:
    return bool(re.fullmatch(r"(Error executing tool \S+\s*)+", text.strip())) or len(text.strip()) < 25


async def test_fuzzed_arguments_never_give_an_unexplained_error(music, fuzz_files, not_json_url):
    settings = settings_for(music, model_url=not_json_url, max_data_uri_bytes=5 * MiB)
    server = build_server(settings, tools=MusicTools(settings))
    unexplained = []
    async with Client(server) as client:
        for tool, args in fuzzed_calls(music, fuzz_files, count=120):
            result = await client.call_tool(tool, args)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            if result.is_error and is_unexplained(text):
                unexplained.append((tool, {k: str(v)[:40] for k, v in args.items()}, text))
    assert not unexplained, unexplained[:5]


async def test_contracts_match_what_the_tools_accept(music, fuzz_files, not_json_url):
    settings = settings_for(music, model_url=not_json_url)
    server = build_server(settings, tools=MusicTools(settings))
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        options = tools["choose_answer"].input_schema["properties"]["options"]
        assert options["maxItems"] == MAX_OPTIONS == len(LETTERS)  # the schema says what the model labels
        too_many = await client.call_tool("choose_answer", {"audio": str(music["song"]), "question": "Which?",
                                                            "options": [f"option {i}" for i in range(9)]})
        assert too_many.is_error and f"at most {MAX_OPTIONS}" in too_many.content[0].text
        # A boolean is not a number of seconds.
        boolean = await client.call_tool("estimate_tempo", {"audio": str(music["song"]), "offset_s": True})
        assert boolean.is_error and "valid number" in boolean.content[0].text
        huge = await client.call_tool("estimate_tempo", {"audio": str(music["song"]), "offset_s": 1e308})
        assert huge.is_error and "less than or equal to" in huge.content[0].text
        # A valid file at a 1,034+ character path is read, not reported corrupt.
        deep = await client.call_tool("estimate_tempo", {"audio": str(fuzz_files["long_path"])})
        assert not deep.is_error, deep.content[0].text
        assert deep.structured_content["tempo"]["bpm"] == pytest.approx(120, rel=0.05)
        roots = json.loads((await client.read_resource("music://roots")).contents[0].text)
    # The advertised inline-audio limit fits in the HTTP body the server accepts.
    assert roots["max_data_uri_bytes"] * 4 / 3 < settings.http_body_bytes


def test_non_finite_windows_are_refused_with_a_reason(music):
    for window in (dict(offset_s=float("inf")), dict(offset_s=float("nan")), dict(duration_s=float("inf")),
                   dict(offset_s=True)):
        with pytest.raises(InputError, match="finite number of seconds"):
            load_audio(music["song"], **window)


# --- 6. the model service: non-JSON answers, hung services ----------------------------------


def test_a_hung_model_service_fails_at_its_own_timeout_with_a_clear_message(hung_url):
    client = RemoteMusicLM(hung_url, timeout_s=1.0, retries=0)
    started = time.monotonic()
    with pytest.raises(ModelServiceError, match="TINYMU_MODEL_TIMEOUT_S"):
        client.info()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("service", ["not_json_url", "hung_url"])
async def test_routed_answers_keep_their_dsp_part_when_the_model_fails(music, service, request):
    url = request.getfixturevalue(service)
    settings = settings_for(music, model_url=url, model_timeout_s=1.0, call_timeout_s=60.0)
    server = build_server(settings, tools=MusicTools(settings))
    question = "What is the tempo and which instruments play?"
    async with Client(server) as client:
        started = time.monotonic()
        routed = await client.call_tool("answer_music_question", {"audio": str(music["song"]), "question": question})
        elapsed = time.monotonic() - started
        asked = await client.call_tool("ask_about_music", {"audio": str(music["song"]), "question": question})
    assert not routed.is_error, routed.content[0].text
    data = routed.structured_content
    assert data["backends"] == ["dsp"] and data["tempo"]["bpm"] == pytest.approx(120, rel=0.05)
    assert "model service" in data["warning"]
    assert elapsed < 30  # the model's own timeout, not the call's
    reason = "not a JSON object" if service == "not_json_url" else "TINYMU_MODEL_TIMEOUT_S"
    assert asked.is_error and reason in asked.content[0].text


# --- 3 + 8. the cache: unusable directories, failed writes, tampered entries ----------------------


def tempo(bpm: float) -> TempoResult:
    return TempoResult(bpm=bpm, confidence=0.9, alternatives=[], summary=f"{bpm:g} BPM")


SHA = "ab" * 32


def test_an_unusable_cache_dir_leaves_the_cache_memory_only_and_calls_work(music, tmp_path):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a regular file where the cache dir should be")
    cache = ResultCache(not_a_folder)
    assert cache.directory is None and "memory only" in cache.warning and "TINYMU_CACHE_DIR" in cache.warning
    cache.put("tempo", SHA, None, tempo(120.0))
    assert cache.get("tempo", SHA, None, TempoResult).bpm == 120.0
    # A whole tool call through a toolbox whose cache dir is a file.
    tools = MusicTools(settings_for(music, cache_dir=not_a_folder))
    assert tools.estimate_tempo(str(music["song"])).tempo.bpm == pytest.approx(120, rel=0.05)


def test_a_failed_disk_write_never_fails_the_call_and_leaves_no_temp_file(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # any write past 64 bytes fails, as on a full disk
    try:
        cache.put("tempo", SHA, None, tempo(99.0))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert not list((tmp_path / "cache").rglob("*.json"))
    assert cache.get("tempo", SHA, None, TempoResult).bpm == 99.0  # kept in memory


def test_stale_temp_files_are_removed_at_start(tmp_path):
    folder = tmp_path / "cache" / SHA[:2] / SHA
    folder.mkdir(parents=True)
    stale, fresh = folder / "a.tmp", folder / "b.tmp"
    stale.write_text("half")
    fresh.write_text("half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    ResultCache(tmp_path / "cache")
    assert not stale.exists() and fresh.exists()  # a live write's file is left alone


def test_a_tampered_cache_entry_is_not_served(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    cache.put("tempo", SHA, None, tempo(120.0))
    cache.clear_memory()
    (entry,) = (tmp_path / "cache").rglob("*.json")
    data = json.loads(entry.read_text())
    data["result"]["bpm"] = 666.0
    entry.write_text(json.dumps(data))
    assert cache.get("tempo", SHA, None, TempoResult) is None
    assert cache.entries(SHA) == []


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "mcp_server"],
    [sys.executable, "-c", "from agent_tools.cli import app; app()", "analyze", "song.wav"],
])
def test_bad_settings_are_one_line_and_exit_2(command, tmp_path):
    env = dict(os.environ, TINYMU_MAX_CONCURRENCY="two")
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TINYMU_MAX_CONCURRENCY='two'" in lines[0] and "integer" in lines[0], done.stderr


# --- 7. timed-out work gives its place back -----------------------------------------------------


async def test_a_timed_out_call_never_takes_the_slot_it_was_waiting_for(music):
    tools = MusicTools(settings_for(music, max_concurrency=1))
    computed = []

    def heavy():
        with tools.computing():
            computed.append(time.monotonic())

    runner = ToolRunner(timeout_s=0.3)
    slot = tools._compute_slots
    slot.acquire()  # the only slot is busy (a long analysis in progress)
    try:
        with pytest.raises(Exception, match="did not finish within"):
            await runner.run("estimate_tempo", heavy, {}, None)
    finally:
        slot.release()
    await anyio.sleep(0.5)  # the abandoned thread notices within 0.05 s
    assert computed == [], "the timed-out call ran its heavy work after the caller had given up"
    assert slot.acquire(timeout=1)  # and the slot is free for live calls
    slot.release()


async def test_cached_answers_never_wait_behind_an_analysis(music):
    # Decoding has slots of its own, so a cache hit is answered while every compute slot is busy.
    # (A guard of that design: the code before issue 21 passed it too, as it did not bound decoding.)
    settings = settings_for(music, max_concurrency=1)
    tools = MusicTools(settings)
    server = build_server(settings, tools=tools)
    async with Client(server) as client:
        first = await client.call_tool("detect_key", {"audio": str(music["song"])})
        assert not first.is_error
        tools._compute_slots.acquire()  # a long analysis holds the only slot
        try:
            started = time.monotonic()
            again = await client.call_tool("detect_key", {"audio": str(music["song"])})
            waited = time.monotonic() - started
        finally:
            tools._compute_slots.release()
    assert not again.is_error and again.structured_content == first.structured_content
    assert waited < 2.0


async def test_a_cached_answer_needs_no_worker_thread_no_slot_and_no_memory(music, tmp_path):
    # Under load every call, a cache hit too, went to a worker thread: with every thread of the runner taken by
    # calls waiting for a slot or for memory, a cache hit waited for one of them to finish. Now a cached answer
    # is given on the event loop before the call takes a thread. (Before: this test's cached call got no answer
    # until the waiting calls were let go.)
    new_song = song_pair(tmp_path / "songs")[0]
    settings = settings_for(music, roots=(tmp_path, music["root"]), cache_dir=tmp_path / "cache",
                            max_concurrency=2, call_timeout_s=120.0)
    tools = MusicTools(settings)
    server = build_server(settings, tools=tools)
    threads = server.runner._threads
    async with Client(server) as client:
        first = await client.call_tool("detect_key", {"audio": str(music["song"])})
        assert not first.is_error
        # Running analyses hold every compute slot and all of the memory budget.
        for _ in range(settings.max_concurrency):
            tools._compute_slots.acquire()
        held = tools.memory.acquire(tools.memory.available_alone(), analysis=True)
        finished = []

        async def waits(i: int) -> None:
            result = await client.call_tool("detect_key", {"audio": str(new_song)})
            finished.append(result)

        try:
            async with anyio.create_task_group() as group:
                for i in range(int(threads.total_tokens)):
                    group.start_soon(waits, i)
                with anyio.fail_after(60):  # every worker thread waits for memory (a call that ended would say why)
                    while threads.borrowed_tokens < threads.total_tokens and not finished:
                        await anyio.sleep(0.01)
                assert finished == [], finished[0].content[0].text
                again = await client.call_tool("detect_key", {"audio": str(music["song"])})
                # Answered while every thread, slot and byte was still taken, and none of the waiting calls had ended.
                assert not again.is_error and again.structured_content == first.structured_content
                assert finished == [] and threads.borrowed_tokens == threads.total_tokens
                tools.memory.release(held, analysis=True)
                held = 0
                for _ in range(settings.max_concurrency):
                    tools._compute_slots.release()
        finally:
            if held:
                tools.memory.release(held, analysis=True)
                for _ in range(settings.max_concurrency):
                    tools._compute_slots.release()
    # Let go, the waiting calls were all answered (one analysis; the others found it in the cache).
    assert len(finished) == threads.total_tokens and not any(r.is_error for r in finished)
    assert len({json.dumps(r.structured_content["key"], sort_keys=True) for r in finished}) == 1


def test_answer_from_cache_answers_from_memory_and_otherwise_does_nothing(music, tmp_path):
    from agent_tools.context import progress_callback

    song = tmp_path / "song.wav"
    song.write_bytes(music["song"].read_bytes())
    tools = MusicTools(settings_for(music, roots=(tmp_path,), cache_dir=tmp_path / "cache"))
    heard: list[str] = []
    token = progress_callback.set(lambda done, total, message: heard.append(message))
    try:
        args = {"audio": str(song)}
        assert tools.answer_from_cache("detect_key", args) is None  # never analysed: nothing decoded or reserved
        assert "decoding audio" not in heard and tools.memory.most_reserved_bytes == 0
        measured = tools.detect_key(**args)
        assert tools.answer_from_cache("detect_key", args) == measured
        assert tools.answer_from_cache("estimate_tempo", args) is None  # another kind: not measured yet
        assert tools.answer_from_cache("detect_key", {**args, "offset_s": 1.0}) is None  # another window
        assert tools.answer_from_cache("detect_key", {"audio": data_uri(song, "audio/wav")}) is None
        assert tools.answer_from_cache("describe_music", args) is None  # not a tool answered from the cache
        assert tools.answer_from_cache("detect_key", {"audio": str(music["outside"] / "x.wav")}) is None
        # Only memory counts: after a restart (an empty in-memory cache) the disk entry is the ordinary call's.
        tools.cache.clear_memory()
        assert tools.answer_from_cache("detect_key", args) is None
        assert tools.detect_key(**args) == measured
    finally:
        progress_callback.reset(token)


def test_the_stdio_server_starts_with_an_unusable_cache_dir_and_says_so(tmp_path):
    # Before issue 21 the server started too, but every analysis then failed (see the cache tests above).
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    env = {**os.environ, "TINYMU_CACHE_DIR": str(not_a_folder), "TINYMU_PRELOAD_MODEL": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "mcp_server"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "it is a file, not a folder" in done.stderr and "TINYMU_CACHE_DIR" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def http_server(music):
    """The MCP server over streamable HTTP as `tinymu-mcp --http` serves it, in a thread (1 s idle timeout)."""
    import uvicorn

    from mcp_server.http import http_config

    settings = settings_for(music)
    server = build_server(settings, tools=MusicTools(settings))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = http_config(server, settings, host="127.0.0.1", port=port, idle_timeout_s=1)
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    for _ in range(100):
        if http.started:
            break
        time.sleep(0.1)
    yield {"port": port, "url": f"http://127.0.0.1:{port}/mcp", "settings": settings, "config": config}
    http.should_exit = True
    thread.join(10)


def test_silent_http_connections_are_closed(http_server):
    with socket.create_connection(("127.0.0.1", http_server["port"])) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, not by us
        assert time.monotonic() - started < 5


def test_http_requests_are_parsed_in_c_on_uvloop(http_server):
    # Guards a design, measured by the load benchmark rather than timed here: with uvicorn's
    # pure-Python h11 parser on asyncio's loop, accepting and parsing a burst of 100 calls
    # kept cached answers waiting (p95 0.30-0.60 s, within 0.5 s in 4 of 6 runs; with these two 0.34-0.52 s,
    # 10 of 12; docs/reliability.md).
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(http_server["config"].http, HttpToolsProtocol)
    loop = http_server["config"].get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


async def test_inline_audio_up_to_the_advertised_limit_reaches_the_tool_over_http(http_server):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    advertised = http_server["settings"].max_data_uri_bytes
    assert advertised > 4 * MiB  # above the SDK's default body limit, which used to refuse it
    payload = base64.b64encode(b"RIFF" + os.urandom(6 * MiB)).decode()  # 6 MB: not audio, but under the limit
    transport = streamable_http_client(http_server["url"], http_client=httpx2.AsyncClient(timeout=60))
    async with Client(transport) as client:
        result = await client.call_tool("estimate_tempo", {"audio": f"data:audio/wav;base64,{payload}"})
    assert result.is_error and "cannot decode this as audio" in result.content[0].text


def test_the_default_budget_admits_whole_songs_because_long_clips_are_analysed_in_windows():
    limits = Settings().audio_limits
    for minutes in (4, 20):
        frames = int(minutes * 60 * 44100)
        assert limits.window_bytes(frames, 44100) <= limits.max_memory_bytes, f"{minutes} min refused"
    # Analysed in one piece, a 20-minute window would cost several GB.
    whole = dataclasses.replace(limits, analysis_cap_s=None)
    assert whole.window_bytes(20 * 60 * 44100, 44100) > 4 * limits.max_memory_bytes


# --- 8. one memory budget for the whole server ----------------------------------------------------


def song_pair(folder: Path, seconds: float = 6.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        write_song(folder, seed=40 + i, duration_s=seconds, name=f"pair_{i}", style="rock")
    return [folder / f"pair_{i}.wav" for i in range(2)]


def analyse_together(tools: MusicTools, songs: list[Path]) -> tuple[list, int]:
    """analyze_clip on each song, each in its own thread, all at once: the answers (or exceptions) and the
    most memory the toolbox had reserved at once."""
    answers: list = [None] * len(songs)

    def analyse(i: int):
        try:
            answers[i] = tools.analyze_clip(str(songs[i]))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            answers[i] = exc

    threads = [threading.Thread(target=analyse, args=(i,), daemon=True) for i in range(len(songs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return answers, tools.memory.most_reserved_bytes


def budgeted(settings: Settings, room_bytes: float) -> MusicTools:
    """A toolbox whose memory budget leaves `room_bytes` beside what it holds now (the budget counts what the
    toolbox adds to the process: the test runner's own memory is not in it)."""
    tools = MusicTools(settings)
    tools.memory.total_bytes = int(tools.memory.own_bytes() + room_bytes)
    return tools


def test_two_analyses_at_once_stay_within_the_servers_memory_budget(music, tmp_path):
    # Before: each call was checked against its own budget only, so with max_concurrency 2 two long analyses
    # ran side by side (about 3 GB for two 240 s songs). Now the second waits while both would not fit.
    from agent_tools.tools import analysis_bytes

    songs = song_pair(tmp_path / "songs")
    limits = Settings().audio_limits
    one = analysis_bytes(load_audio(songs[0]), limits)
    roomy = settings_for(music, roots=(tmp_path,), max_concurrency=2, cache_dir=tmp_path / "roomy",
                         server_memory_mb=64 * 1024)
    side_by_side, most = analyse_together(MusicTools(roomy), songs)
    assert all(not isinstance(a, Exception) for a in side_by_side), side_by_side
    assert most >= 2 * one, "control: with room for both, the two analyses ran at once"

    tight = settings_for(music, roots=(tmp_path,), max_concurrency=2, cache_dir=tmp_path / "tight")
    tools = budgeted(tight, 1.5 * one + 72 * MiB)  # room for one analysis (and the decodes)
    answers, most = analyse_together(tools, songs)
    assert all(not isinstance(a, Exception) for a in answers), answers
    assert one <= most < 2 * one, f"reserved {most / MiB:.0f} MB at once; one analysis is {one / MiB:.0f} MB"
    assert [a.analysis for a in answers] == [a.analysis for a in side_by_side]  # the same answers, only later
    assert tools.memory.reserved_bytes == 0  # every reservation was given back

    # Room for one analysis but not for the decoding room beside it: an analysis is still admitted when no
    # other runs (the first version waited here forever: both calls' decoded windows were reserved).
    barely = settings_for(music, roots=(tmp_path,), max_concurrency=2, cache_dir=tmp_path / "barely")
    tools = budgeted(barely, one + 40 * MiB)
    answers, most = analyse_together(tools, songs)
    assert all(a is not None and not isinstance(a, Exception) for a in answers), answers
    assert most < 2 * one and tools.memory.reserved_bytes == 0


def test_a_window_that_cannot_fit_beside_the_server_is_refused_with_one_that_fits(music, tmp_path):
    long_tone = tmp_path / "tone_60s.wav"
    sf.write(long_tone, 0.3 * np.sin(np.linspace(0, 2 * np.pi * 440 * 60, 44100 * 60)), 44100, subtype="PCM_16")
    # Room for a 6 s analysis (about 300 MB) beside the server, not for 60 s (about 700 MB).
    tools = budgeted(settings_for(music, roots=(tmp_path, music["root"]), cache_dir=tmp_path / "cache"),
                     450 * MiB)
    with pytest.raises(AudioTooLargeError, match=r"memory budget.*duration_s <= \d") as refused:
        tools.analyze_clip(str(long_tone))
    fits = float(re.search(r"duration_s <= ([\d.]+)", str(refused.value)).group(1))
    assert 5 < fits < 60
    assert tools.analyze_clip(str(long_tone), duration_s=fits).analysis.tempo is not None
    assert tools.memory.reserved_bytes == 0


async def test_cache_hits_are_answered_while_analyses_fill_the_memory_budget(music, tmp_path):
    settings = settings_for(music, roots=(tmp_path, music["root"]), cache_dir=tmp_path / "cache",
                            call_timeout_s=3.0)
    tools = budgeted(settings, 1024 * MiB)
    new_song = song_pair(tmp_path / "songs")[0]
    async with Client(build_server(settings, tools=tools)) as client:
        first = await client.call_tool("detect_key", {"audio": str(music["song"])})
        assert not first.is_error
        # Long analyses hold all of the budget that analyses may take (they leave room for decoding).
        from agent_tools.tools import DECODING_ROOM_BYTES

        held = tools.memory.acquire(tools.memory.available_alone() - DECODING_ROOM_BYTES, analysis=True)
        try:
            started = time.monotonic()
            again = await client.call_tool("detect_key", {"audio": str(music["song"])})
            waited = time.monotonic() - started
            blocked = await client.call_tool("detect_key", {"audio": str(new_song)})
        finally:
            tools.memory.release(held, analysis=True)
    assert not again.is_error and again.structured_content == first.structured_content and waited < 2.0
    # A new analysis waits for memory instead (here until its call times out).
    assert blocked.is_error and "did not finish within" in blocked.content[0].text


# --- 9. DSP worker processes ------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


async def test_a_killed_dsp_worker_fails_its_call_clearly_and_is_replaced(music, tmp_path):
    from agent_tools import dsp_workers

    workers = 2  # a pool of its own (pools are per worker count), so other tests' pools are untouched
    settings = settings_for(music, roots=(tmp_path, music["root"]), cache_dir=tmp_path / "cache",
                            dsp_workers=workers, call_timeout_s=300.0)
    tools = MusicTools(settings)
    long_song = tmp_path / "long.wav"
    write_song(tmp_path, seed=7, duration_s=60.0, name="long", style="rock")
    dsp_workers.start(workers)
    old = dsp_workers.worker_pids(workers)
    assert len(old) == workers

    async def kill_when_analysing():
        while tools.memory.reserved_bytes < 256 * MiB:  # the analysis' reservation: it has been sent to a worker
            await anyio.sleep(0.02)
        await anyio.sleep(1.0)
        for pid in old:
            os.kill(pid, signal.SIGKILL)

    async with Client(build_server(settings, tools=tools)) as client:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(kill_when_analysing)
            failed = await client.call_tool("analyze_clip", {"audio": str(long_song)})
        # The server keeps serving, with new workers.
        answered = await client.call_tool("detect_key", {"audio": str(music["song"])})
    assert failed.is_error and "worker process died" in failed.content[0].text
    assert "call again" in failed.content[0].text.lower()
    assert not answered.is_error, answered.content
    new = dsp_workers.worker_pids(workers)
    assert new and not set(new) & set(old)
    # The failed call's decoded window is held by its exception's traceback until the garbage collector
    # breaks that cycle; its reservation goes with it.
    gc.collect()
    assert tools.memory.reserved_bytes == 0


def test_dsp_workers_end_when_the_server_process_is_killed(tmp_path):
    # A worker holds both ends of the pool's queues, so it never noticed a server stopped by a signal: the
    # reliability benchmark left orphaned workers (about 230 MB each) behind every server it terminated.
    script = ("import sys, time\nfrom agent_tools import dsp_workers\ndsp_workers.start(1)\n"
              "print(*dsp_workers.worker_pids(1), flush=True)\ntime.sleep(120)\n")
    server = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pids = [int(p) for p in server.stdout.readline().split()]
        assert pids and all(alive(p) for p in pids)
        time.sleep(3)  # the worker is importing madmom or warm by now
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "a DSP worker outlived its server"


def test_the_memory_budget_rules():
    # The rules in numbers, with the server's resident size given (the tests above measure real ones).
    from agent_tools.memory import MemoryBudget, MemoryWaitAbandoned

    resident = {"now": 100}
    budget = MemoryBudget(1000, resident=lambda: resident["now"])
    assert budget.available_alone() == 900
    first = budget.acquire(500)
    gave_up = threading.Event()
    gave_up.set()
    with pytest.raises(MemoryWaitAbandoned, match="waited for memory"):
        budget.acquire(500, gave_up)  # 100 + 500 + 500 > 1000: it waits, and this caller has gone
    # Decoded windows never keep an analysis waiting while no other analysis runs (else both could wait forever).
    with budget.analysing(450):
        with pytest.raises(MemoryWaitAbandoned):
            budget.acquire(10, gave_up, analysis=True)  # a second analysis waits for the first
        resident["now"] = 700  # the analyzer keeps 600 of it resident afterwards
    budget.release(first)
    assert budget.reserved_bytes == 0 and budget.most_reserved_bytes == 950
    # What the analyzer keeps is reused by the next analysis, so it is not the server's own memory.
    assert budget.available_alone() == 1000 - (700 - 450)
    # What the process held before the toolbox (a test runner, an agent framework) is not the toolbox's.
    assert MemoryBudget(1000, resident=lambda: 1500, host_bytes=1200).available_alone() == 1000 - 300


def test_a_cache_hit_on_an_unchanged_file_is_answered_without_decoding_it_again(music, tmp_path):
    # Decoding and hashing the window was most of a cache hit's cost (150 ms for a 4-minute song, 4.5 of 8.5 ms
    # for 5 s), paid under a decode slot by every call. The file's identity comes from the opened descriptor.
    from agent_tools.context import progress_callback

    song = tmp_path / "song.wav"
    song.write_bytes(music["song"].read_bytes())
    tools = MusicTools(settings_for(music, roots=(tmp_path,), cache_dir=tmp_path / "cache"))

    def steps(call) -> tuple[object, list[str]]:
        heard: list[str] = []
        token = progress_callback.set(lambda done, total, message: heard.append(message))
        try:
            return call(), heard
        finally:
            progress_callback.reset(token)

    first, heard = steps(lambda: tools.detect_key(str(song)))
    assert "decoding audio" in heard
    again, heard = steps(lambda: tools.detect_key(str(song)))
    assert "decoding audio" not in heard and again == first
    window, heard = steps(lambda: tools.detect_key(str(song), offset_s=1.0))  # another window: decoded
    assert "decoding audio" in heard and window.audio.offset_s == 1.0
    other_kind, heard = steps(lambda: tools.estimate_tempo(str(song)))  # not cached yet: decoded and measured
    assert "decoding audio" in heard and other_kind.audio.sha256 == first.audio.sha256
    # Rewritten in place (same size, new content): its change time moves, so it is decoded again.
    samples, rate = sf.read(song, dtype="int16")
    time.sleep(0.01)
    sf.write(song, (samples // 2).astype(np.int16), rate, subtype="PCM_16")
    changed, heard = steps(lambda: tools.detect_key(str(song)))
    assert "decoding audio" in heard and changed.audio.sha256 != first.audio.sha256
