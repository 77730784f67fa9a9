"""HTTP model service: TinyMU on a GPU (or any) host, for agent tools running elsewhere.

    tinymu serve model [--checkpoint PATH] [--device cuda] [--host 0.0.0.0] [--port 8765] [--token-env TINYMU_TOKEN]

Endpoints (JSON; OpenAPI schema at /openapi.json, docs at /docs):
    GET  /v1/health   model info (name, trained, device, ...); no token needed
    POST /v1/answer   {audio_b64, question, max_new_tokens?, temperature?, top_p?} -> {text}
    POST /v1/caption  {audio_b64, max_new_tokens?} -> {text}
    POST /v1/choose   {audio_b64, question, options, method?} -> Choice
    POST /v1/embed    {audio_b64} -> {embedding}

Audio travels as `audio_b64`: base64 of little-endian float32 mono samples at
16 kHz (no decoding on the server; clients send at most the model's
`max_audio_s`, 30 s = 2.5 MB of base64). Requests above `max_audio_bytes` are
refused with 413. When the environment variable named by --token-env is set,
every POST needs `Authorization: Bearer <token>`. Concurrent answer and caption
requests are grouped by a small micro-batcher (up to `max_batch` requests that
arrive within `batch_window_ms`) and run as one batched generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.errors import BackendError, InputError
from model.lm.engine import Choice, ModelInfo, MusicLM
from model.lm.prompts import CAPTION_PROMPT
from model.service.protocol import (
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_PORT,
    AnswerRequest,
    AudioRequest,
    CaptionRequest,
    ChooseRequest,
    EmbedResponse,
    TextResponse,
    decode_audio,
)

log = logging.getLogger(__name__)

class MicroBatcher:
    """Groups concurrent generation requests with the same settings into one batched call."""

    def __init__(self, engine: MusicLM, window_s: float = 0.01, max_batch: int = 8):
        self.engine, self.window_s, self.max_batch = engine, window_s, max_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches_run = 0  # observable in tests and logs

    async def answer(self, audio: np.ndarray, question: str, **settings) -> str:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((tuple(sorted(settings.items())), audio, question, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(item[0], []).append(item)
            for settings, items in groups.items():
                await self._run_group(dict(settings), items)

    async def _run_group(self, settings: dict, items: list) -> None:
        self.batches_run += 1
        try:
            texts = await asyncio.to_thread(self.engine.answer_batch, [(a, q) for _, a, q, _ in items], **settings)
            for (_, _, _, future), text in zip(items, texts):
                if not future.done():
                    future.set_result(text)
        except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours: retry one by one
            for _, audio, question, future in items:
                try:
                    text = await asyncio.to_thread(self.engine.answer, audio, question, **settings)
                    if not future.done():
                        future.set_result(text)
                except Exception as exc:  # noqa: BLE001
                    if not future.done():
                        future.set_exception(exc)


def create_app(engine: MusicLM, *, token: str | None = None, max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
               batch_window_ms: float = 10.0, max_batch: int = 8) -> FastAPI:
    batcher = MicroBatcher(engine, batch_window_ms / 1000, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="TinyMU model service", version="1", lifespan=lifespan,
                  description="Music question answering, captioning, multiple choice and clip embeddings.")
    app.state.batcher = batcher
    bearer = HTTPBearer(auto_error=False)

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and int(length) > max_audio_bytes * 4 // 3 + 65536:
            return JSONResponse({"detail": f"request too large; send at most {max_audio_bytes} bytes of audio",
                                 "error": "AudioTooLargeError"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=400)

    @app.exception_handler(BackendError)
    async def backend_error(request: Request, exc: BackendError):
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=503)

    def audio_of(req: AudioRequest) -> np.ndarray:
        if len(req.audio_b64) > max_audio_bytes * 4 // 3 + 4:
            from model.errors import AudioTooLargeError

            raise AudioTooLargeError(f"audio above {max_audio_bytes} bytes; send at most {engine.max_audio_s:g} s")
        return decode_audio(req.audio_b64)

    @app.get("/v1/health", response_model=ModelInfo)
    async def health() -> ModelInfo:
        return engine.info()

    @app.post("/v1/answer", response_model=TextResponse, dependencies=[Depends(authorize)])
    async def answer(req: AnswerRequest) -> TextResponse:
        text = await batcher.answer(audio_of(req), req.question, max_new_tokens=req.max_new_tokens,
                                    temperature=req.temperature, top_p=req.top_p)
        return TextResponse(text=text, trained=engine.trained)

    @app.post("/v1/caption", response_model=TextResponse, dependencies=[Depends(authorize)])
    async def caption(req: CaptionRequest) -> TextResponse:
        text = await batcher.answer(audio_of(req), CAPTION_PROMPT, max_new_tokens=req.max_new_tokens,
                                    temperature=0.0, top_p=0.9)
        return TextResponse(text=text, trained=engine.trained)

    @app.post("/v1/choose", response_model=Choice, dependencies=[Depends(authorize)])
    async def choose(req: ChooseRequest) -> Choice:
        return await asyncio.to_thread(engine.choose, audio_of(req), req.question, req.options, method=req.method)

    @app.post("/v1/embed", response_model=EmbedResponse, dependencies=[Depends(authorize)])
    async def embed(req: AudioRequest) -> EmbedResponse:
        vector = await asyncio.to_thread(engine.embed, audio_of(req))
        return EmbedResponse(embedding=vector.tolist())

    return app


def serve_model(checkpoint: str | None = None, device: str = "auto", host: str = "127.0.0.1",
                port: int = DEFAULT_PORT, token: str | None = None, batch_window_ms: float = 10.0,
                max_batch: int = 8, quantize: str | None = None) -> None:
    """Load the model once and serve it until interrupted."""
    import uvicorn

    from model.lm.engine import load_engine

    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"refusing to serve on {host} without a token: set TINYMU_TOKEN "
                         "(clients send it as their TINYMU_TOKEN)")
    engine = load_engine(checkpoint, device=device, quantize=quantize)
    info = engine.info()
    log.info("TinyMU on %s (%s, trained=%s)", info.device, info.checkpoint or "untrained default", info.trained)
    app = create_app(engine, token=token, batch_window_ms=batch_window_ms, max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, log_level="info")
