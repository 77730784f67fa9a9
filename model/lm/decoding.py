"""Generation and option scoring over a TinyMU prefix, with a KV cache.

Everything here takes a `Batch` prefix built by `TinyMU.build_prefix` (audio,
separator and real prompt tokens at their reference position ids) and the
position id where the target starts. Generated tokens continue from there,
exactly as in the reference layout. The `*_reference` functions are the slow
approach the benchmark compares against: the fully padded layout recomputed for
every generated token, and one full forward per option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor

from model import cancel
from model.lm.config import EOS_ID, PAD_ID
from model.lm.network import Batch, TinyMU

# The reference targets end with token 0; the Instruct SmolLM2 ends turns with <|im_end|> (2).
STOP_IDS = (EOS_ID, 2)


def _run(model: TinyMU, embeds, mask, positions, cache=None):
    out = model.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=cache is not None)
    return out.last_hidden_state, out.past_key_values


def _next_token(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set of tokens whose probability reaches top_p (always at least one).
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator).squeeze(-1)
    return order.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


def _trim(tokens: list[int], stop_ids: tuple[int, ...] = STOP_IDS) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[:i]
    return tokens


@torch.inference_mode()
def generate(model: TinyMU, prefix: Batch, target_start: torch.Tensor, *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 0.9, seed: int | None = None,
             stop_ids: tuple[int, ...] = STOP_IDS,
             constraints: list[list[LogitsProcessor]] | None = None) -> list[list[int]]:
    """Greedy (temperature 0) or nucleus sampling, batched, with a KV cache. Returns the
    new token ids of every row, without the stop token. `stop_ids=()` never stops early
    (benchmarks). `constraints[i]`: logits processors for row i, given what it has written
    (model.lm.grounding.constraints)."""
    generator = None
    if temperature > 0 and seed is not None:
        generator = torch.Generator(device=prefix.inputs_embeds.device).manual_seed(seed)
    batch = prefix.inputs_embeds.shape[0]
    rows = torch.arange(batch, device=prefix.inputs_embeds.device)
    mask = prefix.attention_mask
    hidden, cache = _run(model, prefix.inputs_embeds, mask, prefix.position_ids, DynamicCache())
    logits = model.lm.lm_head(hidden[rows, prefix.query_index])
    out = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=mask.device)
    for step in range(max_new_tokens):
        # A call that timed out stops here, between two tokens, and frees its compute slot (model.cancel).
        cancel.check("the next token")
        for i, processors in enumerate(constraints or []):
            if processors:
                written = torch.tensor([out[i]], dtype=torch.long, device=logits.device)
                for processor in processors:
                    logits[i : i + 1] = processor(written, logits[i : i + 1])
        token = _next_token(logits, temperature, top_p, generator)
        for i in range(batch):
            if not done[i]:
                out[i].append(int(token[i]))
        done |= torch.isin(token, torch.tensor(stop_ids, dtype=token.dtype, device=token.device))
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        embeds = model.token_embeddings(token.unsqueeze(1)).to(prefix.inputs_embeds.dtype)
        positions = (target_start + step).unsqueeze(1)
        hidden, cache = _run(model, embeds, mask, positions, cache)
        logits = model.lm.lm_head(hidden[:, -1])
    return [_trim(tokens, stop_ids) for tokens in out]


@torch.inference_mode()
def score_options(model: TinyMU, prefix: Batch, target_start: int, options: list[list[int]]) -> torch.Tensor:
    """Log-likelihood of each option as the target (its tokens + the eos token 0) after a
    one-row prefix. The prefix runs once; its KV cache is repeated for every option and
    all options run as one batch. Returns [K, 2]: summed log-prob and token count."""
    device = prefix.inputs_embeds.device
    k = len(options)
    hidden, cache = _run(model, prefix.inputs_embeds, prefix.attention_mask, prefix.position_ids, DynamicCache())
    first_logits = model.lm.lm_head(hidden[:, -1]).float().log_softmax(-1)  # predicts option token 0
    cache.batch_repeat_interleave(k)
    targets = [opt + [EOS_ID] for opt in options]
    length = max(len(t) for t in targets)
    ids = torch.full((k, length), PAD_ID, dtype=torch.long, device=device)
    opt_mask = torch.zeros(k, length, dtype=torch.long, device=device)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t, device=device)
        opt_mask[i, : len(t)] = 1
    scores = first_logits[0, ids[:, 0]]
    if length > 1:
        cancel.check("scoring the options")
        # Feed all but the last target token; position j predicts token j + 1.
        mask = torch.cat([prefix.attention_mask.expand(k, -1), opt_mask[:, :-1]], dim=1)
        positions = (target_start + torch.arange(length - 1, device=device)).expand(k, -1)
        embeds = model.token_embeddings(ids[:, :-1]).to(prefix.inputs_embeds.dtype)
        hidden, _ = _run(model, embeds, mask, positions, cache)
        logp = model.lm.lm_head(hidden).float().log_softmax(-1)
        token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * opt_mask[:, 1:]
        scores = scores + token_logp.sum(dim=1)
    return torch.stack([scores, opt_mask.sum(dim=1).float()], dim=1)


# -- the slow reference approach, for the benchmark and the equivalence tests ---------------


def padded_prompt(model: TinyMU, prompt: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    length = model.cfg.prompt_length
    prompt = prompt[:length]
    ids = torch.full((1, length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(1, length, dtype=torch.long)
    ids[0, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    mask[0, : len(prompt)] = 1
    return ids, mask


@torch.inference_mode()
def generate_reference(model: TinyMU, audio_embeds: torch.Tensor, prompt: list[int], *,
                       max_new_tokens: int = 64, stop_ids: tuple[int, ...] = STOP_IDS) -> list[int]:
    """Greedy decoding the reference way: the whole padded sequence (audio, separator, prompt
    padded to 129, tokens so far) recomputed for every new token, no KV cache."""
    device = audio_embeds.device
    ids, mask = padded_prompt(model, prompt)
    ids, mask = ids.to(device), mask.to(device)
    sep = torch.tensor([[EOS_ID]], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        text = torch.cat([sep, ids, torch.tensor([out], dtype=torch.long, device=device).view(1, -1)], dim=1)
        embeds = torch.cat([audio_embeds, model.token_embeddings(text).to(audio_embeds.dtype)], dim=1)
        full_mask = torch.cat([torch.ones(1, audio_embeds.shape[1] + 1, dtype=torch.long, device=device), mask,
                               torch.ones(1, len(out), dtype=torch.long, device=device)], dim=1)
        positions = torch.arange(full_mask.shape[1], device=device).unsqueeze(0)
        hidden, _ = _run(model, embeds, full_mask, positions)
        token = int(model.lm.lm_head(hidden[:, -1]).argmax(-1))
        out.append(token)
        if token in stop_ids:
            break
    return _trim(out, stop_ids)


@torch.inference_mode()
def score_options_reference(model: TinyMU, wave: torch.Tensor, prompt: list[int],
                            options: list[list[int]]) -> torch.Tensor:
    """One full forward per option, encoder included, over the fully padded training layout
    (prompt and target each padded to 129): the only scoring path the reference code has."""
    ids, mask = padded_prompt(model, prompt)
    rows = []
    for option in options:
        target = (option + [EOS_ID])[: model.cfg.target_length]
        t_ids = torch.full((1, model.cfg.target_length), PAD_ID, dtype=torch.long)
        t_mask = torch.zeros_like(t_ids)
        t_ids[0, : len(target)] = torch.tensor(target)
        t_mask[0, : len(target)] = 1
        audio = model.audio_embeddings(model.encode_audio(wave))
        batch = model.build_training_batch(audio, ids, mask, t_ids, t_mask)
        logits = model.lm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids).logits
        logp = logits[:, :-1].float().log_softmax(-1)
        labels = batch.labels[:, 1:]
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels >= 0)
        rows.append(torch.tensor([picked.sum().item(), float(len(target))]))
    return torch.stack(rows)
