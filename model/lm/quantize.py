"""Weight-only int8 for the decoder's Linear layers: faster CPU decoding, near-lossless.

Decoding one token reads every decoder weight once, so on a CPU its speed is set
by memory traffic. Storing the weights as int8 with one float scale per output
channel reads 4x fewer bytes; the matmul runs in bfloat16 through PyTorch's
weight-only int8 kernel (`torch._weight_int8pack_mm`, the one gpt-fast and
torchao use). Activations stay unquantised, which is what keeps it accurate:
measured on SmolLM2-135M, perplexity 16.32 (fp32) vs 16.25 (this), while
dynamic int8 (activations quantised too) gave 44.

Two ways in: `quantize_int8` converts a loaded float model in place, and
`load_int8_decoder` reads a decoder from its safetensors files and quantises each
Linear weight as it arrives, so the float32 decoder (540 MB for SmolLM2-135M)
never exists whole; that is what keeps the int8 engine's peak memory low.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class Int8WeightLinear(nn.Module):
    """A bias-optional Linear whose weight is int8 with one bfloat16 scale per output row.
    Build it from an `nn.Linear`, or from a float `weight` [out, in] (and `bias`)."""

    def __init__(self, linear: nn.Linear | torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if isinstance(linear, nn.Linear):
            linear, bias = linear.weight, linear.bias
        weight = linear.detach()
        weight_int8 = torch.empty(weight.shape, dtype=torch.int8)
        scale = torch.empty(weight.shape[0], dtype=torch.float32)
        # Row blocks (512 rows, 1-3 MB for SmolLM2; more rows for narrow matrices) through one
        # reused float buffer: whole-matrix temporaries for the 49152-row lm_head raised the peak
        # memory by ~250 MB, and short-lived temporaries allocated between the long-lived int8
        # matrices fragment the heap while a decoder streams in (4096-row blocks: +110 MB).
        block = max(512, (1 << 18) // weight.shape[1])
        work = torch.empty(min(block, weight.shape[0]), weight.shape[1])
        for start in range(0, weight.shape[0], block):
            rows = weight[start:start + block].float()
            buffer = work[: rows.shape[0]]
            block_scale = torch.abs(rows, out=buffer).amax(dim=1).clamp_(min=1e-8) / 127.0
            quantized = torch.div(rows, block_scale[:, None], out=buffer).round_().clamp_(-127, 127)
            weight_int8[start:start + block] = quantized
            scale[start:start + block] = block_scale
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale).to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def _apply(self, fn, recurse=True):
        # `model.to(torch.float32)` casts every floating buffer; the kernel needs bfloat16 scales.
        super()._apply(fn, recurse)
        self.scale = self.scale.to(torch.bfloat16)
        return self


def quantize_int8(module: nn.Module) -> nn.Module:
    """Replace every plain nn.Linear under `module` (in place; LoRA layers stay float)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8WeightLinear(child))
    return module


def can_stream(folder: str | Path) -> bool:
    """Whether `load_int8_decoder` can read this decoder: a local folder with a config and safetensors."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def load_int8_decoder(folder: str | Path, keep_float: tuple[str, ...] = ()) -> nn.Module:
    """A Hugging Face causal LM from a local folder (config.json + *.safetensors) with every
    nn.Linear quantised to `Int8WeightLinear` while loading, one tensor at a time.

    Gives the same model as `quantize_int8(AutoModelForCausalLM.from_pretrained(folder,
    dtype=torch.float32))`: other tensors load as float32, and a lm_head tied to the input
    embedding is quantised from it while the embedding itself stays float32. Linear layers
    whose last name is in `keep_float` (LoRA targets, which stay float) load as float32 too."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        lm = AutoModelForCausalLM.from_config(config)
    files = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), file))

    unused = set(files)

    def read(key: str) -> torch.Tensor:
        if key not in files:
            raise ValueError(f"decoder weights in {folder} lack {key!r}")
        unused.discard(key)
        # A short-lived handle per tensor: the file is memory-mapped, and pages read through a
        # mapping that stays open count as resident memory until it closes.
        with safe_open(str(files[key]), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        return tensor.float() if tensor.is_floating_point() else tensor

    input_embedding, output_embedding = lm.get_input_embeddings(), lm.get_output_embeddings()
    embedding_key = next(f"{name}.weight" for name, module in lm.named_modules() if module is input_embedding)
    embedding: list[torch.Tensor] = []  # the float32 input embedding, once read

    def weight_of(module: nn.Module, key: str) -> torch.Tensor:
        if module is output_embedding and key not in files and getattr(config, "tie_word_embeddings", False):
            key = embedding_key  # tied: the output layer is made from the input embedding
        if key == embedding_key:
            if not embedding:
                embedding.append(read(key))
            return embedding[0]
        return read(key)

    with _one_thread():
        for name, module in list(lm.named_modules()):
            parent_name, _, leaf = name.rpartition(".")
            if type(module) is nn.Linear and leaf not in keep_float:
                weight = weight_of(module, f"{name}.weight")
                bias = read(f"{name}.bias") if module.bias is not None else None
                lm.get_submodule(parent_name).register_module(leaf, Int8WeightLinear(weight, bias))
                continue
            for param_name, param in list(module.named_parameters(recurse=False)):
                key = f"{name}.{param_name}" if name else param_name
                tensor = weight_of(module, key) if param_name == "weight" else read(key)
                if tensor.shape != param.shape:
                    raise ValueError(f"{key} in {folder} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
                setattr(module, param_name, nn.Parameter(tensor, requires_grad=param.requires_grad))
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"decoder weights in {folder} do not fill {left[:5]}")
    if unused:
        log.warning("ignoring %d unused tensors in %s, e.g. %s", len(unused), folder, min(unused))
    if (folder / "generation_config.json").is_file():
        lm.generation_config = GenerationConfig.from_pretrained(folder)
    return lm.eval()


@contextlib.contextmanager
def _one_thread():
    """Run torch single-threaded for a while. Streaming a decoder in is thousands of small
    ops; with two threads on cores that other processes keep busy, each op waited for a
    descheduled helper thread (measured: 27 s to load vs 2 s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

