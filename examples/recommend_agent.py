"""A music-recommendation agent: index a folder, then "find tracks like X but faster / in a minor key".

    python examples/recommend_agent.py MUSIC_FOLDER QUERY_FILE ["like this but faster and in a minor key"]
    python examples/recommend_agent.py --demo OUT_FOLDER   # renders a small labelled library first

The agent has two tools, index_folder and find_similar (plus clip_attributes).
Offline, a scripted stand-in LLM reads the request, turns "faster"/"slower"
and "minor"/"major" into find_similar's constraints, indexes the folder and
answers from the results. Set TINYMU_AGENT_MODEL to use a real LLM instead
(see scripted_model.chat_model).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage

from agent_tools.config import Settings
from agent_tools.langchain_tools import build_toolkit, recoverable_errors

sys.path.insert(0, str(Path(__file__).parent))
from scripted_model import call, chat_model, tool_results  # noqa: E402


def constraints_in(request: str) -> dict:
    """find_similar arguments a request asks for ("but faster", "in a minor key", "slower, major")."""
    text = request.lower()
    args = {}
    if re.search(r"\b(faster|quicker|more upbeat|speed(ier)?)\b", text):
        args["tempo"] = "faster"
    elif re.search(r"\b(slower|calmer|more relaxed)\b", text):
        args["tempo"] = "slower"
    if re.search(r"\bminor\b", text):
        args["key_mode"] = "minor"
    elif re.search(r"\bmajor\b", text):
        args["key_mode"] = "major"
    return args


def scripted_policy(folder: str, query: str, request: str):
    def policy(messages):
        results = tool_results(messages)
        if not results:
            return AIMessage("", tool_calls=[call("index_folder", folder=folder)])
        if len(results) == 1:
            return AIMessage("", tool_calls=[call("find_similar", audio=query, folder=folder, k=3, **constraints_in(request))])
        found = results[-1].artifact or {}
        picks = found.get("results", [])
        if not picks:
            return AIMessage(f"Nothing in the library fits: {results[-1].content}")
        lines = [f"- {Path(p['path']).name}: {p['why']} (similarity {p['similarity']:.2f})" for p in picks]
        return AIMessage(f"Tracks like {Path(query).name} ({', '.join(found['constraints']) or 'no constraints'}):\n"
                         + "\n".join(lines))

    return policy


def main(folder: str, query: str, request: str = "Find tracks like this but faster and in a minor key") -> dict:
    folder_path, query_path = Path(folder).resolve(), Path(query).resolve()
    settings = Settings.from_env().with_overrides(roots=(folder_path, query_path.parent))
    agent = create_agent(
        chat_model(scripted_policy(str(folder_path), str(query_path), request)),
        tools=build_toolkit(settings, names=["index_folder", "find_similar", "clip_attributes"]),
        system_prompt="You recommend music from the user's library. Index the folder, then search it.",
        middleware=[recoverable_errors()],
    )
    result = agent.invoke({"messages": [HumanMessage(f"{request}. Query track: {query_path}. Library: {folder_path}")]})
    print(result["messages"][-1].content)
    return result


def render_demo_library(out: Path) -> tuple[Path, Path]:
    """A query clip and a small library around it (rendered with training.synth; needs a GM soundfont)."""
    from training.synth import write_song

    library = out / "library"
    specs = [("rock_e_minor_fast", 12, "rock", 132.0, (4, "minor")), ("pop_c_major_fast", 13, "pop", 126.0, (0, "major")),
             ("ballad_d_minor_slow", 14, "ballad", 78.0, (2, "minor")), ("ballad_f_major_slow", 15, "ballad", 72.0, (5, "major"))]
    for name, seed, style, tempo, key in specs:
        if not (library / f"{name}.wav").exists():
            write_song(library, seed, duration_s=12.0, name=name, style=style, tempo_bpm=tempo, key=key)
    if not (out / "query_rock_a_minor.wav").exists():
        write_song(out, 11, duration_s=12.0, name="query_rock_a_minor", style="rock", tempo_bpm=100.0, key=(9, "minor"))
    return library, out / "query_rock_a_minor.wav"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--demo":
        library, query = render_demo_library(Path(sys.argv[2]))
        main(str(library), str(query), *sys.argv[3:4])
    elif len(sys.argv) >= 3:
        main(*sys.argv[1:4])
    else:
        sys.exit(__doc__)
