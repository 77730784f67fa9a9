"""Every example runs, offline, on rendered music, and its agent answers from real measurements."""

import asyncio
import importlib.util
from pathlib import Path

import pytest
from _clips import render_library
from langchain_core.messages import ToolMessage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    return folder, render_library(folder)


@pytest.fixture(autouse=True)
def offline(monkeypatch, library):
    monkeypatch.delenv("TINYMU_AGENT_MODEL", raising=False)  # always the scripted stand-in LLM
    monkeypatch.setenv("TINYMU_CACHE_DIR", str(library[0] / "cache"))


def test_langchain_agent_recovers_and_reports_tempo_and_key(library, capsys):
    folder, labels = library
    result = load_example("langchain_agent").main(str(folder / "rock_e_minor_fast.wav"))
    tools = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert tools[0].status == "error" and "no such file" in tools[0].content
    tempo = next(m for m in tools if m.name == "estimate_tempo" and m.status == "success")
    assert tempo.artifact["tempo"]["bpm"] == pytest.approx(labels["rock_e_minor_fast"].tempo_bpm, rel=0.04)
    answer = result["messages"][-1].content
    assert "E minor" in answer and "BPM" in answer
    assert "E minor" in capsys.readouterr().out


def test_recommend_agent_finds_faster_minor_tracks(library):
    folder, _ = library
    library_folder = folder / "library"
    library_folder.mkdir(exist_ok=True)
    for wav in folder.glob("*.wav"):
        if not wav.name.startswith("query"):
            target = library_folder / wav.name
            if not target.exists():
                target.write_bytes(wav.read_bytes())
    module = load_example("recommend_agent")
    assert module.constraints_in("like this but slower, in a major key") == {"tempo": "slower", "key_mode": "major"}
    result = module.main(str(library_folder), str(folder / "query_rock_a_minor.wav"),
                         "Find tracks like this but faster and in a minor key")
    answer = result["messages"][-1].content
    assert "rock_e_minor_fast.wav" in answer
    assert "pop_c_major_fast.wav" not in answer and "ballad" not in answer  # major or slower: filtered out


def test_mcp_server_inside_a_langchain_agent(library):
    folder, labels = library
    module = load_example("langchain_mcp_agent")
    result = asyncio.run(module.run(str(folder / "ballad_f_major_slow.wav")))
    answer = result["messages"][-1].content
    assert "F major" in answer and "BPM" in answer
    tool = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    structured = tool.artifact["structured_content"]
    assert structured["backends"] == ["dsp"] and structured["key"]["key"] == "F major"


@pytest.mark.slow
def test_mcp_server_over_stdio_inside_a_langchain_agent(library):
    folder, _ = library
    module = load_example("langchain_mcp_agent")
    result = asyncio.run(module.run(str(folder / "pop_c_major_fast.wav"), mode="stdio"))
    assert "C major" in result["messages"][-1].content
