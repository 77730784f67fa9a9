"""Loading and saving TinyMU weights.

Three formats come in:

* the official release `tinymu.pt` (a dict whose "model" state dict uses the reference
  module names `audio_encoder.enc.*`, `projector.linear{1,2}.*`, `text_decoder.lm.*`),
  loaded strictly through a key map;
* an official MATPAC++ encoder file (flat keys `patch_embed.*`, `cls_token`, `pos_embed`,
  `student_encoder.blocks.N.*`, `student_encoder.norm.*`), refused when `pos_embed` or a
  block is missing - the reference loads it with strict=False, where a missing
  `pos_embed` silently stays zero;
* our own format: one `.safetensors` file (or a directory holding `tinymu.safetensors`)
  whose metadata carries the format version, the config as JSON and whether the weights
  were trained. What can be rebuilt may be left out, so a shipped checkpoint holds only
  what training changed: decoder tensors equal to the base decoder named by the config
  (e.g. the offline SmolLM2), and an encoder still equal to its seeded random start
  (`init_seed`; a SHA-256 of the regenerated weights is stored and checked on load, so a
  torch version that draws different numbers is refused instead of silently used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.errors import InputError
from model.lm.config import TinyMUConfig
from model.lm.network import TinyMU, build_model

log = logging.getLogger(__name__)

FORMAT_NAME = "tinymu-checkpoint"
FORMAT_VERSION = 1
FILE_NAME = "tinymu.safetensors"


class CheckpointError(InputError):
    """A weights file is missing, malformed, or does not fit the model."""


# -- official reference formats ----------------------------------------------------------

_OFFICIAL_PREFIXES = (
    ("audio_encoder.enc.student_encoder.", "encoder."),
    ("audio_encoder.enc.", "encoder."),
    ("projector.", "projector."),
    ("text_decoder.lm.", "lm."),
)
_IGNORED = re.compile(r"(^|\.)(head_norm|head)\.|rotary_emb\.inv_freq$")


def _torch_load(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        raise CheckpointError(f"cannot read {path} as a PyTorch state dict: {exc}") from exc


def _load_front_end(model: TinyMU, key: str, tensor: torch.Tensor) -> None:
    """The reference stores its log-mel window and filterbank as buffers; ours are computed
    from the config. Take theirs when the shapes fit, so the numbers are theirs exactly."""
    log_mel = model.encoder.log_mel
    if tensor.ndim == 1 and tensor.shape == log_mel.window.shape:
        log_mel.window.copy_(tensor)
    elif tensor.ndim == 2 and tensor.shape == log_mel.mel_fb.T.shape:  # torchaudio stores [freqs, mels]
        log_mel.mel_fb.copy_(tensor.T)
    elif tensor.ndim == 2 and tensor.shape == log_mel.mel_fb.shape:
        log_mel.mel_fb.copy_(tensor)
    else:
        log.warning("ignoring front-end buffer %s with shape %s", key, tuple(tensor.shape))


def load_official_tinymu(model: TinyMU, source: str | Path | dict) -> TinyMU:
    """Load the reference `tinymu.pt` (or its state dict) into `model`, strictly."""
    blob = source if isinstance(source, dict) else _torch_load(source)
    state = blob.get("model", blob)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _IGNORED.search(key):
            continue
        if key.startswith("audio_encoder.enc.log_mel.") or key.startswith("audio_encoder.enc.melspec"):
            with torch.no_grad():
                _load_front_end(model, key, tensor)
            continue
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = tensor
                break
        else:
            raise CheckpointError(f"unexpected key {key!r}: this is not an official TinyMU checkpoint")
    if model.cfg.lm.tie_word_embeddings and "lm.lm_head.weight" not in mapped:
        mapped["lm.lm_head.weight"] = mapped.get("lm.model.embed_tokens.weight")
    _strict_load(model, mapped, "official TinyMU checkpoint")
    return model


def load_matpac_encoder(model: TinyMU, source: str | Path | dict) -> TinyMU:
    """Load an official MATPAC++ encoder file into `model.encoder`, refusing incomplete files."""
    state = source if isinstance(source, dict) else _torch_load(source)
    state = state.get("model", state)
    depth = model.cfg.encoder.depth
    if "pos_embed" not in state:
        raise CheckpointError("MATPAC++ checkpoint has no pos_embed; the encoder would run without "
                              "positions. Use the complete encoder file.")
    missing_blocks = [i for i in range(depth) if not any(k.startswith(f"student_encoder.blocks.{i}.") for k in state)]
    if missing_blocks:
        raise CheckpointError(f"MATPAC++ checkpoint lacks encoder blocks {missing_blocks} of 0..{depth - 1}")
    expected_tokens = model.encoder.pos_embed.shape[1]
    if state["pos_embed"].shape[1] != expected_tokens:
        raise CheckpointError(
            f"pos_embed covers {state['pos_embed'].shape[1] - 1} patches but chunk_frames="
            f"{model.cfg.encoder.chunk_frames} needs {expected_tokens - 1}; set EncoderConfig.chunk_frames to match")
    mapped = {}
    for key, tensor in state.items():
        if _IGNORED.search(key):
            continue
        mapped[key.removeprefix("student_encoder.")] = tensor
    try:
        model.encoder.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"MATPAC++ checkpoint does not fit the encoder: {exc}") from exc
    return model


def _strict_load(model: torch.nn.Module, state: dict, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} does not fit the model: {exc}") from exc


# -- our own format ------------------------------------------------------------------------


@dataclass
class CheckpointHeader:
    config: TinyMUConfig
    trained: bool
    lm_base: str | None  # decoder weights the omitted tensors come from
    encoder_digest: str | None  # set when the encoder is regenerated from cfg.init_seed
    format_version: int
    notes: str
    created: str
    caveat: str = ""  # what a user of these weights must know (e.g. "trained on synthetic music only")


def checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILE_NAME if path.is_dir() or path.suffix != ".safetensors" else path


def _base_lm_state(source: str) -> dict[str, torch.Tensor]:
    from model.lm import smollm2

    folder = Path(smollm2.resolve(source))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"base decoder {source!r} has no safetensors weights to compare against")
    state = {}
    for file in files:
        state.update({"lm." + k: v for k, v in load_file(file).items()})
    return state


def _encoder_digest(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _seeded_encoder_state(cfg: TinyMUConfig) -> dict[str, torch.Tensor]:
    from model.lm.encoder import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return {"encoder." + k: v for k, v in build_encoder(cfg.encoder).state_dict().items()}


def save_checkpoint(model: TinyMU, path: str | Path, *, trained: bool, delta_over_base: bool = True,
                    half: bool = False, notes: str = "", caveat: str = "") -> Path:
    """Write `model` in our format. With `delta_over_base`, decoder tensors identical to the base
    decoder (`cfg.lm_weights`, unless "random") are left out. `half` stores floating tensors
    as float16 to halve the size (inference only). `caveat` travels with the weights into every
    model tool result (as its warning). Returns the file written."""
    file = checkpoint_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.lm.tie_word_embeddings:
        state.pop("lm.lm_head.weight", None)  # shares storage with the input embedding
    lm_base = cfg.lm_weights if delta_over_base and cfg.lm_weights != "random" else None
    if lm_base:
        base = _base_lm_state(lm_base)
        state = {k: v for k, v in state.items() if not (k in base and base[k].shape == v.shape
                                                        and torch.equal(base[k].to(v.dtype), v))}
    encoder_digest = ""
    if delta_over_base and cfg.init_seed is not None:
        seeded = _seeded_encoder_state(cfg)
        if all(torch.equal(seeded[k], state[k]) for k in seeded):
            state = {k: v for k, v in state.items() if k not in seeded}
            encoder_digest = _encoder_digest(model.encoder)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": cfg.to_json(),
        "trained": json.dumps(bool(trained)),
        "lm_base": lm_base or "",
        "encoder_from_seed": encoder_digest,
        "notes": notes,
        "caveat": caveat,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(file), metadata=metadata)
    return file


def read_header(path: str | Path) -> CheckpointHeader:
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{file} is not a safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{file} is not a TinyMU checkpoint (no '{FORMAT_NAME}' metadata)")
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file} uses checkpoint format {version}; this code reads up to {FORMAT_VERSION}")
    return CheckpointHeader(config=TinyMUConfig.from_json(meta["config"]), trained=json.loads(meta["trained"]),
                            lm_base=meta.get("lm_base") or None, format_version=version,
                            encoder_digest=meta.get("encoder_from_seed") or None,
                            notes=meta.get("notes", ""), created=meta.get("created", ""),
                            caveat=meta.get("caveat", ""))


def _int8_replaced_keys(cfg: TinyMUConfig) -> set[str]:
    """State-dict keys that int8 loading replaces: the weights of the decoder's plain Linear
    layers, and the input embedding when the output layer is tied to it."""
    with torch.device("meta"):  # shapes only, no memory
        skeleton = TinyMU(cfg)
    keys = {f"lm.{name}.{part}" for name, module in skeleton.lm.named_modules() if type(module) is torch.nn.Linear
            for part in ("weight", "bias")}
    if cfg.lm.tie_word_embeddings:
        keys.add("lm.model.embed_tokens.weight")
    return keys


def load_checkpoint(path: str | Path, quantize: str | None = None) -> tuple[TinyMU, CheckpointHeader]:
    """Build the model a checkpoint describes and load its weights (on CPU, float32).

    `quantize="int8"`: when the checkpoint leaves every decoder Linear weight at the base
    decoder's values (e.g. it carries only LoRA adapters, norms, projector), the base decoder
    is quantised while it loads (model.tinymu.build_model) and the checkpoint applied on top,
    which keeps the peak memory low. Otherwise the int8 quantisation must see the trained
    weights, so the model loads in float32 and the caller (MusicLM) quantises it afterwards."""
    header = read_header(path)
    cfg = header.config
    file = str(checkpoint_file(path))
    if header.lm_base is None:
        # The file holds the whole decoder: skip loading base weights that would be overwritten.
        cfg = TinyMUConfig.from_dict({**cfg.to_dict(), "lm_weights": "random"})
    else:
        cfg.lm_weights = header.lm_base
    if quantize and header.lm_base is not None:
        with safe_open(file, framework="pt") as handle:
            stored = set(handle.keys())
        quantize = None if stored & _int8_replaced_keys(cfg) else quantize
    else:
        quantize = None
    model = build_model(cfg, quantize=quantize)
    model.cfg = header.config
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(file).items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint has tensors the model lacks: {result.unexpected_keys[:5]}")
    allowed_missing = {"lm.lm_head.weight"} if cfg.lm.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in allowed_missing
               and not (header.lm_base and k.startswith("lm."))
               and not (header.encoder_digest and k.startswith("encoder."))]
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if header.encoder_digest and _encoder_digest(model.encoder) != header.encoder_digest:
        raise CheckpointError("this checkpoint regenerates its frozen encoder from a seed, and this torch version "
                              "draws different weights; re-save it with delta_over_base=False")
    if cfg.lm.tie_word_embeddings and not quantize:  # an int8 lm_head was made from the (unchanged) embedding
        model.lm.tie_weights()
    return model, header
