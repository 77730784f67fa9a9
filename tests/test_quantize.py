"""Int8 decoders loaded by streaming (each Linear weight quantised as it is read from the
safetensors file) equal the float32 decoder loaded whole and then quantised: same tensors,
same logits, same engine answers. The decoder is a tiny Llama saved into a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from model.errors import ModelUnavailableError
from model.lm import checkpoints, smollm2
from model.lm.config import TinyMUConfig, preset
from model.lm.engine import MusicLM, load_engine
from model.lm.network import LoRALinear, build_model, lm_config
from model.lm.quantize import Int8WeightLinear, quantize_int8

IDS = torch.tensor([[5, 60, 700, 8000, 12, 49151, 0, 17]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a busy machine, handing each small op to a second thread
    costs milliseconds per op, which made the quantisation loops ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    """A tiny tied-embedding Llama with lively random weights, saved the Hugging Face way,
    next to the SmolLM2 tokenizer (so an engine can load it)."""
    folder = tmp_path_factory.mktemp("tiny-decoder")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(lm_config(preset("tiny")))
    with torch.no_grad():
        for p in lm.parameters():
            p.copy_(torch.randn(p.shape) * (0.3 if p.ndim > 1 else 1.0))
    lm.save_pretrained(folder)
    smollm2.load_tokenizer().save_pretrained(folder)
    return folder


def tiny_cfg(folder, **changes) -> TinyMUConfig:
    return TinyMUConfig.from_dict({**preset("tiny").to_dict(), "lm_weights": str(folder), **changes})


def build(cfg: TinyMUConfig, quantize: str | None = None):
    torch.manual_seed(1)  # LoRA adapters start random
    return build_model(cfg, quantize=quantize).eval()


def assert_same_model(got, expected):
    got_state, expected_state = got.state_dict(), expected.state_dict()
    assert got_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert got_state[key].dtype == value.dtype and torch.equal(got_state[key], value), key
    with torch.inference_mode():
        torch.testing.assert_close(got.lm(input_ids=IDS).logits, expected.lm(input_ids=IDS).logits, rtol=0, atol=1e-5)


def test_streamed_int8_decoder_equals_quantising_the_float_one(decoder_dir):
    with safe_open(str(decoder_dir / "model.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    assert "lm_head.weight" not in stored  # tied: the output layer comes from the embedding
    cfg = tiny_cfg(decoder_dir)
    reference = build(cfg)
    quantize_int8(reference.lm)
    streamed = build(cfg, quantize="int8")
    linears = [m for m in streamed.lm.modules() if isinstance(m, (torch.nn.Linear, Int8WeightLinear))]
    assert len(linears) == 2 * 7 + 1 and all(isinstance(m, Int8WeightLinear) for m in linears)
    assert streamed.lm.get_input_embeddings().weight.dtype == torch.float32
    assert not any(t.is_meta for t in [*streamed.parameters(), *streamed.buffers()])
    assert_same_model(streamed, reference)


def test_streamed_int8_keeps_lora_targets_float(decoder_dir):
    cfg = tiny_cfg(decoder_dir, lora_rank=4)
    reference = build(cfg)
    quantize_int8(reference.lm)
    streamed = build(cfg, quantize="int8")
    attention = streamed.lm.model.layers[0].self_attn
    assert type(attention.q_proj) is LoRALinear and type(attention.v_proj) is LoRALinear
    assert isinstance(attention.k_proj, Int8WeightLinear)
    assert_same_model(streamed, reference)


def test_checkpoint_deltas_are_applied_before_quantising(decoder_dir, tmp_path):
    """Deltas outside the quantised Linear weights (LoRA, norms, projector) load on top of a
    streamed int8 decoder; a delta on a Linear weight makes the loader keep float32 so that
    the int8 weights are made from the trained values."""
    cfg = tiny_cfg(decoder_dir, lora_rank=4)
    model = build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
        model.lm.model.norm.weight.mul_(1.5)
    adapters = checkpoints.save_checkpoint(model, tmp_path / "adapters.safetensors", trained=True)
    assert not any(k.endswith("down_proj.weight") for k in load_file(str(adapters)))
    with torch.no_grad():
        model.lm.model.layers[1].mlp.down_proj.weight.mul_(-2.0)
    retrained = checkpoints.save_checkpoint(model, tmp_path / "retrained.safetensors", trained=True)

    for file, streams in ((adapters, True), (retrained, False)):
        reference, _ = checkpoints.load_checkpoint(file)
        quantize_int8(reference.lm)
        loaded, _ = checkpoints.load_checkpoint(file, quantize="int8")
        down_proj = loaded.lm.model.layers[1].mlp.down_proj
        assert isinstance(down_proj, Int8WeightLinear) is streams
        quantize_int8(loaded.lm)  # what MusicLM does with a decoder that is still float
        assert_same_model(loaded.eval(), reference.eval())


def test_engine_answers_the_same_from_a_streamed_decoder(decoder_dir):
    cfg = tiny_cfg(decoder_dir)
    tokenizer = smollm2.load_tokenizer(str(decoder_dir))
    reference = MusicLM(build(cfg), tokenizer, trained=False, checkpoint=None, device="cpu", quantize="int8")
    streamed = MusicLM(build(cfg, quantize="int8"), tokenizer, trained=False, checkpoint=None, device="cpu",
                       quantize="int8")
    assert streamed.info().parameters == reference.info().parameters == MusicLM(
        build(cfg), tokenizer, trained=False, checkpoint=None, device="cpu").info().parameters
    assert streamed.model.lm.model.layers[0].mlp.up_proj.scale.dtype == torch.bfloat16  # survived .to(float32)
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    expected = reference.choose(clip, "Which instrument?", ["piano", "guitar", "drums"])
    got = streamed.choose(clip, "Which instrument?", ["piano", "guitar", "drums"])
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-6)
    assert streamed.answer(clip, "Describe it.", max_new_tokens=6) == reference.answer(clip, "Describe it.",
                                                                                      max_new_tokens=6)


def test_incomplete_decoder_weights_are_refused(decoder_dir, tmp_path):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((decoder_dir / name).read_bytes())
    state = load_file(str(decoder_dir / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="up_proj"):
        build_model(tiny_cfg(tmp_path), quantize="int8")
    checkpoint = checkpoints.save_checkpoint(build_model(preset("tiny")), tmp_path / "ckpt", trained=False,
                                             delta_over_base=False)
    bad = checkpoints.load_file(str(checkpoint))  # a checkpoint over the incomplete decoder
    with safe_open(str(checkpoint), framework="pt") as handle:
        meta = handle.metadata()
    meta.update(lm_base=str(tmp_path), config=tiny_cfg(tmp_path).to_json())
    save_file({k: v for k, v in bad.items() if not k.startswith("lm.")}, str(checkpoint), metadata=meta)
    with pytest.raises(ModelUnavailableError, match="up_proj"):
        load_engine(str(checkpoint), device="cpu", quantize="int8")
