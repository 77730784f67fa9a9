"""Frozen-encoder outputs, computed once and cached on disk.

The reference recipe freezes the audio encoder, so each clip's encoder tokens
never change during training. Computing them once turns every later training
step into projector + LM work only (on CPU the encoder would otherwise be
re-run for every sample in every epoch).

The cache is one safetensors file: one tensor per clip (float16, [T, D]) named
by the record's `file_name`, plus the encoder's fingerprint in the metadata,
so a retrained encoder never reads stale features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.audio import MODEL_RATE, load_audio
from model.errors import InputError


def resolve_audio(data_dir: str | Path, file_name: str) -> Path:
    """Where a record's audio lives: absolute, relative to the data directory, or under
    its `clips/` or `audio/` folder (the layouts our data builders and MusicSkills use)."""
    data_dir = Path(data_dir)
    for candidate in (Path(file_name), data_dir / file_name, data_dir / "clips" / file_name,
                      data_dir / "audio" / file_name):
        if candidate.is_file():
            return candidate
    raise InputError(f"audio {file_name!r} of a record was not found under {data_dir}; "
                     "rebuild the data set or fix the record's file_name")


def load_clip(path: str | Path, seconds: float) -> np.ndarray:
    """The first `seconds` of a clip as 16 kHz mono float32 (what the model hears)."""
    return load_audio(path, duration_s=seconds).resampled(MODEL_RATE).samples.astype(np.float32)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A short hash of the encoder's weights: features are valid only for these exact weights."""
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _pad_to_common_length(waves: list[np.ndarray]) -> torch.Tensor:
    """Zero-pad the few clips shorter than the rest, so the batch stacks."""
    length = max(len(w) for w in waves)
    return torch.from_numpy(np.stack([np.pad(w, (0, length - len(w))) for w in waves]))


@torch.inference_mode()
def encode_clips(encoder: torch.nn.Module, data_dir: str | Path, file_names: Iterable[str], cache_file: str | Path,
                 *, seconds: float = 10.0, batch_size: int = 8, show_progress: bool = True) -> dict[str, torch.Tensor]:
    """Encoder tokens for every clip, from `cache_file` when it holds them for this encoder,
    else computed (and the cache rewritten). Returns {file_name: float16 [T, D]}."""
    cache_file = Path(cache_file)
    fingerprint = encoder_fingerprint(encoder)
    wanted = sorted(set(file_names))
    features = read_features(cache_file, fingerprint, seconds)
    missing = [name for name in wanted if name not in features]
    if missing:
        encoder.eval()
        bar = tqdm(total=len(missing), desc="encoding clips", unit="clip", disable=not show_progress)
        for start in range(0, len(missing), batch_size):
            names = missing[start: start + batch_size]
            # Clips of different lengths are encoded one by one so padding never changes a token.
            waves = [load_clip(resolve_audio(data_dir, n), seconds) for n in names]
            if len({len(w) for w in waves}) == 1:
                tokens = encoder(_pad_to_common_length(waves))
                for name, t in zip(names, tokens):
                    features[name] = t.to(torch.float16).clone()
            else:
                for name, wave in zip(names, waves):
                    features[name] = encoder(torch.from_numpy(wave)[None])[0].to(torch.float16).clone()
            bar.update(len(names))
        bar.close()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in features.items()}, str(cache_file),
                  metadata={"encoder": fingerprint, "seconds": str(seconds)})
    return {name: features[name] for name in wanted}


def read_features(cache_file: Path, fingerprint: str, seconds: float) -> dict[str, torch.Tensor]:
    """Cached features if `cache_file` was written for this encoder and clip length, else {}."""
    if not cache_file.is_file():
        return {}
    with safe_open(str(cache_file), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("encoder") != fingerprint or meta.get("seconds") != str(seconds):
            return {}
        return {key: handle.get_tensor(key) for key in handle.keys()}
