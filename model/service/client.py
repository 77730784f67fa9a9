"""httpx client of the TinyMU model service, with the same interface as the in-process engine.

Every call has a timeout and a bounded number of retries (connection failures and
502/503/504 answers, with a short back-off); a dead, slow or refusing service
raises ModelServiceError with a message that says what to check, never hangs.
Errors the caller can fix (bad audio, too-long question) come back as the same
InputError subclasses the engine raises. An answer that is not the JSON the
protocol promises (a proxy's HTML page, a truncated body) is a ModelServiceError
too, never a bare parsing exception.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx
import numpy as np

from model import errors
from model.errors import InputError, ModelServiceError
from model.lm.engine import DEFAULT_MAX_AUDIO_S, Choice, ModelInfo, check_audio
from model.service.protocol import encode_audio

RETRY_STATUS = {502, 503, 504}


class RemoteMusicLM:
    """The MusicModel interface over HTTP."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, retries: int = 2,
                 backoff_s: float = 0.3):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers,
                                  timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
                                  transport=httpx.HTTPTransport(retries=retries))
        self._max_audio_s: float | None = None

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, path, json=payload)
            except httpx.TimeoutException as exc:
                raise ModelServiceError(f"the model service at {self.url} did not answer within "
                                        f"{self.timeout_s:g} s (its own timeout, TINYMU_MODEL_TIMEOUT_S); it may be "
                                        "overloaded or stuck: check it, or raise that timeout") from exc
            except httpx.TransportError as exc:
                last = exc
                continue
            if response.status_code in RETRY_STATUS:
                last = ModelServiceError(f"model service at {self.url} answered {response.status_code}: "
                                         f"{_detail(response)}")
                continue
            return self._result(response)
        if isinstance(last, ModelServiceError):
            raise last
        raise ModelServiceError(f"cannot reach the model service at {self.url} ({last}); check that "
                                f"`tinymu serve model` runs there and TINYMU_URL is right") from last

    def _result(self, response: httpx.Response) -> dict:
        if response.status_code == 200:
            return self._json(response)
        detail = _detail(response)
        if response.status_code in (401, 403):
            raise ModelServiceError(f"the model service refused the request ({detail}); set TINYMU_TOKEN "
                                    f"to the service's token")
        if response.status_code in (400, 413, 422):
            try:
                name = response.json().get("error", "") if _is_json(response) else ""
            except (ValueError, AttributeError):
                name = ""
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, InputError)):
                cls = InputError
            raise cls(detail)
        raise ModelServiceError(f"model service at {self.url} failed with {response.status_code}: {detail}")

    def _json(self, response: httpx.Response) -> dict:
        """The JSON object a 200 answer must carry, or a ModelServiceError that shows what came instead."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ModelServiceError(
                f"the model service at {self.url} answered {response.request.url.path} with something that is not "
                f"a JSON object ({response.headers.get('content-type', 'no content type')}: "
                f"{response.text[:80]!r}); check that TINYMU_URL points at `tinymu serve model`, not a proxy or "
                "another service")
        return data

    def _field(self, data: dict, name: str, path: str):
        if name not in data:
            raise ModelServiceError(f"the model service at {self.url} answered {path} without {name!r}; "
                                    "its version may not match this client's")
        return data[name]

    def _audio(self, audio: np.ndarray) -> str:
        if self._max_audio_s is None:
            self._max_audio_s = self.info().max_audio_s
        # Validate here (clear errors without a round trip) and send only what the model reads.
        return encode_audio(check_audio(audio, self._max_audio_s or DEFAULT_MAX_AUDIO_S))

    # -- the MusicModel interface ----------------------------------------------------
    def answer(self, audio: np.ndarray, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 0.9) -> str:
        data = self._request("POST", "/v1/answer", {
            "audio_b64": self._audio(audio), "question": question, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p})
        return self._field(data, "text", "/v1/answer")

    def answer_batch(self, items: list[tuple[np.ndarray, str]], *, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_p: float = 0.9) -> list[str]:
        """Concurrent requests; the service batches them."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            futures = [pool.submit(self.answer, a, q, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p) for a, q in items]
            return [f.result() for f in futures]

    def caption(self, audio: np.ndarray, *, max_new_tokens: int = 96) -> str:
        data = self._request("POST", "/v1/caption", {"audio_b64": self._audio(audio),
                                                     "max_new_tokens": max_new_tokens})
        return self._field(data, "text", "/v1/caption")

    def choose(self, audio: np.ndarray, question: str, options: list[str], *,
               method: Literal["loglik", "generate"] = "loglik") -> Choice:
        return _validated(Choice, self._request("POST", "/v1/choose", {
            "audio_b64": self._audio(audio), "question": question, "options": list(options), "method": method}))

    def embed(self, audio: np.ndarray) -> np.ndarray:
        data = self._request("POST", "/v1/embed", {"audio_b64": self._audio(audio)})
        return np.asarray(self._field(data, "embedding", "/v1/embed"), dtype=np.float32)

    def info(self) -> ModelInfo:
        return _validated(ModelInfo, self._request("GET", "/v1/health"))


def _validated(model_cls, data: dict):
    try:
        return model_cls.model_validate(data)
    except ValueError as exc:
        raise ModelServiceError(f"the model service answered with an unexpected {model_cls.__name__} ({exc}); "
                                "its version may not match this client's") from None


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json() if _is_json(response) else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        detail = data.get("detail", response.text)
        return detail if isinstance(detail, str) else str(detail)
    return response.text[:200] or response.reason_phrase
