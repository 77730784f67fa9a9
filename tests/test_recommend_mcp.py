"""The recommendation and plot tools through the real MCP SDK client (in-process server)."""

import base64

import pytest
from _clips import render_library
from mcp import Client

from agent_tools.config import Settings
from mcp_server.server import build_server


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp_music")
    render_library(root / "library")
    return root


async def test_index_find_and_plot_over_mcp(music):
    server = build_server(Settings(roots=(music,), cache_dir=music / "cache"))
    library = music / "library"
    async with Client(server) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert {"clip_attributes", "index_folder", "find_similar", "plot_clip"} <= set(listed)
        assert listed["find_similar"].input_schema["properties"]["tempo"]["anyOf"][0]["enum"] == ["faster", "slower", "similar"]
        assert listed["plot_clip"].annotations.read_only_hint is True

        progress = []

        async def on_progress(done, total, message):
            progress.append((done, total))

        indexed = await client.call_tool("index_folder", {"folder": str(library)}, progress_callback=on_progress)
        assert not indexed.is_error and indexed.structured_content["clips"] == 5
        assert progress and progress[-1] == (5, 5)

        found = await client.call_tool("find_similar", {
            "audio": str(library / "query_rock_a_minor.wav"), "folder": str(library), "tempo": "faster", "key_mode": "minor"})
        assert not found.is_error
        assert [r["path"].rsplit("/", 1)[-1] for r in found.structured_content["results"]] == ["rock_e_minor_fast.wav"]

        picture = await client.call_tool("plot_clip", {"audio": str(library / "pop_c_major_fast.wav")})
        assert not picture.is_error
        image = next(c for c in picture.content if c.type == "image")
        assert image.mime_type == "image/png" and base64.b64decode(image.data)[:4] == b"\x89PNG"
        assert "png" not in picture.structured_content and picture.structured_content["downbeats"] >= 4

        bad = await client.call_tool("find_similar", {"audio": str(library / "query_rock_a_minor.wav"), "folder": "/etc"})
        assert bad.is_error and "outside" in bad.content[0].text
        attributes = await client.call_tool("clip_attributes", {"audio": str(library / "ballad_f_major_slow.wav")})
        assert not attributes.is_error and attributes.structured_content["attributes"]["mode"] == "major"
