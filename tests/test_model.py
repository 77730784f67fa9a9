"""TinyMU network, weights and inference engine, on tiny random configs (fast) plus one
end-to-end run of the real SmolLM2 weights from the offline GGUF (marked slow)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from model.errors import AudioTooShortError, InputError, InvalidSamplesError
from model.lm import checkpoints, decoding, grounding
from model.lm.config import EOS_ID, PAD_ID, TinyMUConfig, preset
from model.lm.engine import load_engine
from model.lm.muchomusic import (
    IN_CONTEXT_EXAMPLE,
    build_prompt,
    score_answer,
    summarize,
)
from model.lm.network import TinyMU, build_model

SR = 16000


def tone_clip(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.shape) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def lively(model: TinyMU, seed: int = 0) -> TinyMU:
    """Random weights with enough spread that greedy decoding does not collapse to one token."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("lm."):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 1.0))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> TinyMU:
    torch.manual_seed(0)
    return lively(build_model(preset("tiny")))


# -- encoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, tokens", [(10, 63), (30, 188), (1, 7)])
def test_encoder_token_counts(tiny, seconds, tokens):
    with torch.inference_mode():
        out = tiny.encode_audio(torch.from_numpy(tone_clip(seconds)).unsqueeze(0))
    assert out.shape == (1, tokens, tiny.cfg.encoder.output_dim)
    assert tiny.encoder.num_tokens(seconds * SR) == tokens
    assert torch.isfinite(out).all()


def test_official_sizes_on_meta_device():
    cfg = preset("official")
    with torch.device("meta"):
        model = TinyMU(cfg)
    assert cfg.encoder.output_dim == 3840
    assert model.encoder.pos_embed.shape == (1, 311, 768)
    assert model.projector.linear1.weight.shape == (2048, 3840)
    assert model.projector.linear2.weight.shape == (576, 2048)
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in ("encoder", "projector", "lm")}
    # DESIGN.md: 229,054,592 = encoder 85.49 M + projector 9.05 M + SmolLM2-135M 134.52 M.
    assert round(counts["encoder"] / 1e6, 2) == 85.49
    assert round(counts["projector"] / 1e6, 2) == 9.05
    assert round(counts["lm"] / 1e6, 2) == 134.52
    assert sum(counts.values()) == 229_054_592


def test_log_mel_matches_librosa(tiny):
    clip = tone_clip(2.0, freq=330.0)
    ours = tiny.encoder.log_mel(torch.from_numpy(clip).unsqueeze(0))[0].numpy()
    power = librosa.feature.melspectrogram(y=clip, sr=SR, n_fft=400, hop_length=160, center=False, power=2.0,
                                           n_mels=80, fmin=50, fmax=8000, htk=False, norm="slaney")
    expected = (np.log(power + np.finfo(np.float32).eps) + 7.056) / 4.193
    assert ours.shape == expected.shape == (80, 1 + (len(clip) - 400) // 160)
    np.testing.assert_allclose(ours, expected, atol=2e-3)


def test_chunks_are_encoded_independently(tiny):
    """Precise chunking: the first 62 tokens of a long clip are those of its first 992 frames alone."""
    clip = torch.from_numpy(tone_clip(20.0, freq=220.0, seed=3)).unsqueeze(0)
    with torch.inference_mode():
        mel = tiny.encoder.log_mel(clip)
        whole = tiny.encoder.encode_mel(mel)
        first = tiny.encoder.encode_mel(mel[..., :992])
        second = tiny.encoder.encode_mel(mel[..., 992:1984])
    torch.testing.assert_close(whole[:, :62], first)
    torch.testing.assert_close(whole[:, 62:124], second)


# -- sequence layout and loss --------------------------------------------------------------


def _padded(ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.full((1, length), PAD_ID)
    m = torch.zeros(1, length, dtype=torch.long)
    t[0, : len(ids)] = torch.tensor(ids)
    m[0, : len(ids)] = 1
    return t, m


def test_training_layout_and_loss_masking(tiny):
    audio = torch.randn(1, 63, tiny.cfg.encoder.output_dim)
    prompt, pmask = _padded([5, 6, 7], 129)
    target, tmask = _padded([40, 41, EOS_ID], 129)
    batch = tiny.build_training_batch(tiny.audio_embeddings(audio), prompt, pmask, target, tmask)
    assert batch.inputs_embeds.shape[:2] == (1, 63 + 1 + 129 + 129)
    assert batch.position_ids[0].tolist() == list(range(322))
    mask = batch.attention_mask[0]
    assert mask[:64].all() and mask[64:67].all() and not mask[67:193].any()
    assert mask[193:196].all() and not mask[196:].any()
    labelled = (batch.labels[0] != -100).nonzero().flatten().tolist()
    assert labelled == [193, 194, 195]
    assert batch.labels[0, 193:196].tolist() == [40, 41, EOS_ID]

    with torch.no_grad():
        loss = tiny(prompt, pmask, target, tmask, audio_tokens=audio)
        logits = tiny.lm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids).logits[0]
        manual = torch.nn.functional.cross_entropy(logits[192:195], torch.tensor([40, 41, EOS_ID]))
        # Padding after the target and a masked prompt pad (not the last) do not touch the loss.
        target2 = target.clone()
        target2[0, 10] = 999
        prompt2 = prompt.clone()
        prompt2[0, 50] = 999
        loss2 = tiny(prompt2, pmask, target2, tmask, audio_tokens=audio)
        # The target itself does.
        target3 = target.clone()
        target3[0, 1] = 42
        loss3 = tiny(prompt, pmask, target3, tmask, audio_tokens=audio)
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(loss, loss2)
    assert not torch.isclose(loss, loss3)


def test_loss_backpropagates_from_waveform():
    torch.manual_seed(1)
    model = build_model(preset("tiny")).train()
    prompt, pmask = _padded([5, 6], 129)
    target, tmask = _padded([7, EOS_ID], 129)
    loss = model(prompt, pmask, target, tmask, wave=torch.from_numpy(tone_clip(3.0)).unsqueeze(0))
    loss.backward()
    assert model.projector.linear1.weight.grad.abs().sum() > 0
    assert loss.item() > 0


# -- inference: KV cache and prefix trick vs the reference -----------------------------------


def _embeds(model: TinyMU, seconds: float, seed: int) -> torch.Tensor:
    with torch.inference_mode():
        wave = torch.from_numpy(tone_clip(seconds, 200 + 50 * seed, seed)).unsqueeze(0)
        return model.audio_embeddings(model.encode_audio(wave))


def test_greedy_with_kv_cache_equals_reference(tiny):
    embeds = _embeds(tiny, 10.0, 0)
    prompt = [100, 200, 300, 400, 500]
    prefix = tiny.build_prefix([embeds[0]], [prompt])
    start = torch.tensor([tiny.target_start(embeds.shape[1])])
    ours = decoding.generate(tiny, prefix, start, max_new_tokens=10, stop_ids=())[0]
    reference = decoding.generate_reference(tiny, embeds, prompt, max_new_tokens=10, stop_ids=())
    assert ours == reference
    assert len(set(ours)) > 1  # a real sequence, not one repeated token


def test_batched_generation_equals_single(tiny):
    items = [(_embeds(tiny, 10.0, 0), [100, 200, 300]), (_embeds(tiny, 4.0, 1), [7, 8])]
    prefix = tiny.build_prefix([e[0] for e, _ in items], [p for _, p in items])
    start = torch.tensor([tiny.target_start(e.shape[1]) for e, _ in items])
    batched = decoding.generate(tiny, prefix, start, max_new_tokens=8, stop_ids=())
    singles = [decoding.generate_reference(tiny, e, p, max_new_tokens=8, stop_ids=()) for e, p in items]
    assert batched == singles


def test_option_scores_equal_reference_forward(tiny):
    wave = torch.from_numpy(tone_clip(10.0, 300.0)).unsqueeze(0)
    with torch.inference_mode():
        embeds = tiny.audio_embeddings(tiny.encode_audio(wave))
    prompt = [11, 12, 13, 14]
    options = [[1000, 1001], [2000], [3000, 3001, 3002], [4000, 10]]
    prefix = tiny.build_prefix([embeds[0]], [prompt])
    ours = decoding.score_options(tiny, prefix, tiny.target_start(embeds.shape[1]), options)
    reference = decoding.score_options_reference(tiny, wave, prompt, options)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    assert ours[:, 1].tolist() == [3.0, 2.0, 4.0, 3.0]


def test_top_p_sampling_is_seeded(tiny):
    embeds = _embeds(tiny, 5.0, 2)
    prefix = tiny.build_prefix([embeds[0]], [[1, 2, 3]])
    start = torch.tensor([tiny.target_start(embeds.shape[1])])
    runs = [decoding.generate(tiny, prefix, start, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=s,
                              stop_ids=())[0] for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


# -- engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    eng = load_engine("preset:tiny", device="cpu")
    lively(eng.model, seed=5)
    return eng


def test_engine_answers_and_reports_untrained(engine):
    clip = tone_clip(10.0)
    text = engine.answer(clip, "What instrument plays?", max_new_tokens=6)
    assert isinstance(text, str) and text
    assert engine.answer_batch([(clip, "What instrument plays?"), (tone_clip(3.0, 220.0), "Tempo?")],
                               max_new_tokens=6)[0] == text
    info = engine.info()
    assert info.trained is False and "untrained" in info.note
    assert info.audio_tokens_per_second == 6.25 and info.max_audio_s == 30.0
    assert info.parameters == sum(p.numel() for p in engine.model.parameters())


def test_choose_loglik_probabilities(engine):
    clip = tone_clip(10.0, 500.0)
    options = ["piano", "electric guitar", "violin section", "drums"]
    choice = engine.choose(clip, "Which instrument leads?", options)
    assert choice.method == "loglik"
    assert len(choice.probabilities) == 4
    assert sum(choice.probabilities) == pytest.approx(1.0, abs=1e-9)
    assert choice.index == int(np.argmax(choice.probabilities))
    assert choice.option == options[choice.index] and choice.letter == "ABCD"[choice.index]
    # The probabilities are the softmax of the per-token mean log-likelihoods of the reference forward.
    model, tok = engine.model, engine.tokenizer
    prompt = tok(build_prompt("Which instrument leads?", options), add_special_tokens=False).input_ids
    opts = [tok(o, add_special_tokens=False).input_ids for o in options]
    ref = decoding.score_options_reference(model, torch.from_numpy(clip).unsqueeze(0), prompt, opts)
    expected = torch.softmax((ref[:, 0] / ref[:, 1]).double(), 0).tolist()
    assert choice.probabilities == pytest.approx(expected, abs=1e-4)


def test_choose_generate_uses_official_scorer(engine):
    choice = engine.choose(tone_clip(5.0), "Which instrument leads?", ["piano", "guitar", "violin", "drums"],
                           method="generate")
    assert choice.method == "generate" and isinstance(choice.raw_answer, str)
    assert choice.index == score_answer(choice.raw_answer, ["piano", "guitar", "violin", "drums"])


def test_embed_is_pooled_encoder_output(engine):
    a, b = engine.embed(tone_clip(5.0, 220.0)), engine.embed(tone_clip(5.0, 1760.0))
    assert a.shape == (engine.model.cfg.encoder.output_dim,) and a.dtype == np.float32
    assert not np.allclose(a, b)


@pytest.mark.parametrize("audio, question, error", [
    (np.full(SR, np.nan, dtype=np.float32), "ok?", InvalidSamplesError),
    (np.zeros(100, dtype=np.float32), "ok?", AudioTooShortError),
    (np.zeros(SR, dtype=np.int16), "ok?", InputError),
    (np.zeros(SR, dtype=np.float32), "   ", InputError),
    (np.zeros(SR, dtype=np.float32), "why " * 200, InputError),
])
def test_engine_rejects_bad_input(engine, audio, question, error):
    with pytest.raises(error):
        engine.answer(audio, question, max_new_tokens=2)
    assert engine.answer(tone_clip(1.0), "still working?", max_new_tokens=2)  # the engine keeps working


def test_choose_rejects_bad_options(engine):
    with pytest.raises(InputError, match="distinct"):
        engine.choose(tone_clip(2.0), "Which?", ["piano", "Piano", "drums"])
    with pytest.raises(InputError, match="between 2"):
        engine.choose(tone_clip(2.0), "Which?", ["piano"])


# -- MuChoMusic protocol -------------------------------------------------------------------


def test_muchomusic_prompt_format():
    prompt = build_prompt("What genre?", ["jazz", "rock", "pop", "folk"])
    assert prompt == "Question: What genre?\n Options: (A) jazz (B) rock (C) pop (D) folk \n The correct answer is: "
    with_example = build_prompt("What genre?", ["jazz", "rock", "pop", "folk"], IN_CONTEXT_EXAMPLE)
    assert with_example.endswith(prompt) and "(B) violin\n\n" in with_example


@pytest.mark.parametrize("text, expected", [
    ("(C) pop", 2), ("B", 1), ("The correct answer is: D) folk", 3), ("jazz, clearly", 0),
    ("(A) or (B)", None), ("A song with rock and pop", None), ("no idea", None), ("The correct answer is: rock.", 1),
])
def test_muchomusic_scorer(text, expected):
    assert score_answer(text, ["jazz", "rock", "pop", "folk"]) == expected


def test_muchomusic_summary():
    assert summarize([0, None, 2, 1], [0, 1, 2, 3]) == {"accuracy": 0.5, "instruction_following": 0.75,
                                                        "questions": 4.0}


# -- checkpoints -----------------------------------------------------------------------------


def _matpac_state(model: TinyMU) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.encoder.state_dict().items():
        prefix = "student_encoder." if key.startswith(("blocks.", "norm.")) else ""
        state[prefix + key] = value.clone()
    state["head_norm.running_mean"] = torch.zeros(32)  # the AudioSet variant's head is ignored
    state["head.weight"] = torch.zeros(527, 32)
    return state


def test_matpac_encoder_file(tiny):
    state = _matpac_state(tiny)
    fresh = checkpoints.load_matpac_encoder(build_model(preset("tiny")), state)
    torch.testing.assert_close(fresh.encoder.pos_embed, tiny.encoder.pos_embed)
    torch.testing.assert_close(fresh.encoder.blocks[1].mlp.fc2.weight, tiny.encoder.blocks[1].mlp.fc2.weight)

    no_pos = {k: v for k, v in state.items() if k != "pos_embed"}
    with pytest.raises(checkpoints.CheckpointError, match="pos_embed"):
        checkpoints.load_matpac_encoder(build_model(preset("tiny")), no_pos)
    no_block = {k: v for k, v in state.items() if not k.startswith("student_encoder.blocks.1.")}
    with pytest.raises(checkpoints.CheckpointError, match=r"blocks \[1\]"):
        checkpoints.load_matpac_encoder(build_model(preset("tiny")), no_block)


def test_own_checkpoint_round_trip(tiny, tmp_path):
    caveat = "trained on synthetic clips only"
    file = checkpoints.save_checkpoint(tiny, tmp_path / "ckpt", trained=True, notes="unit test", caveat=caveat)
    assert file.name == "tinymu.safetensors"
    loaded, header = checkpoints.load_checkpoint(tmp_path / "ckpt")
    assert header.trained is True and header.notes == "unit test" and header.lm_base is None
    assert header.caveat == caveat
    assert header.config == tiny.cfg
    loaded_state = loaded.state_dict()
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    engine = load_engine(str(file), device="cpu")
    assert engine.info().trained is True and engine.info().checkpoint == str(file)
    assert engine.info().note == caveat  # the caveat travels with the weights (tools show it as their warning)

    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_checkpoint(tmp_path / "bad.safetensors")


def test_word_readout_feeds_mixtures_of_real_word_embeddings(tiny, tmp_path):
    import dataclasses

    words = (5, 9, 23, 40)
    cfg = dataclasses.replace(tiny.cfg, audio_vocabulary=words, audio_vocabulary_temperature=1e-4)
    model = TinyMU(cfg, tiny.lm).eval()
    model.projector.load_state_dict(tiny.projector.state_dict())
    tokens = torch.randn(2, 7, cfg.encoder.output_dim)
    with torch.no_grad():
        plain = tiny.audio_embeddings(tokens)
        read = model.audio_embeddings(tokens)
    table = tiny.lm.get_input_embeddings().weight.detach()[list(words)]
    # At a near-zero temperature each token becomes the embedding of its nearest word (cosine),
    # wherever that word is nearest by a clear margin (near-ties stay mixtures).
    cosine = torch.nn.functional.normalize(plain, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    top2 = cosine.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] > 0.01
    assert clear.sum() >= 7
    assert torch.allclose(read[clear], table[cosine.argmax(-1)][clear], atol=1e-5)
    assert not torch.allclose(read, plain)
    file = checkpoints.save_checkpoint(model, tmp_path / "readout", trained=False)
    loaded, header = checkpoints.load_checkpoint(file)
    assert header.config.audio_vocabulary == words and loaded.cfg.audio_vocabulary_temperature == 1e-4


def test_checkpoints_with_the_older_key_context_flag_load_as_the_key_group():
    from model.lm.config import TinyMUConfig

    older = TinyMUConfig.from_dict({"projector_key_context": True})
    assert older.projector_context_classes == (24,)
    assert TinyMUConfig.from_dict({"projector_key_context": False}).projector_context_classes == ()


def test_clip_context_lets_every_token_see_the_whole_clip(tiny, tmp_path):
    import dataclasses

    model = TinyMU(dataclasses.replace(tiny.cfg, projector_context_classes=(24, 3)), tiny.lm).eval()
    tokens = torch.randn(1, 6, tiny.cfg.encoder.output_dim)
    changed = tokens.clone()
    changed[0, -1] += 1.0  # only the last token differs
    with torch.no_grad():
        # Without the context a token's embedding depends on that token alone; with it, on every token.
        assert torch.equal(tiny.audio_embeddings(tokens)[0, 0], tiny.audio_embeddings(changed)[0, 0])
        assert not torch.allclose(model.audio_embeddings(tokens)[0, 0], model.audio_embeddings(changed)[0, 0])
        # The reference projector's weights are the same (same seed); the context only adds to them.
        assert torch.equal(model.projector.linear1.weight, tiny.projector.linear1.weight)
        # What it adds: one softmax per group over the clip's mean token, side by side.
        key, other = model.projector.context_logits(tokens)
        assert key.shape == (1, 24) and other.shape == (1, 3)
        probs = torch.cat([key.softmax(-1), other.softmax(-1)], dim=-1)
        added = model.projector.context_out(probs).unsqueeze(1)
        assert torch.allclose(model.projector(tokens),
                              model.projector.linear2(torch.relu(model.projector.linear1(tokens) + added)))
    file = checkpoints.save_checkpoint(model, tmp_path / "ctx", trained=False)
    loaded, header = checkpoints.load_checkpoint(file)
    assert header.config.projector_context_classes == (24, 3)
    with torch.no_grad():
        assert torch.equal(loaded.audio_embeddings(tokens), model.audio_embeddings(tokens))


def _genre_hinting(engine, favoured: int, strength: float = 20.0):
    """The engine's tiny model with a clip context whose genre group (rock, jazz, none) gives class
    `favoured` the most probability, as one engine with the genre hint and one without."""
    import copy
    import dataclasses

    from model.lm.engine import MusicLM

    cfg = dataclasses.replace(engine.model.cfg, projector_context_classes=(24, 3), heard_genre_group=1,
                              heard_genre_words=("rock", "jazz", "none"))
    model = TinyMU(cfg, copy.deepcopy(engine.model.lm)).eval()
    with torch.no_grad():
        model.projector.context_head.weight.zero_()
        model.projector.context_head.bias.zero_()
        model.projector.context_head.bias[24 + favoured] = strength
    plain = copy.deepcopy(model)
    plain.cfg = dataclasses.replace(cfg, heard_genre_words=())
    return tuple(MusicLM(m, engine.tokenizer, trained=False, checkpoint=None, device="cpu") for m in (model, plain))


def test_genre_hint_is_the_context_classifiers_genre_in_front_of_the_prompt(engine):
    clip, question = tone_clip(10.0), "What genre is this?"
    hinting, plain = _genre_hinting(engine, favoured=0)
    assert hinting.info().hears_genre and not plain.info().hears_genre
    # The model with the hint answers exactly what the same weights answer to the hinted prompt.
    hinted = plain.answer(clip, "Heard: genre rock. " + question, max_new_tokens=8)
    assert hinting.answer(clip, question, max_new_tokens=8) == hinted
    options = ["rock", "jazz", "orchestral", "electronic"]
    embeds, heard = hinting._audio_embeds(clip)
    assert heard.hint == heard.stated == "rock"
    chosen = hinting.choose(clip, question, options)
    assert chosen.probabilities == pytest.approx(
        plain.choose_embedded(embeds, question, options, heard_genre="rock").probabilities, abs=1e-6)
    assert chosen.probabilities != pytest.approx(
        plain.choose_embedded(embeds, question, options).probabilities, abs=1e-6)
    # A prompt with no room for the hint is answered without it, not refused.
    long_question = " ".join(["music"] * (engine.model.cfg.prompt_length - 3))
    assert hinting.answer(clip, long_question, max_new_tokens=4) == plain.answer(clip, long_question, max_new_tokens=4)


@pytest.mark.parametrize("favoured, strength", [(2, 20.0), (0, 0.0)])
def test_no_genre_hint_for_none_or_an_unsure_classifier(engine, favoured, strength):
    """'none' is no genre; equal logits over three classes (p = 1/3) are below HEARD_MIN_PROBABILITY."""
    hinting, plain = _genre_hinting(engine, favoured, strength)
    clip = tone_clip(10.0, 330.0)
    assert hinting._audio_embeds(clip)[1].hint is None
    assert hinting.answer(clip, "Describe it.", max_new_tokens=6) == plain.answer(clip, "Describe it.", max_new_tokens=6)


def test_a_genre_the_classifier_is_unsure_of_is_hinted_but_never_stated(engine):
    """p(rock) = 0.6: enough for the hint in front of the prompt (multiple choice reads it), not for a free-form
    answer to name the genre: grounded decoding then forbids every genre word."""
    import math

    hinting, _ = _genre_hinting(engine, favoured=0, strength=math.log(0.6 / 0.2))  # rock 0.6, jazz 0.2, none 0.2
    hinting.grounded = True
    clip = tone_clip(10.0, 330.0)
    heard = hinting._audio_embeds(clip)[1]
    assert heard.probability == pytest.approx(0.6, abs=1e-3)
    assert heard.hint == "rock" and heard.stated is None
    sure, _ = _genre_hinting(engine, favoured=0)
    sure.grounded = True
    assert sure._audio_embeds(clip)[1].stated == "rock"
    question = "What genre is this? It is"
    rock = engine.tokenizer(" rock", add_special_tokens=False).input_ids
    # Grounded on the unsure classifier the answer may not say "rock"; on the sure one it may.
    assert rock in grounding.forbidden_token_sequences(engine.tokenizer, question, heard.stated)
    assert rock not in grounding.forbidden_token_sequences(engine.tokenizer, question, "rock")
    assert not any(w in hinting.answer(clip, question, max_new_tokens=12).lower() for w in ("rock", "jazz"))


def test_delta_checkpoint_over_smollm2(tmp_path):
    """A checkpoint over the offline SmolLM2 stores only the encoder, projector, LoRA
    adapters and the decoder tensors training changed."""
    cfg = TinyMUConfig.from_dict({**preset("tiny").to_dict(), "lm": preset("official").lm.__dict__,
                                  "lm_weights": "smollm2-gguf", "lora_rank": 4})
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
        model.lm.model.norm.weight.mul_(1.01)
    file = checkpoints.save_checkpoint(model, tmp_path / "delta.safetensors", trained=True)
    stored = checkpoints.load_file(str(file))
    lm_keys = {k for k in stored if k.startswith("lm.")}
    assert lm_keys == {k for k in model.state_dict() if "lora_" in k} | {"lm.model.norm.weight"}
    assert not any(k.startswith("encoder.") for k in stored)  # still its seeded start: regenerated
    assert any(k.startswith("projector.") for k in stored)
    assert file.stat().st_size < 3_000_000  # vs ~540 MB for the whole decoder in float32
    loaded, header = checkpoints.load_checkpoint(file)
    assert header.lm_base == "smollm2-gguf" and header.encoder_digest
    loaded_state = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded_state[key], value), key


# -- the real SmolLM2 weights, end to end ----------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_end_to_end():
    engine = load_engine("preset:official", device="cpu")
    info = engine.info()
    assert info.parameters == 229_054_592 and info.trained is False
    # The converted decoder is the real SmolLM2: it knows a simple fact without audio.
    tok = engine.tokenizer
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False).input_ids])
    with torch.inference_mode():
        out = engine.model.lm.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    text = engine.answer(tone_clip(10.0), "Describe the music.", max_new_tokens=12)
    assert isinstance(text, str) and text.strip()


def test_trained_encoder_is_stored_and_seed_mismatch_refused(tmp_path):
    model = build_model(preset("tiny"))
    with torch.no_grad():
        model.encoder.blocks[0].attn.qkv.weight.add_(0.5)
    file = checkpoints.save_checkpoint(model, tmp_path / "enc.safetensors", trained=True)
    stored = checkpoints.load_file(str(file))
    assert "encoder.blocks.0.attn.qkv.weight" in stored
    assert checkpoints.read_header(file).encoder_digest is None

    seeded = checkpoints.save_checkpoint(build_model(preset("tiny")), tmp_path / "seeded.safetensors", trained=False)
    header = checkpoints.read_header(seeded)
    assert header.encoder_digest
    # Pretend another torch version regenerated different numbers: the digest no longer matches.
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(seeded), framework="pt") as handle:
        meta = handle.metadata()
    meta["encoder_from_seed"] = "0" * 64
    save_file(checkpoints.load_file(str(seeded)), str(seeded), metadata=meta)
    with pytest.raises(checkpoints.CheckpointError, match="re-save"):
        checkpoints.load_checkpoint(seeded)


def test_tokenize_example_follows_reference_format(engine):
    from model.lm.network import tokenize_example

    p_ids, p_mask, t_ids, t_mask = tokenize_example(engine.tokenizer, "What key is this in?", "A minor")
    n_prompt, n_target = int(p_mask.sum()), int(t_mask.sum())
    assert p_ids.shape == t_ids.shape == (129,)
    assert (p_ids[n_prompt:] == PAD_ID).all() and (t_ids[n_target:] == PAD_ID).all()
    assert t_ids[n_target - 1] == EOS_ID
    assert engine.tokenizer.decode(t_ids[: n_target - 1]) == "A minor"
    assert engine.tokenizer.decode(p_ids[:n_prompt]) == "What key is this in?"


def test_int8_decoder_weights_stay_close(tiny):
    """The CPU int8 option: same shapes, logits close to float32, the engine still answers."""
    import copy

    from model.lm.quantize import Int8WeightLinear, quantize_int8

    quantized = quantize_int8(copy.deepcopy(tiny).lm)
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, Int8WeightLinear)
    ids = torch.tensor([[5, 60, 700, 8000, 12]])
    with torch.inference_mode():
        ref, got = tiny.lm(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert torch.corrcoef(torch.stack([ref.flatten(), got.flatten()]))[0, 1] > 0.99
    engine = load_engine("preset:tiny", device="cpu", quantize="int8")
    assert engine.info().dtype == "float32+int8"
    assert sum(engine.choose(tone_clip(2.0), "Which?", ["a", "b", "c"]).probabilities) == pytest.approx(1.0)


def test_int8_quantisation_of_a_tall_matrix_matches_whole_matrix_rounding():
    """Weights are quantised in row blocks (to bound memory); the result equals per-row rounding of the whole matrix."""
    from model.lm.quantize import Int8WeightLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 9000, bias=False)  # three row blocks, the last one partial
    quantized = Int8WeightLinear(linear)
    weight = linear.weight.detach()
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    expected = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    assert torch.equal(quantized.weight_int8, expected)
    assert torch.equal(quantized.scale, scale.to(torch.bfloat16))


def test_the_shipped_checkpoint_is_the_trained_default():
    """model/lm/shipped/ holds the checkpoint `python -m training.ship` trained and gated: small, adapter-only
    over the GGUF-derived SmolLM2, loaded by default, trained, and carrying its caveat."""
    from model.lm.engine import shipped_checkpoint

    file = shipped_checkpoint()
    assert file is not None and file.stat().st_size < 50 * 2**20
    header = checkpoints.read_header(file)
    assert header.trained is True and header.lm_base == "smollm2-gguf" and "synthetic" in header.caveat
    info = load_engine(None, device="cpu", quantize="int8").info()
    assert info.trained is True and info.checkpoint == str(file) and info.note == header.caveat
