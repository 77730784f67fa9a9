"""The clip picture: drawn from the real analysis, red bar lines where the downbeats are."""

import io

import matplotlib.image
import numpy as np
from _clips import render_library
from typer.testing import CliRunner

from agent_tools.cli import app
from model.audio import load_audio
from model.dsp.plot import chord_name, plot_clip_png


def red_columns(png: bytes) -> list[int]:
    """x positions of pure-red vertical lines (the downbeats) in the lower (waveform) panel."""
    image = matplotlib.image.imread(io.BytesIO(png))[..., :3]
    height = image.shape[0]
    panel = image[int(height * 0.72) : int(height * 0.88)]
    red = (panel[..., 0] > 0.75) & (panel[..., 1] < 0.3) & (panel[..., 2] < 0.3)
    columns = np.flatnonzero(red.mean(axis=0) > 0.5)
    groups = np.split(columns, np.flatnonzero(np.diff(columns) > 2) + 1) if columns.size else []
    return [int(g.mean()) for g in groups]


def test_downbeats_are_drawn_where_they_are(tmp_path):
    render_library(tmp_path)
    clip = load_audio(tmp_path / "ballad_f_major_slow.wav")
    downbeats = [1.0, 4.0, 7.0, 10.0]
    png = plot_clip_png(clip, beats=[0.25 * i for i in range(48)], downbeats=downbeats,
                        chords=[(0.0, 6.0, "F:maj"), (6.0, 12.0, "D:min")], title="test")
    xs = red_columns(png)
    assert len(xs) == len(downbeats)
    spacing = np.diff(xs)
    assert np.all(np.abs(spacing - spacing.mean()) <= 2)  # evenly spaced, as the times are


def test_cli_plot_writes_a_png_of_the_analysis(tmp_path):
    render_library(tmp_path)
    out = tmp_path / "pictures" / "song.png"
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "pop_c_major_fast.wav"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(red_columns(png)) >= 4  # 12 s at 126 BPM in 4/4: six bars
    assert "C major" in result.output


def test_cli_plot_bad_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "nothing.wav"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())  # rich wraps lines
    assert not (tmp_path / "x.png").exists()


def test_chord_names_read_like_a_lead_sheet():
    assert [chord_name(c) for c in ("A:min", "G:maj7", "C:maj", "D:7", "N")] == ["Am", "Gmaj7", "C", "D7", "N.C."]
