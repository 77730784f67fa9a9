"""The README and the registry files say what the code does.

The README's tools table, docs/configuration.md's settings table (and manifest.json's tool
list) are generated from `TOOL_SPECS` and `Settings.reference()`; after changing either,
rewrite them with

    .venv/bin/python tests/test_readme.py --write
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
MCPB_VERSION = "2.1.2"
# Tools that use more than their spec's `uses_model` says (routing, model tags beside DSP values).
MIXED_BACKENDS = {"answer_music_question": "DSP + TinyMU", "clip_attributes": "DSP + TinyMU tags",
                  "list_audio_files": "files"}


def tools_table() -> str:
    from agent_tools.tools import TOOL_SPECS

    rows = ["| tool | backend | what it does |", "|---|---|---|"]
    for spec in TOOL_SPECS:
        backend = MIXED_BACKENDS.get(spec.name, "TinyMU" if spec.uses_model else "DSP")
        rows.append(f"| `{spec.name}` | {backend} | {spec.title} |")
    return "\n".join(rows)


def settings_table() -> str:
    from agent_tools.config import Settings

    return Settings.reference()


# Generated tables: (file, marker name) -> how to make it.
GENERATED = {(README, "tools"): tools_table, (CONFIGURATION, "settings"): settings_table}


def section(text: str, name: str) -> str:
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert found, f"lost the <!-- {name}:begin/end --> markers"
    return found.group(1).strip()


def rewrite(file: Path, text: str) -> str:
    for (where, name), make in GENERATED.items():
        if where == file:
            text = re.sub(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)",
                          lambda m: m.group(1) + make() + "\n" + m.group(2), text, flags=re.S)
    return text


def pyproject_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_tables_are_generated_from_the_code():
    for (file, name), make in GENERATED.items():
        assert section(file.read_text(), name) == make(), \
            f"{file.name}'s {name} table is stale: run `python tests/test_readme.py --write`"


def test_readme_is_a_users_page():
    size = len(README.read_text().encode())
    # 3 KB of it are the ten verbatim captions issue 19 asks for.
    assert 6_000 < size < 13_500, f"README is {size} bytes; the history and research belong in docs/"
    assert ".cache/ship" not in README.read_text()


def test_relative_links_point_at_files():
    text = README.read_text()
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)} links to missing {target}"
    assert "docs/model.md" in text and "docs/training-history.md" in text


def test_registry_files_agree_with_the_package():
    server = json.loads((REPO / "server.json").read_text())
    manifest = json.loads((REPO / "manifest.json").read_text())
    version = pyproject_version()
    assert server["version"] == server["packages"][0]["version"] == manifest["version"] == version
    # The registry checks that the PyPI package's README names the server.
    assert f"<!-- mcp-name: {server['name']} -->" in README.read_text()
    assert len(server["description"]) <= 100
    package = server["packages"][0]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert package["identifier"] == project["name"]
    # `uvx <identifier>` runs the script named like the package: it must be the MCP server.
    assert project["scripts"][project["name"]] == project["scripts"]["tinymu-mcp"]

    from agent_tools.config import Settings, env_names

    known = {env_names(name)[0] for name in Settings.model_fields}
    assert {v["name"] for v in package["environmentVariables"]} <= known
    bundle_env = manifest["server"]["mcp_config"]["env"]
    assert {name for name in bundle_env if name.startswith("TINYMU_")} <= known

    from agent_tools.tools import TOOL_SPECS

    assert [t["name"] for t in manifest["tools"]] == [spec.name for spec in TOOL_SPECS]


def mcpb_command() -> list[str]:
    local = REPO / ".cache" / "node" / "node_modules" / ".bin" / "mcpb"
    if local.exists():
        return [str(local)]
    if shutil.which("npx"):
        return ["npx", "--yes", f"@anthropic-ai/mcpb@{MCPB_VERSION}"]
    raise AssertionError("the mcpb CLI is not installed: run `make test` (it installs it into .cache/node) "
                         "or install Node.js")


def test_bundle_manifest_passes_mcpb_validate(tmp_path):
    done = subprocess.run([*mcpb_command(), "validate", str(REPO / "manifest.json")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "validation passes" in done.stdout, done.stdout + done.stderr


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    sys.path.insert(0, str(REPO))
    for generated in (README, CONFIGURATION):
        generated.write_text(rewrite(generated, generated.read_text()))
    from agent_tools.tools import TOOL_SPECS

    manifest_file = REPO / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["tools"] = [{"name": spec.name, "description": spec.title} for spec in TOOL_SPECS]
    manifest_file.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print("README.md tables and manifest.json's tool list rewritten")
