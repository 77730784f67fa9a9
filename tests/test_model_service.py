"""The HTTP model service in a real uvicorn server on 127.0.0.1, driven by the real httpx client."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from model.errors import AudioTooShortError, InputError, ModelServiceError
from model.lm.engine import MusicModel, load_engine
from model.service.client import RemoteMusicLM
from model.service.protocol import encode_audio
from model.service.server import create_app

TOKEN = "s3cret-token"
SR = 16000


def clip(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine():
    return load_engine("preset:tiny", device="cpu")


@pytest.fixture(scope="module")
def service(engine):
    app = create_app(engine, token=TOKEN, batch_window_ms=300, max_batch=8)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(service):
    remote = RemoteMusicLM(service[0], token=TOKEN, timeout_s=120)
    yield remote
    remote.close()


def test_health_and_openapi(service, client, engine):
    url, _ = service
    info = client.info()
    assert info == engine.info()
    assert info.trained is False and "untrained" in info.note
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/answer", "/v1/caption", "/v1/choose", "/v1/embed", "/v1/health"} <= set(schema["paths"])
    assert isinstance(client, MusicModel)


def test_remote_results_equal_embedded(client, engine):
    audio = clip(6.0, 330.0)
    assert client.answer(audio, "What instrument?", max_new_tokens=6) == engine.answer(audio, "What instrument?",
                                                                                      max_new_tokens=6)
    assert client.caption(audio, max_new_tokens=5) == engine.caption(audio, max_new_tokens=5)
    options = ["piano", "guitar", "violin", "drums"]
    remote = client.choose(audio, "Which instrument?", options)
    local = engine.choose(audio, "Which instrument?", options)
    assert remote.index == local.index
    assert remote.probabilities == pytest.approx(local.probabilities, abs=1e-6)
    assert sum(remote.probabilities) == pytest.approx(1.0)
    np.testing.assert_allclose(client.embed(audio), engine.embed(audio), rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched(service, client, engine):
    batcher = service[1].state.batcher
    items = [(clip(3.0 + i, 200.0 * (i + 1)), f"Question number {i}?") for i in range(4)]
    before = batcher.batches_run
    answers = client.answer_batch(items, max_new_tokens=5)
    assert answers == [engine.answer(a, q, max_new_tokens=5) for a, q in items]
    assert batcher.batches_run - before < len(items)  # at least two requests shared a batch


def test_token_required(service):
    url, _ = service
    payload = {"audio_b64": encode_audio(clip(1.0, 440.0)), "question": "hi?"}
    assert httpx.post(f"{url}/v1/answer", json=payload, timeout=30).status_code == 401
    wrong = httpx.post(f"{url}/v1/answer", json=payload, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    with pytest.raises(ModelServiceError, match="TINYMU_TOKEN"):
        RemoteMusicLM(url, token="nope").answer(clip(1.0, 440.0), "hi?")


def test_bad_requests_are_caller_errors(service, client):
    url, _ = service
    bad = httpx.post(f"{url}/v1/answer", json={"audio_b64": "***", "question": "q"},
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert bad.status_code == 400 and "base64" in bad.json()["detail"]
    with pytest.raises(InputError, match="at most 129"):  # checked by the server's engine
        client.answer(clip(1.0, 440.0), "why " * 200)
    with pytest.raises(AudioTooShortError):  # checked by the client before sending
        client.answer(np.zeros(10, dtype=np.float32), "q?")
    assert client.answer(clip(1.0, 440.0), "still fine?", max_new_tokens=2)  # the service keeps working


def test_dead_service_fails_fast():
    remote = RemoteMusicLM(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=1, backoff_s=0.05)
    with pytest.raises(ModelServiceError, match="cannot reach"):
        remote.info()


def test_slow_service_times_out():
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        remote = RemoteMusicLM(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5, retries=0)
        with pytest.raises(ModelServiceError, match="did not answer within 0.5 s"):
            remote.info()
    finally:
        listener.close()


def test_toolbox_picks_the_remote_model_when_the_url_is_set(service, monkeypatch, tmp_path):
    from agent_tools.config import Settings
    from agent_tools.tools import MusicTools

    monkeypatch.setenv("TINYMU_URL", service[0])
    monkeypatch.setenv("TINYMU_TOKEN", TOKEN)
    model = MusicTools(Settings(cache_dir=tmp_path)).model
    assert isinstance(model, RemoteMusicLM)
    assert model.info().name == "TinyMU"


def test_cli_serves_the_model_in_a_subprocess():
    """`tinymu serve model` as a real process, reached over HTTP with a token."""
    import subprocess
    import sys

    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TINYMU_TOKEN": TOKEN, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-m", "agent_tools.cli", "serve", "model", "--checkpoint", "preset:tiny",
                             "--device", "cpu", "--port", str(port)], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        remote = RemoteMusicLM(url, token=TOKEN, timeout_s=120)
        assert remote.info().trained is False
        assert isinstance(remote.answer(clip(2.0, 440.0), "What is playing?", max_new_tokens=3), str)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_public_bind_without_token_is_refused(monkeypatch):
    from model.service.server import serve_model

    with pytest.raises(ValueError, match="without a token"):
        serve_model(host="0.0.0.0", token=None)
