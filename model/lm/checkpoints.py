"""Loading and saving TinyMU weights.

Three formats come in:

* the official release `tinymu.pt` (a dict whose "model" state dict uses the reference
  module names `audio_encoder.enc.*`, `projector.linear{1,2}.*`, `text_decoder.lm.*`,
  `text_decoder.embed_fn.weight`), loaded strictly through a key map, also from the
  Hugging Face hub (`hf:AndreasXi/TinyMU`, see `download_official`);
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
#
# The reference model (xiquan-li/TinyMU, `m2t`) is `audio_encoder.enc` (the MATPAC++ wrapper)
# -> `projector` (linear1, ReLU, linear2) -> `text_decoder.lm` (a transformers
# LlamaForCausalLM, SmolLM2-135M). `torch.save` writes its whole state dict under "model":
# 430 keys for the official sizes (docs/official-weights.md):
#
#   audio_encoder.enc.patch_embed.proj.{weight,bias}, .cls_token, .pos_embed          4
#   audio_encoder.enc.student_encoder.blocks.{0..11}.{norm1,attn.qkv,attn.proj,
#       norm2,mlp.fc1,mlp.fc2}.{weight,bias}, audio_encoder.enc.student_encoder.norm.*  146
#   audio_encoder.enc.log_mel.MelSpectrogram.spectrogram.window  [400]      (torchaudio buffers)
#   audio_encoder.enc.log_mel.MelSpectrogram.mel_scale.fb        [201, 80]                2
#   projector.linear{1,2}.{weight,bias}                                                 4
#   text_decoder.lm.* (lm_head.weight tied to model.embed_tokens.weight)               273
#   text_decoder.embed_fn.weight (the decoder registers lm.model.embed_tokens twice)     1
#
# Every key is either loaded, or a known duplicate that is checked equal to what it
# duplicates: nothing is skipped unseen.

OFFICIAL_HUB_REPO = "AndreasXi/TinyMU"  # the release: tinymu.pt + tinymu.yaml
OFFICIAL_HUB_FILE = "tinymu.pt"
_OFFICIAL_PREFIXES = (
    ("audio_encoder.enc.student_encoder.", "encoder."),
    ("audio_encoder.enc.", "encoder."),
    ("projector.", "projector."),
    ("text_decoder.lm.", "lm."),
)
OFFICIAL_WINDOW_KEY = "audio_encoder.enc.log_mel.MelSpectrogram.spectrogram.window"
OFFICIAL_FILTERBANK_KEY = "audio_encoder.enc.log_mel.MelSpectrogram.mel_scale.fb"  # torchaudio: [freqs, mels]
OFFICIAL_EMBED_KEY = "text_decoder.lm.model.embed_tokens.weight"
# Copies of the input embedding the reference state dict carries: the decoder's `embed_fn`
# alias always, the output layer when the embeddings are tied (SmolLM2 ties them).
OFFICIAL_EMBED_ALIAS_KEY = "text_decoder.embed_fn.weight"
OFFICIAL_LM_HEAD_KEY = "text_decoder.lm.lm_head.weight"
# Written by transformers releases that kept the rotary frequencies persistent; they are a
# function of the config, so they are checked against ours and dropped.
_ROTARY_KEY = re.compile(r"\.rotary_emb\.inv_freq$")
_MATPAC_HEAD = re.compile(r"^(head_norm|head)\.")  # AudioSet classifier of the encoder-only file


def _torch_load(path: str | Path) -> dict:
    """A PyTorch file, tensors only (no code runs), memory-mapped where the format allows:
    the reference's files also carry the optimizer state, which is then never read."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        raise CheckpointError(f"cannot read {path} as a PyTorch state dict (tensors, numbers and strings "
                              f"only are accepted): {exc}") from exc


def _official_state(blob) -> dict[str, torch.Tensor]:
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError("an official TinyMU checkpoint is a dict whose 'model' entry is the state dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"the state dict holds non-tensors under {not_tensors[:3]}")
    return state


def _check_duplicate(state: dict, key: str, of: str) -> None:
    if key in state and not (state[key].shape == state[of].shape and torch.equal(state[key], state[of])):
        raise CheckpointError(f"{key} should be the same tensor as {of} (the reference ties them) but differs: "
                              "this file was not written by the reference model")


def _load_front_end(model: TinyMU, window: torch.Tensor, filterbank: torch.Tensor) -> None:
    """The reference stores its log-mel window and mel filterbank (torchaudio buffers); ours
    are computed from the config. Take theirs, so the numbers are theirs exactly, after
    checking they are the same front end (a mismatch means the config is wrong for the file)."""
    log_mel = model.encoder.log_mel
    filterbank = filterbank.T  # torchaudio multiplies [frames, freqs] @ [freqs, mels]; ours is [mels, freqs]
    for name, theirs, ours in (("window", window, log_mel.window), ("mel filterbank", filterbank, log_mel.mel_fb)):
        if theirs.shape != ours.shape:
            raise CheckpointError(f"the checkpoint's log-mel {name} has shape {tuple(theirs.shape)}; this "
                                  f"encoder config computes {tuple(ours.shape)}")
        # Different libraries compute the same filterbank to float32 rounding (~1e-7).
        if not torch.allclose(theirs.float(), ours.float(), rtol=1e-4, atol=1e-6):
            raise CheckpointError(f"the checkpoint's log-mel {name} differs from the one the encoder config "
                                  f"describes (max difference {float((theirs - ours).abs().max()):.3g}): the "
                                  "front-end parameters do not match this file")
    with torch.no_grad():
        log_mel.window.copy_(window)
        log_mel.mel_fb.copy_(filterbank)


def load_official_tinymu(model: TinyMU, source: str | Path | dict) -> TinyMU:
    """Load the reference `tinymu.pt` (or its dict / state dict) into `model`, strictly:
    every key of the file is loaded or is a known duplicate checked equal to the tensor it
    duplicates, and every tensor of `model` is loaded (the front-end buffers included)."""
    state = _official_state(source if isinstance(source, dict) else _torch_load(source))
    if OFFICIAL_EMBED_KEY not in state:
        raise CheckpointError(f"no {OFFICIAL_EMBED_KEY}: this is not an official TinyMU checkpoint")
    _check_duplicate(state, OFFICIAL_EMBED_ALIAS_KEY, OFFICIAL_EMBED_KEY)
    if model.cfg.lm.tie_word_embeddings:
        _check_duplicate(state, OFFICIAL_LM_HEAD_KEY, OFFICIAL_EMBED_KEY)
    for key in (OFFICIAL_WINDOW_KEY, OFFICIAL_FILTERBANK_KEY):
        if key not in state:
            raise CheckpointError(f"no {key}: the log-mel front end of the official checkpoint is missing")
    ours = model.state_dict(keep_vars=True)
    rotary = next((m.inv_freq for m in model.lm.modules() if hasattr(m, "inv_freq")), None)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in (OFFICIAL_EMBED_ALIAS_KEY, OFFICIAL_WINDOW_KEY, OFFICIAL_FILTERBANK_KEY):
            continue  # checked above / loaded below
        if _ROTARY_KEY.search(key):
            if rotary is None or not torch.allclose(tensor.float(), rotary.float().cpu(), rtol=1e-5):
                raise CheckpointError(f"{key} does not match the rotary frequencies of rope_theta="
                                      f"{model.cfg.lm.rope_theta}")
            continue
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = tensor
                break
        else:
            raise CheckpointError(f"unexpected key {key!r}: this is not an official TinyMU checkpoint")
    if model.cfg.lm.tie_word_embeddings:
        mapped.setdefault("lm.lm_head.weight", mapped["lm.model.embed_tokens.weight"])
    unknown = sorted(set(mapped) - set(ours))
    if unknown:
        raise CheckpointError(f"unexpected key {_official_name(unknown[0])!r} (and {len(unknown) - 1} more): "
                              "this is not an official TinyMU checkpoint of this model's sizes")
    _strict_load(model, mapped, "official TinyMU checkpoint")
    _load_front_end(model, state[OFFICIAL_WINDOW_KEY], state[OFFICIAL_FILTERBANK_KEY])
    if model.cfg.lm.tie_word_embeddings:
        model.lm.tie_weights()
    return model


def _official_name(key: str) -> str:
    """Our state-dict key under the reference's name (for messages)."""
    if key.startswith(("encoder.blocks.", "encoder.norm.")):
        return "audio_encoder.enc.student_encoder." + key.removeprefix("encoder.")
    if key.startswith("encoder."):
        return "audio_encoder.enc." + key.removeprefix("encoder.")
    return "text_decoder.lm." + key.removeprefix("lm.") if key.startswith("lm.") else key


def download_official(spec: str, cache_dir: str | Path | None = None) -> Path:
    """`hf:OWNER/NAME[/FILE][@REVISION]` -> the local path of that file of a Hugging Face model
    repository (FILE defaults to tinymu.pt), downloaded through huggingface_hub into its cache
    (or `cache_dir`) or found there when the machine is offline (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    body = spec.removeprefix("hf:")
    body, _, revision = body.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise CheckpointError(f"{spec!r}: write hf:OWNER/NAME (e.g. hf:{OFFICIAL_HUB_REPO}), optionally /FILE "
                              "and @REVISION")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or OFFICIAL_HUB_FILE
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None,
                                    cache_dir=str(cache_dir) if cache_dir else None))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(f"{filename} of {repo_id} is not in the Hugging Face cache and cannot be downloaded "
                              f"(offline?). Download it once where the machine is online: {exc}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot get {filename} from the Hugging Face repository {repo_id}: {exc}") from exc



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
        if _MATPAC_HEAD.match(key):
            continue  # the AudioSet classifier on top of the encoder: TinyMU does not use it
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
