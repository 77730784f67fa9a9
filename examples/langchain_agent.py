"""A LangChain agent that listens to music through the TinyMU toolkit.

    python examples/langchain_agent.py path/to/song.wav ["What's the tempo and key?"]

Offline (the default) a scripted chat model plays the LLM: it first makes a
mistake on purpose (a file that does not exist), reads the error the tool sends
back, then calls the right tools and answers from their results; this shows
that tool errors reach the agent as messages it can recover from.

With a real LLM: `pip install langchain-anthropic` (or langchain-openai ...),
set its API key and `TINYMU_AGENT_MODEL=anthropic:claude-sonnet-4-5`; the same
agent then decides for itself which tools to call.
"""

from __future__ import annotations

import sys
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage

from agent_tools.config import Settings
from agent_tools.langchain_tools import build_toolkit, recoverable_errors

sys.path.insert(0, str(Path(__file__).parent))
from scripted_model import call, chat_model, tool_results  # noqa: E402

TOOLS = ["analyze_clip", "estimate_tempo", "detect_key", "recognize_chords", "track_beats",
         "answer_music_question", "clip_attributes", "plot_clip"]


def scripted_policy(audio: str):
    """What the offline stand-in LLM does: a wrong path first, then tempo and key, then the answer."""

    def policy(messages):
        results = tool_results(messages)
        if not results:
            return AIMessage("", tool_calls=[call("estimate_tempo", audio=audio + ".missing.wav")])
        if len(results) == 1:
            # The error message told us the path was wrong: call again with the right one, and ask the key too.
            return AIMessage("", tool_calls=[call("estimate_tempo", audio=audio), call("detect_key", audio=audio)])
        tempo, key = results[-2], results[-1]
        return AIMessage(f"Measured with madmom: {tempo.content} {key.content}")

    return policy


def build_agent(audio: str, settings: Settings):
    return create_agent(
        chat_model(scripted_policy(audio)),
        tools=build_toolkit(settings, names=TOOLS),
        system_prompt="You answer questions about music files by calling the music tools; quote measured values.",
        middleware=[recoverable_errors()],
    )


def main(audio: str, question: str = "What's the tempo and key of this track?") -> dict:
    path = Path(audio).resolve()
    settings = Settings.from_env().with_overrides(roots=(path.parent,))
    agent = build_agent(str(path), settings)
    result = agent.invoke({"messages": [HumanMessage(f"{question} The file is {path}")]})
    for message in result["messages"]:
        print(f"[{message.type}] {message.content or message.tool_calls}")
    return result


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:3])
