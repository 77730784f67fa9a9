"""The `tinymu` command line: analyse music from a shell.

    tinymu analyze song.flac [--offset 30 --duration 30] [--json]
    tinymu demo
    tinymu plot song.flac -o song.png
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from model.dsp.results import ClipAnalysis
from model.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ears for LLM agents: music analysis and TinyMU.")
console = Console()

DEMO_DIR = Path(".cache/demo")
DEMO_SONG = dict(seed=7, style="pop", tempo_bpm=112.0, key=(9, "minor"))  # A minor pop song, 112 BPM


def toolbox_for(audio: Path):
    """The same toolbox the MCP server and LangChain use, allowed to read the folder of `audio`."""
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools

    return MusicTools(Settings.from_env().with_overrides(roots=(audio.resolve().parent,)))


def analyze_file(audio: Path, offset: float = 0.0, duration: float | None = None) -> ClipAnalysis:
    """Analyse `audio` through the shared toolbox (answers from the result cache when it was analysed before)."""
    return toolbox_for(audio).analyze_clip(str(audio.resolve()), offset, duration).analysis


def print_analysis(analysis: ClipAnalysis, title: str, max_chords: int = 16) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    window = f"{analysis.offset_s:.1f}-{analysis.offset_s + analysis.duration_s:.1f} s"
    rows = [("window", window)]
    if analysis.silent:
        rows.append(("result", analysis.summary))
    else:
        tempo, beats, key, chords = analysis.tempo, analysis.beats, analysis.key, analysis.chords
        alternatives = ", ".join(f"{c.bpm:g} ({c.relation})" for c in tempo.alternatives)
        rows += [
            ("tempo", f"{tempo.bpm:g} BPM" if tempo.bpm else "-") if tempo.bpm is None else
            ("tempo", f"{tempo.bpm:g} BPM  confidence {tempo.confidence:.2f}  also: {alternatives}"),
            ("meter", f"{beats.meter or '-'}  ({len(beats.beats_s)} beats, {len(beats.downbeats_s)} bars)"),
            ("key", f"{key.key}  confidence {key.confidence:.2f}  next: "
                    + ", ".join(f"{c.key} {c.confidence:.2f}" for c in key.alternatives[:2]) if key.key else key.summary),
            ("chords", chords.summary),
        ]
        segments = [f"{s.start_s:6.2f}  {s.label}" for s in chords.segments[:max_chords]]
        more = len(chords.segments) - max_chords
        rows.append(("chord times", "\n".join(segments) + (f"\n... {more} more" if more > 0 else "")))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@app.command()
def analyze(
    audio: Annotated[Path, typer.Argument(help="Audio file (wav, flac, ogg, mp3, aiff ...).")],
    offset: Annotated[float, typer.Option(help="Start of the window to analyse, seconds.")] = 0.0,
    duration: Annotated[float | None, typer.Option(help="Length of the window, seconds (default: to the end).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Tempo, beats, meter, key and chords of AUDIO."""
    try:
        analysis = analyze_file(audio, offset, duration)
    except InputError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if json:
        print(analysis.model_dump_json(indent=2))
    else:
        print_analysis(analysis, title=str(audio))


@app.command()
def demo() -> None:
    """Render an example song with the project's own synthesiser, analyse it, then ask TinyMU about it."""
    from training.synth import write_song

    with console.status("rendering the example song"):
        labels = write_song(DEMO_DIR, duration_s=30.0, name="example", **DEMO_SONG)
    path = DEMO_DIR / "example.wav"
    console.print(f"Rendered {path}: {labels.style} in {labels.key}, {labels.tempo_bpm:g} BPM, {labels.meter}, "
                  f"loop {' '.join(labels.progression)}, lead {labels.lead_instrument}.")
    tools = toolbox_for(path)
    with console.status("analysing (first run loads the madmom networks)"):
        analysis = tools.analyze_clip(str(path.resolve())).analysis
    print_analysis(analysis, title=f"tinymu analyze {path}")
    ask_model_demo(tools, str(path.resolve()))


def ask_model_demo(tools, audio: str) -> None:
    """Ask the embedded TinyMU (or TINYMU_URL) a few questions about the demo clip, as an agent would."""
    from model.errors import TinyMUError

    console.rule("TinyMU and the router")
    try:
        with console.status("loading TinyMU (first run converts SmolLM2 once, ~30 s)"):
            choices = [
                tools.choose_answer(audio, "Is this piece in a major or a minor key?", ["major", "minor"]),
                tools.choose_answer(audio, "Which instrument family plays the melody?",
                                    ["piano", "guitar", "strings", "brass", "reed", "organ"]),
            ]
        routed = tools.answer_music_question(audio, "How fast is it, and what instrument plays the melody?")
    except TinyMUError as error:
        console.print(f"[yellow]model unavailable:[/yellow] {error}")
        return
    for result in choices:
        shares = ", ".join(f"{o.option} {o.probability:.2f}" for o in result.options)
        console.print(f"[bold]choose_answer[/bold] {result.question}\n  -> {result.choice}  ({shares})")
    console.print(f"[bold]answer_music_question[/bold] {routed.question}\n  -> {routed.summary}\n"
                  f"  backends: {' + '.join(routed.backends)}; evidence: {'; '.join(routed.evidence)}")
    model = choices[0].backend
    console.print(f"model: {model.name} ({model.checkpoint or 'no checkpoint'}), "
                  + ("trained" if model.trained else "[yellow]UNTRAINED: answers are not meaningful[/yellow]"))
    if choices[0].warning:
        console.print(f"[yellow]{choices[0].warning}[/yellow]")


# `tinymu serve ...`: long-running servers (the MCP server here; the model service adds `serve model`).
serve_app = typer.Typer(no_args_is_help=True, help="Run a server: `mcp` (the MCP server) and friends.")
app.add_typer(serve_app, name="serve")


def _register_serve_mcp() -> None:
    from mcp_server.cli import serve as serve_mcp

    serve_app.command("mcp")(serve_mcp)


_register_serve_mcp()


@serve_app.command("model")
def serve_model_command(
    checkpoint: Annotated[str | None, typer.Option(help="TinyMU weights (.safetensors, directory or official "
                                                        "tinymu.pt); default: the shipped checkpoint.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (bfloat16 on CUDA).")] = "auto",
    host: Annotated[str, typer.Option(help="Bind address; non-loopback addresses require a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8765,
    token_env: Annotated[str, typer.Option(help="Environment variable holding the bearer token.")] = "TINYMU_TOKEN",
    batch_window_ms: Annotated[float, typer.Option(help="How long to gather concurrent requests into a batch.")] = 10.0,
    max_batch: Annotated[int, typer.Option(help="Most requests in one batch.")] = 8,
    quantize: Annotated[str | None, typer.Option(help="'int8': int8 decoder weights, ~2x faster CPU decoding.")] = None,
) -> None:
    """Serve TinyMU over HTTP (answer, caption, choose, embed, health; OpenAPI at /openapi.json).
    Agent hosts reach it by setting TINYMU_URL (and TINYMU_TOKEN)."""
    from model.service.server import serve_model

    try:
        serve_model(checkpoint=checkpoint, device=device, host=host, port=port, token=os.environ.get(token_env) or None,
                    batch_window_ms=batch_window_ms, max_batch=max_batch, quantize=quantize)
    except (InputError, ValueError) as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None



@app.command()
def plot(
    audio: Annotated[Path, typer.Argument(help="Audio file to draw.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the PNG.")] = Path("plot.png"),
    offset: Annotated[float, typer.Option(help="Start of the window to draw, seconds.")] = 0.0,
    duration: Annotated[float | None, typer.Option(help="Length of the window, seconds (default: to the end).")] = None,
) -> None:
    """Draw AUDIO as a PNG: mel spectrogram, chord segments, and the waveform with beats and downbeats."""
    from model.errors import TinyMUError

    tools = toolbox_for(audio)
    try:
        picture = tools.plot_clip(str(audio.resolve()), offset, duration)
        analysis = tools.analyze_clip(str(audio.resolve()), offset, duration).analysis  # cached by plot_clip
    except TinyMUError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(picture.png)
    console.print(f"Wrote {out} ({picture.width_px}x{picture.height_px} px). {analysis.summary}")


if __name__ == "__main__":
    app()
