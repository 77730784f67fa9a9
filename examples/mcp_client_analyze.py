"""Analyse an audio file through the TinyMU MCP server, exactly as any MCP client would.

    python examples/mcp_client_analyze.py song.wav
        starts the server itself over stdio (allowed root: the file's folder)
    python examples/mcp_client_analyze.py /abs/path/song.wav --url http://127.0.0.1:8000/mcp
        talks to a running `tinymu-mcp --http` server; the token, if any, is read from $TINYMU_MCP_TOKEN

Prints the one-line summary, then the structured result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def connect(audio: Path, url: str | None, token: str | None):
    """The server to talk to: a URL (streamable HTTP) or a stdio subprocess we start."""
    if url:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
        return streamable_http_client(url, http_client=http)
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server", "--roots", str(audio.parent)],
        env=dict(os.environ),  # keep TINYMU_* settings (cache dir, model URL) for the server
    )


async def analyse(audio: Path, url: str | None = None, token: str | None = None) -> dict:
    """Call analyze_clip on `audio`; return its structured result (raise on a tool error)."""
    async with Client(connect(audio, url, token)) as client:
        result = await client.call_tool("analyze_clip", {"audio": str(audio)})
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result.structured_content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, help="audio file to analyse")
    parser.add_argument("--url", help="URL of a running server, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument("--token-env", default="TINYMU_MCP_TOKEN", help="variable holding the bearer token")
    args = parser.parse_args()
    audio = args.audio if args.url else args.audio.resolve()
    try:
        result = asyncio.run(analyse(audio, args.url, os.environ.get(args.token_env)))
    except RuntimeError as exc:
        sys.exit(f"tool error: {exc}")
    print(result["summary"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
