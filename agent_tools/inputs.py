"""Turn the one `audio` string a tool receives into something `model.audio.load_audio` can read.

Three forms are accepted:

- a file path: absolute, or relative to the first configured root. Symlinks and
  `..` are resolved first and the real file must lie under an allowed root, so a
  link inside a root that points elsewhere is refused. The file is then opened
  once, component by component from the root's descriptor with O_NOFOLLOW, and
  checked with fstat on the opened descriptor; the audio is read from that
  descriptor only, so swapping a folder for a symlink between the check and the
  read cannot redirect the read outside the root;
- an `https://` URL, only when the settings allow URLs. Every connection (the
  first request and each redirect) is checked at connect time: the host name is
  resolved and the connection is made only to the vetted IP address, refusing
  loopback, private, link-local and other non-public addresses (this also
  defeats DNS rebinding). Redirects are followed by hand, a bounded number of
  times, and the download stops at a byte cap;
- a `data:audio/...;base64,...` URI, up to a size cap.

Every refusal is a typed `InputError` whose message tells the caller what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from agent_tools.config import Settings
from model.errors import (
    AccessDeniedError,
    AudioNotFoundError,
    AudioTooLargeError,
    InputError,
    NotAFileError,
    UnsupportedAudioError,
)

# NAT64 (RFC 6052) embeds an IPv4 address in the last 32 bits of 64:ff9b::/96.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Longest `audio` string taken as a path (Linux PATH_MAX); anything longer is a mistake, e.g. base64 without "data:".
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class ResolvedAudio:
    """Where the audio of one tool call comes from.

    `source` is the vetted real `Path` or the downloaded/decoded bytes; `origin` is
    "file", "url" or "data"; `label` names it in results (a path, a URL, or
    "data URI (N bytes)"). For a file, `file` is the descriptor opened under the
    root: read the audio from `readable` (never by the path again), then `close()`.
    """

    source: Path | bytes
    origin: str
    label: str
    file: BinaryIO | None = None

    @property
    def readable(self) -> BinaryIO | bytes | Path:
        return self.file if self.file is not None else self.source

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def audio_kind(audio: str) -> str:
    """What an `audio` argument names: "data" (a data: URI), "url" (anything with a scheme) or "file"."""
    audio = audio.strip()
    if audio.lower().startswith("data:"):
        return "data"
    return "url" if "://" in audio else "file"


def resolve_audio(audio: str, settings: Settings) -> ResolvedAudio:
    """Resolve the `audio` argument of a tool call, enforcing the settings' access rules."""
    if not isinstance(audio, str) or not audio.strip():
        raise InputError(
            "audio is empty. Pass an absolute file path under the allowed roots, "
            "a data:audio/...;base64,... URI" + (", or an https:// URL." if settings.allow_urls else ".")
        )
    audio = audio.strip()
    kind = audio_kind(audio)
    if kind == "data":
        return _decode_data_uri(audio, settings)
    if kind == "url":
        return _download(audio, settings)
    if len(audio) > MAX_PATH_CHARS:
        raise InputError(
            f"audio is {len(audio)} characters long, too long for a file path (at most {MAX_PATH_CHARS}). "
            "Send audio bytes as data:audio/<format>;base64,<data>, or pass a file path."
        )
    real, opened = open_under_roots(audio, settings)
    return ResolvedAudio(source=real, origin="file", label=audio, file=opened)


# --- local files -----------------------------------------------------------------


def resolve_path(path: str | Path, settings: Settings) -> Path:
    """The real path of `path` if it lies under an allowed root; AccessDeniedError otherwise.

    Relative paths are taken relative to the first root. Containment is checked
    on the fully resolved path (symlinks followed, `..` removed), before anything
    is revealed about whether the file exists.
    """
    real, _ = _resolve_under_roots(path, settings)
    return real


def _resolve_under_roots(path: str | Path, settings: Settings) -> tuple[Path, Path]:
    """(the real path, the root it lies under), or the refusal that says why not."""
    if "\0" in str(path):
        raise InputError(f"{str(path)!r}: a path cannot contain a NUL byte; pass the file's real path.")
    roots = settings.allowed_roots()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = candidate.resolve(strict=False)
    except RuntimeError as exc:  # Python 3.11 reports a symlink loop this way
        raise InputError(f"{path}: a symbolic link loop ({exc}); pass the path of a real file.") from None
    except OSError as exc:
        raise _os_refusal(path, exc) from None
    for root in roots:
        if real.is_relative_to(root):
            return real, root
    raise AccessDeniedError(
        f"{path}: outside the folders this server may read. Allowed roots are: "
        f"{', '.join(str(r) for r in roots)}. Pass a file under one of them (symlinks and '..' are "
        "resolved before this check), send the audio as a data: URI, or restart the server with --roots."
    )


def open_under_roots(path: str | Path, settings: Settings) -> tuple[Path, BinaryIO]:
    """Open the regular file `path` under an allowed root for reading, without a check-then-use race.

    The path is resolved and checked as in `resolve_path`; then it is opened one component at
    a time from the root's directory descriptor, each with O_NOFOLLOW, so a component that became
    a symlink after the check makes the open fail instead of leaving the root. The opened
    descriptor is checked with fstat (a regular file) and is the only thing read afterwards.
    Returns the real path (for display) and the open file.
    """
    real, root = _resolve_under_roots(path, settings)
    parts = real.relative_to(root).parts
    if not parts:
        raise NotAFileError(f"{path}: is a directory, not an audio file. Pass the path of one audio file.")
    nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for part in parts[:-1]:
            parent, fd = fd, None
            try:
                fd = os.open(part, nofollow | os.O_DIRECTORY, dir_fd=parent)
            finally:
                os.close(parent)
        parent, fd = fd, None
        try:
            # O_NONBLOCK: opening a FIFO must not hang the call; fstat refuses it right after.
            fd = os.open(parts[-1], nofollow | os.O_NONBLOCK, dir_fd=parent)
        finally:
            os.close(parent)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAFileError(f"{path}: is a directory or special file, not an audio file. "
                                "Pass the path of one audio file.")
        os.set_blocking(fd, True)
        opened = os.fdopen(fd, "rb")
        fd = None
        return real, opened
    except OSError as exc:
        raise _os_refusal(path, exc) from None
    finally:
        if fd is not None:
            os.close(fd)


def _os_refusal(path: str | Path, exc: OSError) -> InputError:
    """An operating-system error while opening a path, as a refusal that says what to change."""
    if exc.errno == errno.ENOENT:
        return AudioNotFoundError(f"{path}: no such file. Check the path (absolute, or relative to the first "
                                  "allowed root).")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return AccessDeniedError(f"{path}: a part of the path is (or just became) a symbolic link or is not a "
                                 "folder, so it is not opened. Pass the file's real path under an allowed root.")
    if exc.errno == errno.EINVAL:  # resolving raced with a symlink being swapped in or out
        return AccessDeniedError(f"{path}: the path changed while it was being opened (a symbolic link appeared "
                                 "or disappeared), so it is not read. Pass a path that is not being modified.")
    if exc.errno == errno.ENAMETOOLONG:
        return InputError(f"{path}: a file or folder name in this path is too long for the file system "
                          "(at most 255 bytes per name). Pass a shorter path.")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDeniedError(f"{path}: the server has no permission to read it. Make the file readable "
                                 "by the server's user, or send it as a data: URI.")
    if exc.errno == errno.EISDIR:
        return NotAFileError(f"{path}: is a directory, not an audio file. Pass the path of one audio file.")
    return InputError(f"{path}: cannot open it ({exc.strerror or exc}). Pass a readable audio file.")


# --- data: URIs --------------------------------------------------------------------


def _decode_data_uri(uri: str, settings: Settings) -> ResolvedAudio:
    header, comma, payload = uri.partition(",")
    media_type, *params = header[len("data:"):].split(";")
    media_type = media_type.strip().lower()
    if not comma or "base64" not in (p.strip().lower() for p in params):
        raise InputError(
            "Malformed data URI: expected 'data:audio/<format>;base64,<base64 data>' "
            "(e.g. data:audio/wav;base64,UklGR...)."
        )
    if not (media_type.startswith("audio/") or media_type == "application/octet-stream"):
        raise UnsupportedAudioError(
            f"The data URI has media type {media_type or '(none)'!r}; send audio as data:audio/wav;base64,... "
            "(or audio/flac, audio/ogg, audio/mpeg)."
        )
    payload = "".join(payload.split())  # tolerate line-wrapped base64
    approx_bytes = len(payload) * 3 // 4
    if approx_bytes > settings.max_data_uri_bytes:
        raise AudioTooLargeError(
            f"The data URI holds about {approx_bytes / 1e6:.1f} MB, above the {settings.max_data_uri_bytes / 1e6:.1f} MB "
            "limit for inline audio. Send a shorter excerpt, a compressed format (flac, ogg, mp3), or a file path."
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedAudioError(f"The data URI is not valid base64 ({exc}); encode the file bytes with base64.") from exc
    return ResolvedAudio(source=data, origin="data", label=f"data URI ({len(data)} bytes, {media_type})")


# --- URLs --------------------------------------------------------------------------


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses, including the IPv4 hidden inside IPv6 forms."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(v4 is None or (v4.is_global and not v4.is_multicast) for v4 in embedded)
    return True


def _is_trusted(host: str, port: int, settings: Settings) -> bool:
    host = host.strip("[]").lower()
    return host in settings.url_trusted_hosts or f"{host}:{port}" in settings.url_trusted_hosts


def _refusal(url_host: str, address: str) -> AccessDeniedError:
    return AccessDeniedError(
        f"URL host {url_host!r} resolves to {address}, which is not a public internet address "
        "(loopback, private, link-local and similar addresses are refused to protect the server's network). "
        "Use a public https URL, or pass the file as a path or a data: URI."
    )


def vetted_addresses(host: str, port: int, settings: Settings) -> list[str]:
    """Resolve `host` and return its addresses if every one of them may be contacted; refuse otherwise."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"Cannot resolve the URL host {host!r} ({exc}); check the URL.") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not _is_trusted(bare, port, settings):
        for address in addresses:
            if not is_public_address(address):
                raise _refusal(host, address)
    return addresses


class _VettingBackend(httpcore.NetworkBackend):
    """Connects only to addresses that pass the public-address check, resolving names itself.

    Checking at connect time (rather than once before the request) means the IP
    that was vetted is the IP that is used, for the first request and for every
    redirect, so a host whose DNS answer changes between check and use cannot
    steer the download to an internal address.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = vetted_addresses(host, port, self._settings)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"no address to connect to for {host}")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise AccessDeniedError("Unix sockets are never used for audio URLs.")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _guarded_client(settings: Settings) -> httpx.Client:
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx offers no public hook for the network backend, so swap the pool for one
    # with the vetting backend; TLS still verifies certificates and SNI against the host name.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=4,
        network_backend=_VettingBackend(settings),
    )
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,  # never let proxy variables route around the checks
        timeout=httpx.Timeout(settings.url_timeout_s, connect=min(10.0, settings.url_timeout_s)),
        headers={"User-Agent": "tinymu-agent-tools (audio fetch)"},
    )


def _check_url(url: str, settings: Settings) -> None:
    """Refuse a URL before any connection: disabled URLs, wrong scheme, literal non-public IPs."""
    if not settings.allow_urls:
        raise AccessDeniedError(
            "This server does not fetch URLs (off by default). Pass a file path under the allowed roots, "
            "or send the audio as a data:audio/...;base64,... URI; the operator can enable URLs with --allow-urls."
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed = ", ".join(f"{s}://" for s in settings.url_schemes)
    if scheme not in settings.url_schemes:
        raise AccessDeniedError(f"{scheme}:// URLs are not accepted; only {allowed} URLs are. Use an {allowed} URL.")
    host = parts.hostname
    if not host:
        raise InputError(f"The URL {url!r} has no host name; pass a full {allowed} URL.")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise InputError(f"The URL {url!r} has an invalid port ({exc}).") from exc
    if parts.username or parts.password:
        raise AccessDeniedError("URLs with embedded credentials are refused; use a public URL without user:password@.")
    vetted_addresses(host, port, settings)  # early, clear refusal; enforced again at connect time


def _download(url: str, settings: Settings) -> ResolvedAudio:
    _check_url(url, settings)
    cap = settings.max_url_bytes
    current = url
    with _guarded_client(settings) as client:
        for _ in range(settings.max_redirects + 1):
            try:
                with client.stream("GET", current) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InputError(f"{current}: redirect without a Location header.")
                        current = urljoin(current, location)
                        _check_url(current, settings)
                        continue
                    if response.status_code != 200:
                        raise InputError(
                            f"{current}: the server answered HTTP {response.status_code}; check that the URL "
                            "points at an audio file that is publicly downloadable."
                        )
                    return ResolvedAudio(source=_read_capped(response, cap, current), origin="url", label=url)
            except httpx.TimeoutException as exc:
                raise InputError(
                    f"{current}: download timed out after {settings.url_timeout_s:g} s; try a smaller file or a faster host."
                ) from exc
            except httpx.HTTPError as exc:
                raise InputError(f"{current}: download failed ({type(exc).__name__}: {exc}).") from exc
    raise InputError(f"{url}: more than {settings.max_redirects} redirects; pass the final URL of the audio file.")


def _read_capped(response: httpx.Response, cap: int, url: str) -> bytes:
    too_big = AudioTooLargeError(
        f"{url}: the file is larger than the {cap / 1e6:.1f} MB download limit; "
        "link a shorter excerpt or a compressed format (flac, ogg, mp3)."
    )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
