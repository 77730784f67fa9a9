"""Agent ergonomics (`python -m training.bench ergonomics`): text an LLM reads, progress gaps, first model call.

1. text: a rendered 4-minute song through analyze_clip (real MCP client, in process, cold cache): the
   characters and SmolLM2 tokens of the text content (default, and with detail=true) against the indented
   JSON the server used to put there, and the longest silence between progress notifications;
2. first model call: `tinymu-mcp` started over stdio, the first describe_music call sent right after the
   handshake: seconds from launching the server to the answer (the model preloads in the background);
   with --cold, once more with an empty weights folder, so the GGUF conversion is included.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import typer
from mcp import Client, StdioServerParameters
from rich.console import Console

console = Console(stderr=True)


def text_sizes(folder: Path, duration_s: float) -> dict:
    from agent_tools.config import Settings
    from mcp_server.server import build_server
    from model.lm.smollm2 import load_tokenizer
    from training.synth import write_song

    write_song(folder, 7, duration_s=duration_s, name="long")
    settings = Settings(roots=(folder,), cache_dir=folder / "cache", max_call_memory_mb=4096,
                        max_duration_s=duration_s + 60, call_timeout_s=900)
    tokenizer = load_tokenizer()

    def tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    async def run():
        stamps = []
        started = time.monotonic()

        async def on_progress(done, total, message):
            stamps.append(time.monotonic() - started)

        async with Client(build_server(settings)) as client:
            plain = await client.call_tool("analyze_clip", {"audio": str(folder / "long.wav")}, progress_callback=on_progress)
            took = time.monotonic() - started
            detailed = await client.call_tool("analyze_clip", {"audio": str(folder / "long.wav"), "detail": True})
        return plain, detailed, stamps, took

    plain, detailed, stamps, took = asyncio.run(run())
    text, detail_text = plain.content[0].text, detailed.content[0].text
    old = json.dumps(plain.structured_content, indent=2)  # what the text content was before (the SDK's dump)
    gaps = [b - a for a, b in zip([0.0, *stamps], [*stamps, took])]
    return {
        "clip_s": duration_s, "analysis_s": round(took, 1),
        "chord_changes": len(plain.structured_content["analysis"]["chords"]["segments"]),
        "text": {"chars": len(text), "tokens": tokens(text)},
        "detail": {"chars": len(detail_text), "tokens": tokens(detail_text)},
        "indented_json_before": {"chars": len(old), "tokens": tokens(old)},
        "progress_notifications": len(stamps), "longest_silence_s": round(max(gaps), 1),
    }


def first_model_call(folder: Path, env_changes: dict[str, str]) -> float:
    """Seconds from launching `tinymu-mcp` (stdio) to the answer of a describe_music call sent at once."""
    from training.synth import write_song

    if not (folder / "clip.wav").exists():
        write_song(folder, 3, duration_s=10, name="clip")
    env = {**os.environ, "TINYMU_CACHE_DIR": str(folder / "cache"), **env_changes}
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--roots", str(folder)], env=env)

    async def run():
        started = time.monotonic()
        async with Client(params, read_timeout_seconds=600) as client:
            result = await client.call_tool("describe_music", {"audio": str(folder / "clip.wav")})
        assert not result.is_error, result.content[0].text
        return time.monotonic() - started

    return round(asyncio.run(run()), 1)


def main(
    duration: float = typer.Option(240.0, help="Length of the rendered song, seconds."),
    cold: bool = typer.Option(False, help="Also time a first start with an empty weights folder (GGUF conversion)."),
) -> None:
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        console.print(f"analysing a {duration:.0f} s song ...")
        report["text"] = text_sizes(tmp / "song", duration)
        console.print("first model call, warm weights ...")
        report["first_model_call_s"] = {"warm_weights": first_model_call(tmp / "clip", {"TINYMU_PRELOAD_MODEL": "1"})}
        if cold:
            console.print("first model call, empty weights folder (converts the GGUF) ...")
            report["first_model_call_s"]["cold_weights"] = first_model_call(
                tmp / "clip", {"TINYMU_PRELOAD_MODEL": "1", "TINYMU_WEIGHTS_DIR": str(tmp / "weights")})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
