"""MATPAC++ audio encoder: log-mel front end + ViT-B/16 over (mel, frame) patches.

A clip becomes 80-bin log-mels at 100 frames/s, cut into 992-frame chunks (the
size the official checkpoint was fine-tuned on; only the last chunk is padded,
up to a multiple of 16 frames). Each chunk is patched into 5 frequency x T/16
time patches in frequency-major order, gets a fixed 2-D sin-cos position
embedding and a CLS token, and runs through pre-norm transformer blocks. The
output keeps the last layer after the final LayerNorm, drops the CLS token and
concatenates the 5 frequency tokens of each time step: one 3840-d token per
160 ms (6.25 Hz). 10 s of audio -> 63 tokens, 30 s -> 188.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.lm.config import EncoderConfig


class LogMel(nn.Module):
    """Waveform [B, samples] at 16 kHz -> normalised log-mel [B, n_mels, frames] (float32)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        mel_fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                                     fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney")
        # Not persistent: both are functions of the config. The official checkpoint's
        # copies are checked and loaded by model.lm.checkpoints.
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_fb.astype(np.float32)), persistent=False)
        self.log_offset = torch.finfo(torch.float32).eps

    def num_frames(self, num_samples: int) -> int:
        return max(0, 1 + (num_samples - self.cfg.n_fft) // self.cfg.hop_length)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        # Always float32, even inside a bfloat16 model: log-mels need the range.
        spec = torch.stft(wave, n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length, window=self.window.float(),
                          center=False, return_complex=True).abs().pow(2)
        mel = torch.matmul(self.mel_fb.float(), spec)
        return (torch.log(mel + self.log_offset) - self.cfg.lms_mean) / self.cfg.lms_std


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, n_mels, frames] -> [N, freq_patches * time_patches, D], frequency-major."""
        return self.proj(mel.unsqueeze(1)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (names follow the official checkpoint)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed_2d(dim: int, freq_patches: int, time_patches: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding, frequency-major, with a zero row for CLS: [1, 1 + F*T, dim].
    Half the channels encode the frequency row, half the time column."""

    def one_axis(positions: np.ndarray, width: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2))
        angles = np.outer(positions, omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    freq, time = np.meshgrid(np.arange(freq_patches), np.arange(time_patches), indexing="ij")
    table = np.concatenate([one_axis(freq.ravel(), dim // 2), one_axis(time.ravel(), dim // 2)], axis=1)
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


class MatpacEncoder(nn.Module):
    """Waveform [B, samples] (16 kHz) -> audio tokens [B, T, embed_dim * freq_patches]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.log_mel = LogMel(cfg)
        self.patch_embed = PatchEmbed(cfg)
        self.chunk_time_patches = cfg.chunk_frames // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Fixed, but a Parameter so that it sits in the state dict under the official name.
        self.pos_embed = nn.Parameter(
            sincos_pos_embed_2d(cfg.embed_dim, cfg.freq_patches, self.chunk_time_patches), requires_grad=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def num_tokens(self, num_samples: int) -> int:
        """Audio tokens for a clip of `num_samples` samples (precise chunking)."""
        frames = self.log_mel.num_frames(num_samples)
        return -(-frames // self.cfg.patch_size)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.log_mel(wave).to(self.cls_token.dtype)
        return self.encode_mel(mel)

    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, n_mels, frames] -> tokens [B, ceil(frames/16), output_dim]."""
        batch, _, frames = mel.shape
        if frames == 0:
            raise ValueError("audio is shorter than one analysis window (25 ms)")
        mel = F.pad(mel, (0, -frames % self.cfg.patch_size))  # zero = the mean after normalisation
        chunk = self.cfg.chunk_frames
        n_full = mel.shape[-1] // chunk
        parts = []
        if n_full:
            # Full chunks are independent: run them as one batch.
            full = mel[..., : n_full * chunk].reshape(batch, -1, n_full, chunk).permute(0, 2, 1, 3)
            tokens = self._encode_chunks(full.reshape(batch * n_full, -1, chunk))
            parts.append(tokens.reshape(batch, n_full * tokens.shape[1], -1))
        if mel.shape[-1] > n_full * chunk:
            parts.append(self._encode_chunks(mel[..., n_full * chunk:]))
        return torch.cat(parts, dim=1)

    def _encode_chunks(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, n_mels, frames <= chunk_frames] -> [N, frames/16, output_dim]."""
        x = self.patch_embed(mel)
        f, d = self.cfg.freq_patches, self.cfg.embed_dim
        t = x.shape[1] // f
        pos = self.pos_embed[:, 1:].reshape(1, f, self.chunk_time_patches, d)[:, :, :t].reshape(1, f * t, d)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x + pos], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, 1:]
        return x.reshape(-1, f, t, d).permute(0, 2, 1, 3).reshape(-1, t, f * d)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# Audio encoders by `EncoderConfig.kind`. An encoder maps 16 kHz waveforms [B, samples] to
# tokens [B, T, cfg.output_dim]; adding one is a class here and a line in this table.
ENCODERS: dict[str, type[nn.Module]] = {"matpac": MatpacEncoder}


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The audio encoder `cfg.kind` names."""
    try:
        return ENCODERS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"unknown audio encoder {cfg.kind!r}; known: {', '.join(ENCODERS)}") from None
