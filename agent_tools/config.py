"""Settings of the agent tools: what a server may read, how much, and how long it may take.

One `Settings` object configures the toolbox (`agent_tools.tools.MusicTools`), the
MCP server and the LangChain toolkit alike. `Settings.from_env()` reads the
`TINYMU_*` environment variables; command-line flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent_tools.cache import default_cache_dir
from model.audio import AudioLimits

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every tool front end (MCP, LangChain, CLI).

    roots: directories whose files the tools may read. Empty means "the working
        directory the process was started in" (see `allowed_roots`).
    allow_urls: whether `https://` URLs may be fetched at all (off by default).
    url_schemes: URL schemes accepted when URLs are allowed; https only by default.
    url_trusted_hosts: "host" or "host:port" entries exempt from the public-address
        check (e.g. a media server on the LAN). Empty by default: every URL must
        resolve to public internet addresses only.
    """

    roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    url_schemes: tuple[str, ...] = ("https",)
    url_trusted_hosts: tuple[str, ...] = ()
    max_url_bytes: int = 50 * MiB
    url_timeout_s: float = 20.0
    max_redirects: int = 5
    max_data_uri_bytes: int = 20 * MiB  # decoded bytes of a data: URI
    audio_limits: AudioLimits = field(default_factory=AudioLimits)
    cache_dir: Path = field(default_factory=default_cache_dir)  # $TINYMU_CACHE_DIR or the user cache
    model_url: str | None = None  # TINYMU_URL: a remote model service instead of the embedded model
    model_token: str | None = None  # TINYMU_TOKEN: its bearer token
    call_timeout_s: float = 300.0  # per tool call, enforced by the servers
    max_concurrency: int = 2  # heavy computations (madmom, the model) at once; cache hits never wait
    dsp_workers: int = 0  # 0: madmom runs in the calling thread; N: in N worker processes (servers)

    def allowed_roots(self) -> tuple[Path, ...]:
        """The resolved root directories (the current working directory when none is configured)."""
        roots = self.roots or (Path.cwd(),)
        return tuple(Path(root).expanduser().resolve() for root in roots)

    def with_overrides(self, **changes) -> Settings:
        """A copy with the given fields replaced; None values are ignored (handy for CLI flags)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from TINYMU_* environment variables; unset ones keep their defaults.

        TINYMU_ROOTS (paths joined by the OS path separator), TINYMU_ALLOW_URLS (1/true),
        TINYMU_CACHE_DIR, TINYMU_URL, TINYMU_TOKEN, TINYMU_CALL_TIMEOUT_S,
        TINYMU_MAX_CONCURRENCY, TINYMU_DSP_WORKERS, TINYMU_MAX_DURATION_S, TINYMU_MAX_AUDIO_MB.
        """
        env = os.environ if environ is None else environ
        defaults = cls()
        limits = defaults.audio_limits
        if "TINYMU_MAX_DURATION_S" in env:
            limits = replace(limits, max_duration_s=float(env["TINYMU_MAX_DURATION_S"]))
        if "TINYMU_MAX_AUDIO_MB" in env:
            limits = replace(limits, max_bytes=int(float(env["TINYMU_MAX_AUDIO_MB"]) * MiB))
        roots = tuple(Path(p) for p in env.get("TINYMU_ROOTS", "").split(os.pathsep) if p.strip())
        return cls(
            roots=roots,
            allow_urls=env.get("TINYMU_ALLOW_URLS", "").strip().lower() in {"1", "true", "yes", "on"},
            audio_limits=limits,
            cache_dir=Path(env["TINYMU_CACHE_DIR"]) if env.get("TINYMU_CACHE_DIR") else defaults.cache_dir,
            model_url=env.get("TINYMU_URL") or None,
            model_token=env.get("TINYMU_TOKEN") or None,
            call_timeout_s=float(env.get("TINYMU_CALL_TIMEOUT_S", defaults.call_timeout_s)),
            max_concurrency=int(env.get("TINYMU_MAX_CONCURRENCY", defaults.max_concurrency)),
            dsp_workers=int(env.get("TINYMU_DSP_WORKERS", defaults.dsp_workers)),
        )
