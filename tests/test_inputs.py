"""The `audio` argument: paths under roots, data URIs, and the SSRF-guarded URL fetcher.

URL tests run a real HTTP server on 127.0.0.1. Plain http and that one
host:port are allowed only through explicit settings (`url_schemes`,
`url_trusted_hosts`), which is exactly how an operator would allow a LAN media
server; everything else still goes through the public-address check.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent_tools.config import Settings
from agent_tools.inputs import is_public_address, resolve_audio, resolve_path
from model.audio import load_audio
from model.errors import (
    AccessDeniedError,
    AudioTooLargeError,
    InputError,
    UnsupportedAudioError,
)


def wav_bytes(seconds: float = 1.5, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


WAV = wav_bytes()


# --- paths ---------------------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path: Path):
    root = tmp_path / "music"
    outside = tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "song.wav").write_bytes(WAV)
    (outside / "secret.wav").write_bytes(WAV)
    (root / "link_out.wav").symlink_to(outside / "secret.wav")
    (root / "link_in.wav").symlink_to(root / "song.wav")
    return root, outside


def test_path_under_root_resolves_and_decodes(tree):
    root, _ = tree
    settings = Settings(roots=(root,))
    resolved = resolve_audio(str(root / "song.wav"), settings)
    assert resolved.origin == "file" and resolved.source == (root / "song.wav").resolve()
    assert load_audio(resolved.source).duration_s == pytest.approx(1.5, abs=0.01)
    # Relative paths are taken relative to the first root.
    assert resolve_audio("song.wav", settings).source == (root / "song.wav").resolve()
    # A symlink that stays inside the root is fine.
    assert resolve_path(root / "link_in.wav", settings) == (root / "song.wav").resolve()


@pytest.mark.parametrize(
    "make_path",
    [
        lambda root, outside: outside / "secret.wav",  # plainly outside
        lambda root, outside: root / ".." / "private" / "secret.wav",  # .. traversal
        lambda root, outside: root / "link_out.wav",  # symlink inside pointing outside
        lambda root, outside: "../private/secret.wav",  # relative traversal
        lambda root, outside: "/etc/passwd",
    ],
)
def test_paths_outside_roots_are_refused_with_the_roots_named(tree, make_path):
    root, outside = tree
    with pytest.raises(AccessDeniedError) as info:
        resolve_audio(str(make_path(root, outside)), Settings(roots=(root,)))
    message = str(info.value)
    assert "Allowed roots are: " + str(root.resolve()) in message and "--roots" in message


def test_missing_file_outside_roots_does_not_reveal_existence(tree):
    root, outside = tree
    settings = Settings(roots=(root,))
    refusals = set()
    for name in ("secret.wav", "nothing-here.wav"):
        with pytest.raises(AccessDeniedError) as info:
            resolve_audio(str(outside / name), settings)
        refusals.add(str(info.value).replace(name, "X"))
    assert len(refusals) == 1


def test_default_root_is_the_working_directory(tree, monkeypatch):
    root, outside = tree
    monkeypatch.chdir(root)
    settings = Settings()
    assert settings.allowed_roots() == (root.resolve(),)
    assert resolve_audio("song.wav", settings).source == (root / "song.wav").resolve()
    with pytest.raises(AccessDeniedError):
        resolve_audio(str(outside / "secret.wav"), settings)


def test_empty_audio_argument():
    with pytest.raises(InputError, match="audio is empty"):
        resolve_audio("  ", Settings())


# --- data URIs -----------------------------------------------------------------------


def data_uri(payload: bytes, media_type: str = "audio/wav") -> str:
    return f"data:{media_type};base64," + base64.b64encode(payload).decode()


def test_data_uri_decodes_to_the_same_bytes():
    resolved = resolve_audio(data_uri(WAV), Settings())
    assert resolved.origin == "data" and resolved.source == WAV
    assert f"{len(WAV)} bytes" in resolved.label
    assert load_audio(resolved.source).sample_rate == 22050


def test_data_uri_size_cap_applies_before_decoding():
    with pytest.raises(AudioTooLargeError, match="limit for inline audio"):
        resolve_audio(data_uri(WAV), Settings(max_data_uri_bytes=len(WAV) // 2))


@pytest.mark.parametrize(
    "uri, error, text",
    [
        ("data:text/plain;base64,aGVsbG8=", UnsupportedAudioError, "media type 'text/plain'"),
        ("data:audio/wav;base64,@@not base64@@", UnsupportedAudioError, "not valid base64"),
        ("data:audio/wav,rawbytes", InputError, "Malformed data URI"),
    ],
)
def test_bad_data_uris(uri, error, text):
    with pytest.raises(error, match=text):
        resolve_audio(uri, Settings())


# --- URLs ----------------------------------------------------------------------------


def test_public_address_classification():
    public = ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    private = [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 wrapping 127.0.0.1
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    ]
    assert all(is_public_address(a) for a in public)
    assert not any(is_public_address(a) for a in private)


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []
    redirect_target = ""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        _Handler.hits.append(self.path)
        if self.path == "/audio.wav":
            self._send(WAV)
        elif self.path == "/big.wav":
            self._send(b"\0" * 300_000)
        elif self.path == "/big-chunked.wav":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(30):
                chunk = b"\0" * 10_000
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow.wav":
            time.sleep(1.5)
            self._send(WAV)
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the byte-cap tests hang up mid-download on purpose


@pytest.fixture(scope="module")
def http_server():
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture()
def hits():
    _Handler.hits.clear()
    return _Handler.hits


def lan_settings(port: int, **overrides) -> Settings:
    """URLs on, plain http allowed, and only 127.0.0.1:port trusted (a 'LAN media server')."""
    return Settings(
        allow_urls=True, url_schemes=("https", "http"), url_trusted_hosts=(f"127.0.0.1:{port}",), **overrides
    )


def test_urls_are_off_by_default():
    with pytest.raises(AccessDeniedError, match="--allow-urls"):
        resolve_audio("https://example.com/song.wav", Settings())


def test_plain_http_is_refused_when_only_https_is_allowed(http_server, hits):
    with pytest.raises(AccessDeniedError, match="only https:// URLs"):
        resolve_audio(f"http://127.0.0.1:{http_server}/audio.wav", Settings(allow_urls=True))
    assert hits == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "10.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "127.1"],
)
def test_non_public_hosts_are_refused_before_connecting(http_server, hits, host):
    # http is allowed here, so only the address check stands between the URL and our live server.
    settings = Settings(allow_urls=True, url_schemes=("https", "http"))
    with pytest.raises(AccessDeniedError, match="not a public internet address"):
        resolve_audio(f"http://{host}:{http_server}/audio.wav", settings)
    with pytest.raises(AccessDeniedError, match="not a public internet address"):
        resolve_audio(f"https://{host}/audio.wav", Settings(allow_urls=True))
    assert hits == []


def test_trusted_lan_host_downloads(http_server, hits):
    resolved = resolve_audio(f"http://127.0.0.1:{http_server}/audio.wav", lan_settings(http_server))
    assert resolved.origin == "url" and resolved.source == WAV
    assert hits == ["/audio.wav"]
    # Trust is per host:port; another port on the same host is still refused.
    with pytest.raises(AccessDeniedError):
        resolve_audio(f"http://127.0.0.1:{http_server + 1}/audio.wav", lan_settings(http_server))


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/audio.wav",  # same server, but under an untrusted name
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/audio.wav",
        "http://[::ffff:127.0.0.1]:{port}/audio.wav",
        "file:///etc/passwd",
    ],
)
def test_every_redirect_is_rechecked(http_server, hits, target):
    url = f"http://127.0.0.1:{http_server}/redirect?to=" + target.format(port=http_server)
    with pytest.raises(AccessDeniedError):
        resolve_audio(url, lan_settings(http_server))
    assert hits == [url.split(str(http_server), 1)[1]]  # only the redirect itself was fetched


def test_redirect_within_trusted_host_is_followed(http_server, hits):
    url = f"http://127.0.0.1:{http_server}/redirect?to=/audio.wav"
    assert resolve_audio(url, lan_settings(http_server)).source == WAV
    assert hits[-1] == "/audio.wav"


def test_redirect_loops_are_bounded(http_server, hits):
    with pytest.raises(InputError, match="more than 3 redirects"):
        resolve_audio(f"http://127.0.0.1:{http_server}/loop", lan_settings(http_server, max_redirects=3))
    assert len(hits) == 4


@pytest.mark.parametrize("path", ["/big.wav", "/big-chunked.wav"])
def test_download_byte_cap(http_server, path):
    with pytest.raises(AudioTooLargeError, match="download limit"):
        resolve_audio(f"http://127.0.0.1:{http_server}{path}", lan_settings(http_server, max_url_bytes=100_000))


def test_download_timeout(http_server):
    with pytest.raises(InputError, match="timed out"):
        resolve_audio(f"http://127.0.0.1:{http_server}/slow.wav", lan_settings(http_server, url_timeout_s=0.3))


def test_http_errors_are_actionable(http_server):
    with pytest.raises(InputError, match="HTTP 404"):
        resolve_audio(f"http://127.0.0.1:{http_server}/missing.wav", lan_settings(http_server))


def test_settings_from_env(tmp_path):
    env = {
        "TINYMU_ROOTS": f"{tmp_path}/a{__import__('os').pathsep}{tmp_path}/b",
        "TINYMU_ALLOW_URLS": "true",
        "TINYMU_CACHE_DIR": str(tmp_path / "cache"),
        "TINYMU_MAX_DURATION_S": "60",
        "TINYMU_URL": "http://gpu-host:8000",
        "TINYMU_DSP_WORKERS": "3",
    }
    settings = Settings.from_env(env)
    assert settings.roots == (tmp_path / "a", tmp_path / "b")
    assert settings.allow_urls and settings.cache_dir == tmp_path / "cache"
    assert settings.audio_limits.max_duration_s == 60 and settings.model_url == "http://gpu-host:8000"
    assert settings.dsp_workers == 3
    assert Settings.from_env({}).allow_urls is False
