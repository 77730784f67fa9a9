"""The TinyMU inference engine: one loaded model per process, safe to share between threads.

Audio in is 16 kHz float32 mono numpy. The encoder makes 6.25 audio tokens per
second. The reference model sees only the first 10 s of a clip; this engine
encodes up to `max_audio_s` (default 30 s = 188 tokens) of it in 992-frame
chunks and ignores the rest, so pick the part that matters with an offset
before calling (the agent tools take `offset_s`/`duration_s`). A model trained
on 10 s clips still works on longer input, but its answers are most reliable
on about 10 s.

`get_engine()` is what the tools call for the embedded model (see `load_engine` for
which weights it picks); `model.service.client` offers the same interface over HTTP.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, Field

from model import cancel
from model.errors import (
    AudioTooShortError,
    InputError,
    InvalidSamplesError,
    ModelUnavailableError,
)
from model.lm import decoding, grounding
from model.lm.config import preset
from model.lm.muchomusic import IN_CONTEXT_EXAMPLE, LETTERS, build_prompt, score_answer
from model.lm.network import TinyMU, build_model
from model.lm.prompts import CAPTION_PROMPT, HeardGenre, with_heard_genre

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_MAX_AUDIO_S = 30.0
UNTRAINED_NOTE = "untrained: answers are not meaningful (random audio encoder and projector)"
CHECKPOINT_DIR = Path(__file__).parent / "shipped"


class ModelInfo(BaseModel):
    """What model answers, and whether its answers mean anything."""

    name: str
    checkpoint: str | None = Field(description="weights file, or None for the untrained default")
    trained: bool = Field(description="False means the answers are not meaningful")
    device: str
    dtype: str
    parameters: int
    audio_tokens_per_second: float
    max_audio_s: float = Field(description="audio beyond this many seconds from the start is ignored")
    trained_audio_s: float = Field(description="clip length the model was trained on (reference: first 10 s)")
    reads_measurements: bool = Field(False, description="trained to read the DSP measurements of the clip before "
                                     "the question (model.lm.measurements); callers should give them")
    hears_genre: bool = Field(False, description="states the genre its clip classifier hears in front of each "
                              "prompt (model.lm.prompts.with_heard_genre); nothing for callers to do")
    grounded: bool = Field(False, description="free-form answers name only the tempo, key and genre that the "
                           "measurements and the heard genre state (model.lm.grounding); chords never")
    note: str = ""


class Choice(BaseModel):
    """The option a multiple-choice question resolved to."""

    index: int | None = Field(description="0-based index of the chosen option; None if the generated answer named none")
    letter: str | None
    option: str | None
    probabilities: list[float] | None = Field(
        None, description="per option, summing to 1 (method 'loglik' only)")
    method: Literal["loglik", "generate"]
    raw_answer: str | None = Field(None, description="generated text (method 'generate' only)")


@runtime_checkable
class MusicModel(Protocol):
    """What the tools need from a music-language model, in-process or remote."""

    def answer(self, audio: np.ndarray, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 0.9) -> str: ...

    def answer_batch(self, items: list[tuple[np.ndarray, str]], *, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_p: float = 0.9) -> list[str]: ...

    def caption(self, audio: np.ndarray, *, max_new_tokens: int = 96) -> str: ...

    def choose(self, audio: np.ndarray, question: str, options: list[str], *,
               method: Literal["loglik", "generate"] = "loglik") -> Choice: ...

    def embed(self, audio: np.ndarray) -> np.ndarray: ...

    def info(self) -> ModelInfo: ...


def check_audio(audio: np.ndarray, max_audio_s: float) -> np.ndarray:
    """Validate 16 kHz mono samples and keep the first `max_audio_s` seconds."""
    audio = np.asarray(audio)
    if audio.ndim == 2:  # [channels, samples]: the reference takes channel 0
        audio = audio[0]
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise InputError("audio must be a 1-D float array of 16 kHz mono samples")
    if audio.shape[0] < SAMPLE_RATE // 10:
        raise AudioTooShortError(f"audio is {audio.shape[0] / SAMPLE_RATE:.3f} s; the model needs at least 0.1 s")
    audio = audio[: int(max_audio_s * SAMPLE_RATE)].astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise InvalidSamplesError("audio contains NaN or infinite samples")
    return audio


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InputError("question must be a non-empty string")
    return question.strip()


def _check_options(options: list[str]) -> list[str]:
    options = [str(o).strip() for o in options]
    if not 2 <= len(options) <= len(LETTERS):
        raise InputError(f"give between 2 and {len(LETTERS)} options, got {len(options)}")
    if any(not o for o in options) or len(set(o.lower() for o in options)) != len(options):
        raise InputError("options must be non-empty and distinct")
    return options


class MusicLM:
    """In-process TinyMU. Build it with `load_engine`."""

    def __init__(self, model: TinyMU, tokenizer, *, trained: bool, checkpoint: str | None,
                 device: str = "auto", max_audio_s: float = DEFAULT_MAX_AUDIO_S, name: str = "TinyMU",
                 quantize: str | None = None, caveat: str = "", grounded: bool = True):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        # The log-mel window and filterbank stay float32: rounded to bfloat16 they shift log-mels by
        # up to 0.1 (measured against the float32 front end, docs/official-weights.md).
        front_end = getattr(model.encoder, "log_mel", None)
        exact = {k: v.clone() for k, v in front_end.state_dict().items()} if front_end is not None else {}
        self.model = model.to(self.device, self.dtype).eval()
        if front_end is not None:
            front_end.float().load_state_dict(exact)
        self.quantize = quantize
        self.caveat = caveat
        self.parameters = parameter_count(self.model)
        if quantize == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 quantisation is a CPU option; CUDA runs in bfloat16")
            from model.lm.quantize import quantize_int8

            quantize_int8(self.model.lm)  # the decoder: decoding speed is its weight traffic (no-op if loaded int8)
        elif quantize:
            raise ValueError(f"unknown quantize={quantize!r}; use 'int8' or None")
        self.tokenizer = tokenizer
        # Grounded decoding (model.lm.grounding) for a model trained to read the measurements; others answer freely.
        self.grounded = grounded and model.cfg.reads_measurements
        self.trained = trained
        self.checkpoint = checkpoint
        self.max_audio_s = max_audio_s
        self.name = name
        self._lock = threading.Lock()  # one forward at a time; batching happens above (service)

    # -- helpers -------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _prompt_tokens(self, text: str) -> list[int]:
        ids = self._tokens(text)
        if len(ids) > self.model.cfg.prompt_length:
            raise InputError(f"the question is {len(ids)} tokens long; the model reads at most "
                             f"{self.model.cfg.prompt_length}. Shorten it.")
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _audio_embeds(self, audio: np.ndarray) -> tuple[torch.Tensor, HeardGenre]:
        """The clip's tokens in the decoder's space [T, 576], and the genre its clip classifier hears
        (with no word where the checkpoint has no genre hint or its classifier names none)."""
        wave = torch.from_numpy(check_audio(audio, self.max_audio_s)).to(self.device).unsqueeze(0)
        tokens = self.model.encode_audio(wave)
        cancel.check("the decoder")  # a call that timed out while its audio was encoded stops here
        return self.model.audio_embeddings(tokens)[0], self.model.heard_genre(tokens)[0]

    def _hinted_prompt_tokens(self, text: str, genre: str | None) -> list[int]:
        """The prompt's ids with the genre hint in front; without it when the hint would not fit (and refused,
        with the reason, when the prompt alone does not)."""
        ids = self._tokens(with_heard_genre(text, genre))
        return ids if len(ids) <= self.model.cfg.prompt_length else self._prompt_tokens(text)

    # -- the MusicModel interface ----------------------------------------------------
    def answer(self, audio: np.ndarray, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 0.9, seed: int | None = None, grounded: bool | None = None) -> str:
        """Answer a free-form question about the clip (greedy when temperature is 0)."""
        return self.answer_batch([(audio, question)], max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, seed=seed, grounded=grounded)[0]

    def answer_batch(self, items: list[tuple[np.ndarray, str]], *, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_p: float = 0.9, seed: int | None = None,
                     grounded: bool | None = None) -> list[str]:
        """Answer several (audio, question) pairs in one batched generation; `grounded` (default: the
        engine's `grounded`) decodes with model.lm.grounding."""
        if not items:
            return []
        if not 1 <= max_new_tokens <= 512:
            raise InputError("max_new_tokens must be between 1 and 512")
        questions = [_check_question(q) for _, q in items]
        for question in questions:
            self._prompt_tokens(question)  # too long: refused before any audio is encoded
        with self._lock, torch.inference_mode():
            embeds, heard = zip(*(self._audio_embeds(audio) for audio, _ in items))
            prompts = [self._hinted_prompt_tokens(q, h.hint) for q, h in zip(questions, heard)]
            prefix = self.model.build_prefix(embeds, prompts)
            start = torch.tensor([self.model.target_start(e.shape[0]) for e in embeds], device=self.device)
            ground = self.grounded and (grounded is None or grounded)
            # The answer may name the genre only where the classifier is surer than the hint needs.
            constraints = ([grounding.constraints(self.tokenizer, q, h.stated) for q, h in zip(questions, heard)]
                           if ground else None)
            out = decoding.generate(self.model, prefix, start, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, seed=seed, constraints=constraints)
        return [self._decode(ids) for ids in out]

    def caption(self, audio: np.ndarray, *, max_new_tokens: int = 96) -> str:
        """Describe the clip (the prompt is `CAPTION_PROMPT`)."""
        return self.answer(audio, CAPTION_PROMPT, max_new_tokens=max_new_tokens)

    def choose(self, audio: np.ndarray, question: str, options: list[str], *,
               method: Literal["loglik", "generate"] = "loglik", length_normalize: bool = True) -> Choice:
        """Pick one option.

        "loglik": the prompt is the MuChoMusic prompt (question + lettered options); every
        option text (+ end token) is scored as the answer, all options in one batch over
        a shared prefix cache. The score is the mean log-probability per token
        (`length_normalize`, so long options are not penalised) or the sum; a softmax over
        the scores gives `probabilities`.
        "generate": the MuChoMusic protocol: generate after the official prompt with one
        in-context example and apply the official scorer (may answer None)."""
        question, options = _check_question(question), _check_options(options)
        if method == "generate":
            prompt = build_prompt(question, options, IN_CONTEXT_EXAMPLE)
            if len(self._tokens(prompt)) > self.model.cfg.prompt_length:
                prompt = build_prompt(question, options)  # the example does not fit: drop it
            # A letter answer is not a free-form fact: grounding would forbid the letters A to G.
            text = self.answer(audio, prompt, max_new_tokens=32, grounded=False)
            index = score_answer(text, options)
            return Choice(index=index, letter=None if index is None else LETTERS[index],
                          option=None if index is None else options[index], method="generate", raw_answer=text)
        if method != "loglik":
            raise InputError("method must be 'loglik' or 'generate'")
        with self._lock, torch.inference_mode():
            embeds, heard = self._audio_embeds(audio)
        return self.choose_embedded(embeds, question, options, length_normalize=length_normalize,
                                    heard_genre=heard.hint)

    def choose_embedded(self, embeds: torch.Tensor, question: str, options: list[str], *,
                        length_normalize: bool = True, heard_genre: str | None = None) -> Choice:
        """`choose(method="loglik")` from audio tokens already in the decoder's space [T, 576]
        (e.g. the projected feature cache of training.sweep), with the clip's genre hint if any."""
        question, options = _check_question(question), _check_options(options)
        prompt = self._hinted_prompt_tokens(build_prompt(question, options), heard_genre)
        candidates = [self._tokens(o)[: self.model.cfg.target_length - 1] for o in options]
        with self._lock, torch.inference_mode():
            prefix = self.model.build_prefix([embeds], [prompt])
            scores = decoding.score_options(self.model, prefix, self.model.target_start(embeds.shape[0]), candidates)
        totals, counts = scores[:, 0].double(), scores[:, 1].double()
        values = totals / counts if length_normalize else totals
        probs = torch.softmax(values, dim=0).tolist()
        index = int(np.argmax(probs))
        return Choice(index=index, letter=LETTERS[index], option=options[index], probabilities=probs, method="loglik")

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Mean-pooled encoder output (3840-d for the official encoder), float32."""
        with self._lock, torch.inference_mode():
            wave = torch.from_numpy(check_audio(audio, self.max_audio_s)).to(self.device).unsqueeze(0)
            return self.model.pooled_embedding(wave)[0].float().cpu().numpy()

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name, checkpoint=self.checkpoint, trained=self.trained, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch.") + ("+int8" if self.quantize else ""), parameters=self.parameters,
            audio_tokens_per_second=self.model.cfg.encoder.tokens_per_second, max_audio_s=self.max_audio_s,
            trained_audio_s=self.model.cfg.audio_seconds, reads_measurements=self.model.cfg.reads_measurements,
            hears_genre=bool(self.model.cfg.heard_genre_words), grounded=self.grounded,
            note=self.caveat if self.trained else UNTRAINED_NOTE,
        )


# -- loading ---------------------------------------------------------------------------------


def parameter_count(model: TinyMU) -> int:
    """Weights of the float model, also when its decoder was loaded as int8: an int8 Linear
    counts its matrix, except a lm_head tied to the input embedding (counted there)."""
    from model.lm.quantize import Int8WeightLinear

    count = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for module in model.lm.modules():
        if isinstance(module, Int8WeightLinear):
            tied = model.cfg.lm.tie_word_embeddings and module is model.lm.get_output_embeddings()
            count += 0 if tied else module.weight_int8.numel()
    return count


def shipped_checkpoint() -> Path | None:
    """The checkpoint packaged under model/lm/shipped/, if the training package put one there."""
    files = sorted(CHECKPOINT_DIR.glob("*.safetensors"))
    return files[0] if files else None


def load_engine(checkpoint: str | None = None, device: str = "auto",
                max_audio_s: float = DEFAULT_MAX_AUDIO_S, quantize: str | None = None) -> MusicLM:
    """Load a MusicLM.

    `checkpoint`: a file in our format (.safetensors or a directory), an official
    `tinymu.pt`, "hf:OWNER/NAME[/FILE]" for an official file on the Hugging Face hub
    (`hf:AndreasXi/TinyMU` is the release; downloaded once into the hub cache, found there
    offline), or "preset:NAME" for an untrained model of a named size (e.g.
    "preset:tiny" in tests). None: the shipped checkpoint under model/lm/shipped/ if
    present, else SmolLM2 from the offline GGUF with an untrained official-size encoder
    and projector, reported as trained=False. `quantize="int8"` (CPU): int8 decoder weights,
    about 2x faster decoding at near-identical outputs (see model.lm.quantize); they are quantised
    while the base decoder loads, so the int8 engine also peaks ~0.3 GB lower in memory."""
    from model.lm import checkpoints, smollm2

    # int8 decoders are quantised while loading (lower peak memory); MusicLM checks the setting.
    load_quantized = "int8" if quantize == "int8" else None
    caveat = ""
    try:
        if checkpoint is None:
            checkpoint = str(shipped_checkpoint()) if shipped_checkpoint() else "preset:official"
        if checkpoint.startswith("hf:"):  # the official release on the Hugging Face hub
            checkpoint = str(checkpoints.download_official(checkpoint))
        if checkpoint.startswith("preset:"):
            cfg = preset(checkpoint.split(":", 1)[1])
            model, trained, source = build_model(cfg, quantize=load_quantized), False, None
        elif checkpoint.endswith(".pt"):
            cfg = preset("official")
            cfg.lm_weights = "random"  # the file holds the whole decoder
            model = checkpoints.load_official_tinymu(build_model(cfg), checkpoint)
            trained, source = True, checkpoint
        else:
            model, header = checkpoints.load_checkpoint(checkpoint, quantize=load_quantized)
            trained, source, caveat = header.trained, checkpoint, header.caveat
        tokenizer = smollm2.load_tokenizer(model.cfg.lm_weights)
    except (ModelUnavailableError, InputError):
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelUnavailableError(f"cannot load the TinyMU model ({checkpoint}): {exc}") from exc
    return MusicLM(model, tokenizer, trained=trained, checkpoint=source, device=device, max_audio_s=max_audio_s,
                   quantize=quantize, caveat=caveat)


_engines: dict[tuple, MusicLM] = {}
_engines_lock = threading.Lock()


def get_engine(checkpoint: str | None = None, device: str = "auto", quantize: str | None = "auto",
               threads: int | None = None) -> MusicLM:
    """The process-wide engine for these settings, loaded on first use. `quantize="auto"`:
    int8 decoder weights on a CPU (see `default_quantize`); `threads`: torch CPU threads
    (1 is faster than the core count when other processes keep the cores busy)."""
    if threads:
        torch.set_num_threads(threads)
    if quantize == "auto":
        quantize = default_quantize(device)
    key = (checkpoint, device, quantize)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = load_engine(checkpoint, device, quantize=quantize)
        return _engines[key]


def default_quantize(device: str) -> str | None:
    """int8 decoder weights on a CPU, none on CUDA.

    CPU decoding is bound by weight traffic: int8 weights decode about 3x faster (48 vs 16
    tokens/s on 2 cores, `python -m training.bench model`) at near-identical outputs
    (SmolLM2 perplexity 16.25 vs 16.32). The kernel is a private torch op, so fall back to
    float32 where a torch build lacks it."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return "int8" if on_cpu and hasattr(torch, "_weight_int8pack_mm") else None
