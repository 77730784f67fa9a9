"""TinyMU: MATPAC++ encoder -> MLP projector -> SmolLM2, with the reference sequence layout.

Training sequence, exactly as the reference model builds it (no chat template):

    [audio tokens (63 for 10 s)] [embedding of token 0] [prompt, padded to 129 with
    token 17, mask 0] [target + eos 0, padded to 129 with token 17, mask 0]

with plain position ids 0..L-1 (so the padding sits in the middle) and the loss
only on real target tokens. At inference the padded prompt positions are
skipped instead of computed, except the last one, whose output predicts the
first target token: masked positions are never attended to, and every kept
token has the position id it has in the padded layout, so the result equals
running the padded sequence (tests check it), with a 129-token-shorter prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from model.lm.config import EOS_ID, PAD_ID, TinyMUConfig
from model.lm.encoder import build_encoder
from model.lm.prompts import NOTHING_HEARD, HeardGenre


class Projector(nn.Module):
    """Audio token (3840-d) -> LM embedding (576-d): Linear -> ReLU -> Linear.

    With `context_classes` (our addition, off in the reference model) the hidden layer also
    receives clip-level posteriors: linear classifiers over the clip's mean token (through a
    `context_width` bottleneck), one softmax per group of classes, whose probabilities feed
    every token. Why: what defines a clip is often clip-level. A key is near-linear in the
    mean token (a linear probe names 85 % of held-out keys, and through them 87 % of
    major/minor) while major/minor itself is not (57 %), and one 0.16 s token carries neither
    well; likewise one token hears the lead instrument less surely than the whole clip does."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, context_classes: tuple[int, ...] = (),
                 context_width: int = 64):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, hidden)
        self.linear2 = nn.Linear(hidden, out_dim)
        self.context_classes = tuple(context_classes)
        if self.context_classes:
            self.context_in = nn.Linear(in_dim, context_width)
            self.context_head = nn.Linear(context_width, sum(self.context_classes))
            self.context_out = nn.Linear(sum(self.context_classes), hidden, bias=False)

    def context_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, T, in_dim] -> one [B, classes] logit tensor per context group, from the clip's
        mean token (none without a context)."""
        if not self.context_classes:
            return []
        return list(self.context_head(self.context_in(x.mean(dim=1))).split(self.context_classes, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, in_dim], whole clips (for the clip context)."""
        hidden = self.linear1(x)
        if self.context_classes:
            posterior = torch.cat([logits.softmax(-1) for logits in self.context_logits(x)], dim=-1)
            hidden = hidden + self.context_out(posterior).unsqueeze(1)
        return self.linear2(F.relu(hidden))


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update B @ A. Used by re-classing an existing Linear, so
    the base weight keeps its original state-dict name (`q_proj.weight`) next to
    `q_proj.lora_A` / `q_proj.lora_B`."""

    lora_scale: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.lora_scale


def add_lora(lm: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> None:
    for name, module in lm.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            module.__class__ = LoRALinear
            module.lora_scale = alpha / rank
            module.lora_A = nn.Parameter(torch.randn(rank, module.in_features) / rank)
            module.lora_B = nn.Parameter(torch.zeros(module.out_features, rank))  # starts as a no-op


def lm_config(cfg: TinyMUConfig) -> LlamaConfig:
    lm = cfg.lm
    return LlamaConfig(
        vocab_size=lm.vocab_size, hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
        num_hidden_layers=lm.num_hidden_layers, num_attention_heads=lm.num_attention_heads,
        num_key_value_heads=lm.num_key_value_heads, rope_theta=lm.rope_theta,
        max_position_embeddings=lm.max_position_embeddings, rms_norm_eps=lm.rms_norm_eps,
        tie_word_embeddings=lm.tie_word_embeddings, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID, hidden_act="silu",
    )


@dataclass
class Batch:
    """What the LM consumes for one padded batch."""

    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L] 1 = real token
    position_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor | None = None  # [B, L], -100 where no loss
    query_index: torch.Tensor | None = None  # [B] column whose output predicts the first target token


class TinyMU(nn.Module):
    def __init__(self, cfg: TinyMUConfig, lm: LlamaForCausalLM | None = None):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            if cfg.init_seed is not None:
                torch.manual_seed(cfg.init_seed)
            self.encoder = build_encoder(cfg.encoder)
            self.projector = Projector(cfg.encoder.output_dim, cfg.projector_hidden, cfg.lm.hidden_size,
                                       cfg.projector_context_classes, cfg.projector_context_width)
        self.lm = lm if lm is not None else LlamaForCausalLM(lm_config(cfg))
        if cfg.lora_rank:
            add_lora(self.lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)

    # -- audio ---------------------------------------------------------------------
    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] at 16 kHz -> encoder tokens [B, T, 3840]. The encoder is
        frozen in the reference recipe, so callers may cache this on disk."""
        return self.encoder(wave)

    def audio_embeddings(self, audio_tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens [B, T, 3840] -> LM input embeddings [B, T, 576]."""
        table = self.lm.get_input_embeddings().weight
        projected = self.projector(audio_tokens.to(table.dtype))
        if not self.cfg.audio_vocabulary:
            return projected
        # Word read-out (cfg.audio_vocabulary): a soft choice among real word embeddings, so a
        # decoder fine-tuned on few examples reads inputs it already understands.
        words = table[torch.tensor(self.cfg.audio_vocabulary, device=table.device)]
        similarity = F.normalize(projected, dim=-1) @ F.normalize(words, dim=-1).T
        return torch.softmax(similarity / self.cfg.audio_vocabulary_temperature, dim=-1) @ words

    def heard_genre(self, audio_tokens: torch.Tensor) -> list[HeardGenre]:
        """Encoder tokens [B, T, 3840] -> the genre word the clip context's classifier gives the most
        probability (cfg.heard_genre_words) and that probability, per clip; NOTHING_HEARD where it names no
        genre ("none") or the checkpoint has no genre hint. Callers decide how sure is sure enough."""
        words = self.cfg.heard_genre_words
        if not words:
            return [NOTHING_HEARD] * audio_tokens.shape[0]
        logits = self.projector.context_logits(audio_tokens.to(self.projector.linear1.weight.dtype))
        probs = logits[self.cfg.heard_genre_group].float().softmax(-1)
        best, index = probs.max(-1)
        return [HeardGenre(words[i], p) if words[i] != "none" else NOTHING_HEARD
                for p, i in zip(best.tolist(), index.tolist())]

    def pooled_embedding(self, wave: torch.Tensor) -> torch.Tensor:
        """Mean of the encoder tokens over time: one vector per clip for similarity search."""
        return self.encode_audio(wave).mean(dim=1)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    # -- training ------------------------------------------------------------------
    def build_training_batch(self, audio_embeds: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                             target_ids: torch.Tensor, target_mask: torch.Tensor) -> Batch:
        """The reference layout with every padded position present (see module docstring)."""
        b, n_audio, _ = audio_embeds.shape
        device = audio_embeds.device
        sep = torch.full((b, 1), EOS_ID, dtype=torch.long, device=device)
        text = torch.cat([sep, prompt_ids, target_ids], dim=1)
        embeds = torch.cat([audio_embeds, self.token_embeddings(text).to(audio_embeds.dtype)], dim=1)
        ones = torch.ones(b, n_audio + 1, dtype=torch.long, device=device)
        mask = torch.cat([ones, prompt_mask.long(), target_mask.long()], dim=1)
        labels = torch.full_like(mask, -100)
        labels[:, -target_ids.shape[1]:] = target_ids.masked_fill(target_mask == 0, -100)
        positions = torch.arange(mask.shape[1], device=device).expand(b, -1)
        return Batch(embeds, mask, positions, labels)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target_ids: torch.Tensor,
                target_mask: torch.Tensor, *, wave: torch.Tensor | None = None,
                audio_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token loss over the real target tokens. Give either `wave` [B, samples]
        or precomputed encoder `audio_tokens` [B, T, 3840]."""
        if audio_tokens is None:
            if wave is None:
                raise ValueError("give wave or audio_tokens")
            audio_tokens = self.encode_audio(wave)
        batch = self.build_training_batch(self.audio_embeddings(audio_tokens), prompt_ids, prompt_mask,
                                          target_ids, target_mask)
        logits = self.lm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids).logits
        # Position i predicts token i + 1.
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                               ignore_index=-100)

    # -- inference -----------------------------------------------------------------
    def target_start(self, n_audio: int) -> int:
        """Position id of the first target token in the reference layout."""
        return n_audio + 1 + self.cfg.prompt_length

    def build_prefix(self, audio_embeds: list[torch.Tensor], prompts: list[list[int]]) -> Batch:
        """Inference prefix per sample, right-padded to a common length:
        [audio][sep][real prompt tokens][one pad token], each at its reference position id.

        The trailing pad matters: in the reference layout the first target token is
        predicted by the hidden state of the *last prompt pad* (input "!", position
        target_start - 1, masked as a key but still a query). The pads before it are
        masked for everyone and their outputs unused, so they are skipped."""
        device, dtype = audio_embeds[0].device, audio_embeds[0].dtype
        rows, positions, masks = [], [], []
        for audio, prompt in zip(audio_embeds, prompts):
            prompt = prompt[: self.cfg.prompt_length]
            padded = len(prompt) < self.cfg.prompt_length
            ids = torch.tensor([EOS_ID, *prompt] + [PAD_ID] * padded, dtype=torch.long, device=device)
            rows.append(torch.cat([audio, self.token_embeddings(ids).to(dtype)], dim=0))
            n_real = audio.shape[0] + 1 + len(prompt)
            pos = torch.arange(rows[-1].shape[0], device=device)
            if padded:
                pos[-1] = self.target_start(audio.shape[0]) - 1
            positions.append(pos)
            masks.append(torch.arange(rows[-1].shape[0], device=device) < n_real)
        length = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), length, rows[0].shape[-1], dtype=dtype, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        pos = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for i, (row, p, m) in enumerate(zip(rows, positions, masks)):
            embeds[i, : len(row)] = row
            mask[i, : len(row)] = m.long()
            pos[i, : len(row)] = p
        query = torch.tensor([len(r) - 1 for r in rows], device=device)
        return Batch(embeds, mask, pos, query_index=query)


def tokenize_example(tokenizer, prompt: str, target: str, prompt_length: int = 129,
                     target_length: int = 129) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training example in the reference format: prompt ids padded to `prompt_length` with
    token 17 (mask 0), target ids + eos 0 padded to `target_length`. Both are truncated
    when longer. Returns 1-D (prompt_ids, prompt_mask, target_ids, target_mask)."""

    def padded(ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids[:length]
        out = torch.full((length,), PAD_ID, dtype=torch.long)
        mask = torch.zeros(length, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[: len(ids)] = 1
        return out, mask

    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    target_ids = tokenizer(target, add_special_tokens=False).input_ids[: target_length - 1] + [EOS_ID]
    return (*padded(prompt_ids, prompt_length), *padded(target_ids, target_length))


def build_model(cfg: TinyMUConfig, quantize: str | None = None) -> TinyMU:
    """A TinyMU with the decoder weights named by `cfg.lm_weights` and a randomly
    initialised encoder and projector (load a checkpoint on top for trained weights).

    `quantize="int8"` (CPU inference): the decoder's Linear layers become int8 weights
    (model.lm.quantize; LoRA layers stay float). Decoder weights in a local safetensors folder
    are quantised while they load, so the float32 decoder never exists whole: this is what
    keeps the int8 engine's peak memory ~0.5 GB below the float32 one's."""
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantize={quantize!r}; use 'int8' or None")
    from model.lm.quantize import can_stream, load_int8_decoder, quantize_int8

    if cfg.lm_weights == "random":
        lm = None
    else:
        from model.lm import smollm2

        source = smollm2.resolve(cfg.lm_weights)
        if quantize and can_stream(source):
            lm = load_int8_decoder(source, keep_float=cfg.lora_targets if cfg.lora_rank else ())
        else:
            lm = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
        got = lm.config
        if (got.hidden_size, got.num_hidden_layers, got.vocab_size) != (cfg.lm.hidden_size, cfg.lm.num_hidden_layers,
                                                                         cfg.lm.vocab_size):
            raise ValueError(f"decoder weights {cfg.lm_weights!r} do not match the configured LM sizes")
    model = TinyMU(cfg, lm)
    if quantize:
        quantize_int8(model.lm)  # what is still float: a random or downloaded decoder
    return model
