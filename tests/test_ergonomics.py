"""Agent ergonomics (issue 18.5), through the real MCP SDK client and real rendered audio:
what text an LLM reads (a 4-minute clip's analysis in under 2,000 SmolLM2 tokens, every chord change
with its time), `detail`, the same text through LangChain, progress that never goes silent,
`list_audio_files`, client roots, completions, and the model preloaded at server start."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mcp import Client, StdioServerParameters
from mcp.types import ListRootsResult, PromptReference, ResourceTemplateReference, Root

from agent_tools.config import Settings
from agent_tools.langchain_tools import build_toolkit
from agent_tools.tools import MusicTools
from mcp_server import server as server_module
from mcp_server.server import HEARTBEAT_EARLY_S, HEARTBEAT_S, build_server
from model.lm.smollm2 import load_tokenizer
from training.synth import write_song

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 2000


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A music folder: a 4-minute song in a subfolder, a 10 s one at the top, and things never to list."""
    base = tmp_path_factory.mktemp("ergonomics")
    root, outside = base / "music", base / "outside"
    write_song(root / "albums", 11, duration_s=240, name="long_song")
    short = write_song(root, 3, duration_s=10, name="short")
    (root / "short.json").unlink()  # labels are not audio; notes.txt stands for non-audio files
    (root / "albums" / "long_song.json").unlink()
    (root / "notes.txt").write_text("not audio")
    (root / ".trash").mkdir()
    sf.write(root / ".trash" / "deleted.wav", 0.1 * np.ones(22050), 22050)
    outside.mkdir()
    sf.write(outside / "secret.wav", 0.1 * np.ones(22050), 22050)
    (root / "link.wav").symlink_to(outside / "secret.wav")
    return {"base": base, "root": root, "outside": outside, "long": root / "albums" / "long_song.wav",
            "short": root / "short.wav", "short_labels": short}


def make_settings(library, **changes) -> Settings:
    # A 4-minute mono 44.1 kHz file needs about 3 GB by the memory estimate: raise the per-call budget.
    base = dict(roots=(library["root"],), cache_dir=library["base"] / "cache", max_call_memory_mb=4096,
                max_duration_s=300.0, call_timeout_s=600.0)
    return Settings(**{**base, **changes})


@pytest.fixture(scope="module")
def toolbox(library):
    # madmom in a worker process, as `--dsp-workers 1` serves: in the server process its decoders hold the
    # GIL for seconds at a time, which delays the heartbeats (up to about 10 s on a loaded machine).
    return MusicTools(make_settings(library, dsp_workers=1))


def call(server, tool: str, arguments: dict, **client_options):
    """One tool call through a real in-process MCP client: (result, [(seconds since start, done, message)])."""
    progress = []

    async def run():
        started = time.monotonic()

        async def on_progress(done, total, message):
            progress.append((time.monotonic() - started, done, message))

        async with Client(server, **client_options) as client:
            return await client.call_tool(tool, arguments, progress_callback=on_progress)

    return asyncio.run(run()), progress


# The heartbeat while the long song is analysed: shorter than the server's 3 s, because on a fast machine
# the whole analysis takes about 4 s, too short to show two heartbeats of 3 s.
TEST_HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def long_analysis(toolbox, library):
    """analyze_clip on the 4-minute song, computed now (cold cache), with the progress it reported."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "HEARTBEAT_S", TEST_HEARTBEAT_S)
        patch.setattr(server_module, "HEARTBEAT_EARLY_S", TEST_HEARTBEAT_S * HEARTBEAT_EARLY_S / HEARTBEAT_S)
        result, progress = call(build_server(toolbox.settings, tools=toolbox), "analyze_clip",
                                {"audio": str(library["long"])})
    assert not result.is_error, result.content[0].text
    return result, progress


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()  # SmolLM2's: the model this project ships


def test_long_clip_text_is_the_summary_and_every_timed_chord_change_in_under_2000_tokens(long_analysis, tokenizer):
    result, _ = long_analysis
    text = result.content[0].text
    analysis = result.structured_content["analysis"]
    tokens = len(tokenizer(text)["input_ids"])
    full = len(tokenizer(json.dumps(result.structured_content, indent=2))["input_ids"])
    assert tokens <= MAX_TOKENS and full > 5 * tokens, (tokens, full)
    assert text.startswith(result.structured_content["summary"])
    # Every chord change, with its time, is in the text an agent reads (the structured content has the rest).
    segments = analysis["chords"]["segments"]
    assert len(segments) > 40
    for segment in segments:
        assert f"{segment['start_s']:.1f} {segment['label']}" in text
    assert f"{len(segments)} in all" in text and "detail=true" not in text.split("Chord changes")[1].split("\n")[0]
    # The bars: as a steady grid (synthetic songs keep time), anchored on the measured first and last bar.
    downbeats = analysis["beats"]["downbeats_s"]
    assert f"{len(downbeats)} bars" in text
    assert f"{downbeats[0]:.2f} + (n-1) x" in text and f"last bar {downbeats[-1]:.2f}" in text
    assert f"meter {analysis['beats']['meter']}" in text and f"key {analysis['key']['key']}" in text


def test_detail_puts_the_full_result_in_the_text(long_analysis, toolbox, library, tokenizer):
    result, _ = long_analysis
    detailed, _ = call(build_server(toolbox.settings, tools=toolbox), "analyze_clip",
                       {"audio": str(library["long"]), "detail": True})
    text = detailed.content[0].text
    full = json.loads(text.split("Full result (JSON): ", 1)[1])
    assert full["analysis"]["chords"]["segments"] == result.structured_content["analysis"]["chords"]["segments"]
    assert full["analysis"]["beats"]["beats_s"] == result.structured_content["analysis"]["beats"]["beats_s"]
    assert detailed.structured_content == result.structured_content
    assert len(tokenizer(text)["input_ids"]) > 3 * MAX_TOKENS


def test_progress_is_never_silent_during_a_long_analysis(long_analysis):
    _, progress = long_analysis
    times = [t for t, _, _ in progress]
    values = [done for _, done, _ in progress]
    assert times[-1] > 2 * TEST_HEARTBEAT_S, "the analysis was too quick to show heartbeats"
    gaps = np.diff([0.0, *times])
    assert gaps.max() <= 2 * TEST_HEARTBEAT_S + 2.0, list(zip(times, [m for _, _, m in progress]))
    assert all(b > a for a, b in zip(values, values[1:])), values  # MCP requires increasing progress
    assert any("still working" in message for _, _, message in progress)


def test_langchain_reads_the_same_text_as_mcp(long_analysis, toolbox, library):
    result, _ = long_analysis
    tool = next(t for t in build_toolkit(toolbox=toolbox) if t.name == "analyze_clip")
    assert "detail" in tool.args
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "analyze_clip",
                           "args": {"audio": str(library["long"])}})
    assert message.content == result.content[0].text
    assert message.artifact["analysis"]["chords"] == result.structured_content["analysis"]["chords"]
    detailed = tool.invoke({"type": "tool_call", "id": "2", "name": "analyze_clip",
                            "args": {"audio": str(library["long"]), "detail": True}})
    assert "Full result (JSON)" in detailed.content


def test_short_clip_single_tools_list_their_facts(toolbox, library):
    server = build_server(toolbox.settings, tools=toolbox)
    chords, _ = call(server, "recognize_chords", {"audio": str(library["short"])})
    beats, _ = call(server, "track_beats", {"audio": str(library["short"])})
    first = chords.structured_content["chords"]["segments"][0]
    assert f"{first['start_s']:.1f} {first['label']}" in chords.content[0].text
    assert "Bar starts" in beats.content[0].text and "Chord changes" not in beats.content[0].text


def test_list_audio_files_finds_the_audio_under_the_roots_and_nothing_else(toolbox, library):
    server = build_server(toolbox.settings, tools=toolbox)
    listed, _ = call(server, "list_audio_files", {})
    files = listed.structured_content["files"]
    assert [f["path"] for f in files] == [str(library["long"].resolve()), str(library["short"].resolve())]
    assert [f["duration_s"] for f in files] == [pytest.approx(240.0, abs=0.1), pytest.approx(10.0, abs=0.1)]
    assert str(library["long"].resolve()) in listed.content[0].text  # the LLM reads the paths
    only_long, _ = call(server, "list_audio_files", {"pattern": "*LONG*"})
    in_albums, _ = call(server, "list_audio_files", {"folder": "albums"})
    capped, _ = call(server, "list_audio_files", {"limit": 1})
    outside, _ = call(server, "list_audio_files", {"folder": str(library["outside"])})
    assert [f["path"] for f in only_long.structured_content["files"]] == [str(library["long"].resolve())]
    assert [f["path"] for f in in_albums.structured_content["files"]] == [str(library["long"].resolve())]
    assert capped.structured_content["total"] == 2 and len(capped.structured_content["files"]) == 1
    assert "limit=1" in capped.content[0].text
    assert outside.is_error and "Allowed roots are" in outside.content[0].text


def roots_callback(*folders: Path):
    async def list_roots(context):
        return ListRootsResult(roots=[Root(uri=folder.resolve().as_uri()) for folder in folders])

    return list_roots


def test_client_roots_narrow_the_servers_roots(toolbox, library):
    server = build_server(toolbox.settings, tools=toolbox)
    albums = roots_callback(library["root"] / "albums")
    # Roots are requested over the back-channel of the initialize-handshake protocol (clients today).
    listed, _ = call(server, "list_audio_files", {}, list_roots_callback=albums, mode="legacy")
    refused, _ = call(server, "detect_key", {"audio": str(library["short"])}, list_roots_callback=albums, mode="legacy")
    assert [f["path"] for f in listed.structured_content["files"]] == [str(library["long"].resolve())]
    assert refused.is_error and "Allowed roots are" in refused.content[0].text
    # A client root outside the server's roots never widens them: the server's roots apply.
    elsewhere = roots_callback(library["outside"])
    wide, _ = call(server, "list_audio_files", {}, list_roots_callback=elsewhere, mode="legacy")
    assert wide.structured_content["total"] == 2
    secret, _ = call(server, "detect_key", {"audio": str(library["outside"] / "secret.wav")},
                     list_roots_callback=elsewhere, mode="legacy")
    assert secret.is_error


def test_client_roots_replace_an_unconfigured_stdio_servers_default(library, tmp_path):
    """`tinymu-mcp` over stdio without --roots would serve the folder it was started in; a client that names
    its roots gets those instead."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server", "--cache-dir", str(tmp_path / "cache")],
        env={k: v for k, v in {**os.environ, "TINYMU_PRELOAD_MODEL": "false"}.items() if k != "TINYMU_ROOTS"},
        cwd=str(tmp_path),
    )

    async def run():
        async with Client(params, list_roots_callback=roots_callback(library["root"]), mode="legacy") as client:
            return await client.call_tool("list_audio_files", {})

    listed = asyncio.run(run())
    assert listed.structured_content["total"] == 2, listed.content[0].text


def test_completions_for_prompt_audio_and_cached_analyses(long_analysis, toolbox, library):
    server = build_server(toolbox.settings, tools=toolbox)
    sha = long_analysis[0].structured_content["audio"]["sha256"]
    root = str(library["root"].resolve())

    async def run():
        async with Client(server) as client:
            prompt = PromptReference(type="ref/prompt", name="analyze_track")
            by_prefix = await client.complete(prompt, {"name": "audio", "value": root + "/sh"})
            by_name = await client.complete(PromptReference(type="ref/prompt", name="compare_tracks"),
                                            {"name": "audio_b", "value": "long"})
            template = ResourceTemplateReference(type="ref/resource", uri="music://analysis/{sha256}")
            hashes = await client.complete(template, {"name": "sha256", "value": sha[:6]})
            return by_prefix.completion, by_name.completion, hashes.completion

    by_prefix, by_name, hashes = asyncio.run(run())
    assert by_prefix.values == [str(library["short"].resolve())]
    assert by_name.values == [str(library["long"].resolve())]
    assert sha in hashes.values and all(h.startswith(sha[:6]) for h in hashes.values)


# --- the model, preloaded at server start ---------------------------------------------------------


def first_model_call(library, tmp_path, *, preload: bool, wait_s: float):
    """Start `tinymu-mcp` over stdio, wait `wait_s` (an agent doing other things), then make the first
    model call: (seconds the call took, its progress messages)."""
    env = dict(os.environ, TINYMU_PRELOAD_MODEL=str(preload).lower(), TINYMU_CACHE_DIR=str(tmp_path / "cache"))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server", "--roots", str(library["root"])], env=env)
    messages = []

    async def run():
        async def on_progress(done, total, message):
            messages.append(message)

        async with Client(params) as client:
            await asyncio.sleep(wait_s)
            started = time.monotonic()
            result = await client.call_tool(
                "choose_answer",
                {"audio": str(library["short"]), "question": "Is this music or silence?", "options": ["music", "silence"]},
                progress_callback=on_progress,
            )
            return result, time.monotonic() - started

    result, took = asyncio.run(run())
    assert not result.is_error, result.content[0].text
    return took, messages


def test_the_model_is_loaded_at_server_start(library, tmp_path):
    # Preloaded: after 30 s of other work, the first model call no longer loads anything. (Its duration is
    # the inference alone, 3 to 30 s on a shared 2-core machine: too noisy to assert; see docs/agents.md.)
    _, messages = first_model_call(library, tmp_path, preload=True, wait_s=30)
    assert not any("loading the music-language model" in m for m in messages), messages
    # Control: without the preload the same first call loads the model itself.
    _, cold_messages = first_model_call(library, tmp_path, preload=False, wait_s=0)
    assert any("loading the music-language model" in m for m in cold_messages), cold_messages


def test_list_audio_files_stops_on_huge_trees_and_says_so(toolbox, library, monkeypatch):
    import agent_tools.tools

    monkeypatch.setattr(agent_tools.tools, "MAX_FILES_EXAMINED", 1)  # the root folder alone exceeds it
    listed = toolbox.list_audio_files()
    assert [f.path for f in listed.files] == [str(library["short"].resolve())]
    assert "search stopped after 1 files" in listed.summary and "pass a folder" in listed.summary
