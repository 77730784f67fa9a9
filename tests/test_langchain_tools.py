"""The LangChain toolkit: same registry and schemas as MCP, summary + artifact results, recoverable errors."""

import asyncio

import pytest
from _clips import render_library
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool

from agent_tools.config import Settings
from agent_tools.langchain_tools import build_toolkit, recoverable_errors
from agent_tools.tools import TOOL_SPECS, MusicTools


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lc")
    labels = render_library(folder)
    toolbox = MusicTools(Settings(roots=(folder,), cache_dir=folder / "cache"))
    return folder, labels, {t.name: t for t in build_toolkit(toolbox=toolbox)}


def test_every_registry_tool_is_a_structured_tool_with_the_shared_schema(setup):
    _, _, tools = setup
    assert set(tools) == {s.name for s in TOOL_SPECS}
    tempo = tools["estimate_tempo"]
    assert isinstance(tempo, StructuredTool) and tempo.coroutine is not None
    assert tempo.response_format == "content_and_artifact"
    schema = tempo.args_schema.model_json_schema()
    assert schema["required"] == ["audio"]
    assert "data:audio" in schema["properties"]["audio"]["description"]  # the same Field text MCP publishes
    assert schema["properties"]["offset_s"]["minimum"] == 0
    choose = tools["choose_answer"].args_schema.model_json_schema()
    assert choose["properties"]["options"]["minItems"] == 2
    assert "BPM" in tempo.description


def test_sync_call_gives_summary_content_and_full_artifact(setup):
    folder, labels, tools = setup
    call = {"name": "estimate_tempo", "args": {"audio": str(folder / "pop_c_major_fast.wav")}, "id": "t1", "type": "tool_call"}
    message = tools["estimate_tempo"].invoke(call)
    assert isinstance(message, ToolMessage) and message.status == "success"
    assert "BPM" in message.content and "{" not in message.content  # short text for the LLM
    assert message.artifact["tempo"]["bpm"] == pytest.approx(labels["pop_c_major_fast"].tempo_bpm, rel=0.04)
    assert message.artifact["audio"]["sha256"]


def test_content_carries_the_timed_chord_changes_the_artifact_has(setup):
    """"List the chord changes with their timings" is answerable from the text the LLM reads."""
    folder, _, tools = setup
    call = {"name": "recognize_chords", "args": {"audio": str(folder / "pop_c_major_fast.wav")}, "id": "c1",
            "type": "tool_call"}
    message = tools["recognize_chords"].invoke(call)
    segments = message.artifact["chords"]["segments"]
    assert message.content.startswith(message.artifact["summary"]) and len(segments) >= 3
    for segment in segments:
        assert f"{segment['start_s']:.1f} {segment['label']}" in message.content
    assert "detail" in tools["recognize_chords"].args and "detail" not in tools["describe_music"].args


def test_async_call_matches_sync(setup):
    folder, _, tools = setup
    args = {"audio": str(folder / "ballad_f_major_slow.wav")}
    call = {"name": "detect_key", "args": args, "id": "k1", "type": "tool_call"}
    sync, async_ = tools["detect_key"].invoke(call), asyncio.run(tools["detect_key"].ainvoke(call))
    assert sync.artifact == async_.artifact and sync.artifact["key"]["key"] == "F major"


def test_plot_artifact_has_no_raw_bytes_and_points_at_the_png(setup):
    folder, _, tools = setup
    call = {"name": "plot_clip", "args": {"audio": str(folder / "ballad_f_major_slow.wav")}, "id": "p1", "type": "tool_call"}
    message = tools["plot_clip"].invoke(call)
    from pathlib import Path

    png = Path(message.artifact["image_file"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "png" not in message.artifact
    assert message.artifact["downbeats"] >= 3 and message.artifact["chord_segments"] >= 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"audio": "missing.wav"}, "AudioNotFoundError"),
        ({"audio": "/etc/passwd"}, "AccessDeniedError"),
        ({"audio": "data:audio/wav;base64,AAAA"}, "UnsupportedAudioError"),
        ({"audio": 3.5}, "audio: Input should be a valid string"),  # wrong type: explained, not raised
        ({}, "audio: Field required"),  # missing argument
    ],
)
def test_bad_input_becomes_an_error_tool_message(setup, args, expected):
    _, _, tools = setup
    message = tools["estimate_tempo"].invoke({"name": "estimate_tempo", "args": args, "id": "e1", "type": "tool_call"})
    assert message.status == "error" and expected in message.content



def test_agent_recovers_from_a_tool_error_and_answers_from_measurements(setup):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    folder, labels, tools = setup
    good = str(folder / "rock_e_minor_fast.wav")

    class FakeToolCaller(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    script = iter([
        AIMessage("", tool_calls=[{"name": "detect_key", "args": {"audio": good + ".nope"}, "id": "c1", "type": "tool_call"}]),
        AIMessage("", tool_calls=[{"name": "detect_key", "args": {"audio": good}, "id": "c2", "type": "tool_call"}]),
        AIMessage("It is in E minor."),
    ])
    agent = create_agent(FakeToolCaller(messages=script), tools=list(tools.values()), middleware=[recoverable_errors()])
    result = agent.invoke({"messages": [HumanMessage("What key?")]})
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_messages] == ["error", "success"]
    assert "no such file" in tool_messages[0].content
    assert tool_messages[1].artifact["key"]["key"] == "E minor"


def test_recoverable_errors_middleware_catches_unexpected_exceptions():
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.tools import tool

    @tool
    def flaky(x: int) -> str:
        """Always breaks."""
        raise RuntimeError("disk on fire")

    class FakeToolCaller(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    script = iter([AIMessage("", tool_calls=[{"name": "flaky", "args": {"x": 1}, "id": "f1", "type": "tool_call"}]),
                   AIMessage("Could not do it.")])
    agent = create_agent(FakeToolCaller(messages=script), tools=[flaky], middleware=[recoverable_errors()])
    result = agent.invoke({"messages": [HumanMessage("go")]})
    error = [m for m in result["messages"] if isinstance(m, ToolMessage)][0]
    assert error.status == "error" and "RuntimeError" in error.content and "disk on fire" in error.content
    assert result["messages"][-1].content == "Could not do it."


def test_unknown_tool_names_are_rejected(setup):
    with pytest.raises(ValueError, match="Unknown tool"):
        build_toolkit(Settings(), names=["estimate_tempo", "summon_dragons"])


def test_trained_weights_carry_their_caveat_into_every_model_result(setup, tmp_path):
    """A trained checkpoint's caveat (e.g. "synthetic training data only") is the warning agents read."""
    from model.lm import checkpoints
    from model.lm.config import preset
    from model.lm.engine import load_engine
    from model.lm.network import build_model

    caveat = "trained on synthetic clips only"
    file = checkpoints.save_checkpoint(build_model(preset("tiny")), tmp_path / "ckpt", trained=True, caveat=caveat)
    folder, labels, _ = setup
    trained = MusicTools(Settings(roots=(folder,), cache_dir=tmp_path / "cache"),
                         model=load_engine(str(file), device="cpu"))
    result = trained.describe_music(str(folder / f"{next(iter(labels))}.wav"), duration_s=5.0)
    assert result.trained is True and result.warning == caveat and result.backend.caveat == caveat
    assert not result.summary.startswith("(untrained model)")
