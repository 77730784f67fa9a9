"""The TinyMU MCP server inside a LangChain agent, through `langchain.mcp.MCPAdapter`.

    python examples/langchain_mcp_agent.py path/to/song.wav            # server in-process
    python examples/langchain_mcp_agent.py path/to/song.wav --stdio    # server as a subprocess over stdio
    python examples/langchain_mcp_agent.py path/to/song.wav --url http://127.0.0.1:8000/mcp

`MCPAdapter` (langchain 1.x, beta; needs the `fastmcp` package) discovers the
server's tools and turns them into async LangChain tools; the agent then calls
them like any other tool. This is the way to give an agent the tools of a
TinyMU server running elsewhere (e.g. on a GPU host, `tinymu-mcp --http`).
`langchain-mcp-adapters` is not usable here: it requires mcp < 2.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path

from langchain.agents import create_agent
from langchain_core._api import LangChainBetaWarning
from langchain_core.messages import AIMessage, HumanMessage

sys.path.insert(0, str(Path(__file__).parent))
from scripted_model import call, chat_model, tool_results  # noqa: E402

warnings.filterwarnings("ignore", category=LangChainBetaWarning)
from langchain.mcp import MCPAdapter  # noqa: E402


def scripted_policy(audio: str):
    def policy(messages):
        results = tool_results(messages)
        if not results:
            return AIMessage("", tool_calls=[call("answer_music_question", audio=audio, question="How fast is it, and what key?")])
        # MCP tool results carry the structured result as the artifact; its summary is the answer.
        structured = (results[-1].artifact or {}).get("structured_content") or {}
        return AIMessage(f"The TinyMU server says: {structured.get('summary', results[-1].content)}")

    return policy


def mcp_target(audio: Path, mode: str, url: str | None):
    """What MCPAdapter connects to: an in-process server object, a stdio subprocess, or an HTTP URL."""
    if mode == "url":
        return url
    if mode == "stdio":
        from fastmcp.client.transports import StdioTransport

        repo = Path(__file__).resolve().parent.parent
        return StdioTransport(command=sys.executable, args=["-m", "mcp_server", "--roots", str(audio.parent)], cwd=str(repo))
    from agent_tools.config import Settings
    from mcp_server.server import build_server

    return build_server(Settings.from_env().with_overrides(roots=(audio.parent,)))


async def run(audio: str, mode: str = "inprocess", url: str | None = None) -> dict:
    path = Path(audio).resolve()
    async with MCPAdapter(mcp_target(path, mode, url)) as adapter:
        tools = await adapter.list_tools()
        agent = create_agent(chat_model(scripted_policy(str(path))), tools=tools,
                             system_prompt="Answer questions about music files with the TinyMU tools.")
        result = await agent.ainvoke({"messages": [HumanMessage(f"How fast is {path} and in what key?")]})
    print(result["messages"][-1].content)
    return result


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    mode = "stdio" if "--stdio" in sys.argv else "url" if "--url" in sys.argv else "inprocess"
    url = sys.argv[sys.argv.index("--url") + 1] if mode == "url" else None
    asyncio.run(run(sys.argv[1], mode, url))
