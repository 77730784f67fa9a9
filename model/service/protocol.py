"""The wire format the model service and its client share: request and response bodies, audio encoding."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from model.errors import InputError

DEFAULT_PORT = 8765
DEFAULT_MAX_AUDIO_BYTES = 16 * 1024 * 1024  # float32 samples: about 4 minutes at 16 kHz


class AudioRequest(BaseModel):
    audio_b64: str = Field(description="base64 of little-endian float32 mono samples at 16 kHz")


class AnswerRequest(AudioRequest):
    question: str
    max_new_tokens: int = Field(64, ge=1, le=512)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)


class CaptionRequest(AudioRequest):
    max_new_tokens: int = Field(96, ge=1, le=512)


class ChooseRequest(AudioRequest):
    question: str
    options: list[str] = Field(min_length=2, max_length=8)
    method: Literal["loglik", "generate"] = "loglik"


class TextResponse(BaseModel):
    text: str
    trained: bool


class EmbedResponse(BaseModel):
    embedding: list[float]


def encode_audio(audio: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(audio, dtype="<f4").tobytes()).decode("ascii")


def decode_audio(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("audio_b64 is not valid base64") from exc
    if len(raw) % 4:
        raise InputError("audio_b64 must hold float32 samples (a multiple of 4 bytes)")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
