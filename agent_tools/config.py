"""Settings: every knob of the tools, the servers and the model, in one place.

One `Settings` object configures the toolbox (`agent_tools.tools.MusicTools`), the
MCP server, the LangChain toolkit and the model the tools load. Each field is read
from the environment variable `TINYMU_<FIELD>` (e.g. `TINYMU_CACHE_DIR`,
`TINYMU_MAX_CONCURRENCY`); command-line flags override them through
`with_overrides`. Nothing below the front ends reads the environment: the model
and DSP layers get plain arguments from here.

Paths expand `~`; bad values fail at start with a message that names the variable
and says what it expects (`SettingsError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.audio import AudioLimits
from model.dsp.analyzer import LONGEST_WHOLE_ANALYSIS_S

MiB = 1024 * 1024
ENV_PREFIX = "TINYMU_"


class SettingsError(ValueError):
    """A setting (environment variable or flag) has a value the tools cannot use."""


def _default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tinymu")) / "results"


def _split_paths(value: Any) -> Any:
    """TINYMU_ROOTS holds folders joined by the OS path separator (':' on Unix)."""
    if isinstance(value, str):
        return tuple(Path(part) for part in value.split(os.pathsep) if part.strip())
    return value


def _split_words(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


PathList = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_split_paths)]
WordList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_words)]


class Settings(BaseSettings):
    """Configuration shared by every front end (MCP, LangChain, CLI) and passed down to the model."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore",
                                      arbitrary_types_allowed=True, protected_namespaces=())

    # -- what the tools may read
    roots: PathList = Field((), description="Folders whose files the tools may read (joined by ':'); "
                                            "empty: the directory the process started in.")
    allow_urls: bool = Field(False, description="Let tools fetch URLs at all (public addresses only).")
    url_schemes: WordList = Field(("https",), description="URL schemes accepted when URLs are allowed.")
    url_trusted_hosts: WordList = Field((), description="'host' or 'host:port' entries exempt from the "
                                                        "public-address check (e.g. a media server on the LAN).")
    max_url_bytes: int = Field(50 * MiB, gt=0, description="Largest download, bytes.")
    url_timeout_s: float = Field(20.0, gt=0, description="Download timeout, seconds.")
    max_redirects: int = Field(5, ge=0, description="Redirects followed per download (each one re-checked).")
    max_data_uri_bytes: int = Field(20 * MiB, gt=0, description="Largest decoded data: URI, bytes.")
    max_audio_mb: float = Field(100.0, gt=0, description="Largest audio file, MB.")
    max_duration_s: float = Field(20 * 60.0, gt=0, description="Longest window analysed, seconds.")
    min_duration_s: float = Field(1.0, gt=0, description="Shortest window analysed, seconds.")
    # 2 GB: the analysis of any window up to max_duration_s fits (long clips are analysed in
    # windows, about 1.4 GB at most); refused before decoding when the header says it would not.
    max_call_memory_mb: float = Field(2048.0, gt=0, description="Memory one call's audio may cost (decoding plus "
                                                                "madmom's analysis, estimated from the file header "
                                                                "before decoding), MB; "
                                                                "the whole server's is bounded by server_memory_mb.")
    # Two long analyses at once reached about 3 GB with per-call budgets alone: calls reserve their estimate
    # against this before decoding and analysing, and wait while it would be exceeded.
    server_memory_mb: float = Field(2048.0, gt=0, description="Memory the whole server may hold (its process, its "
                                                              "DSP worker processes and every call in flight), MB; "
                                                              "calls wait for memory rather than exceed it.")

    # -- where results go, how much runs at once
    cache_dir: Path = Field(default_factory=_default_cache_dir,
                            description="Cached analyses, plots and folder indexes (default: the user cache).")
    call_timeout_s: float = Field(300.0, gt=0, description="Per tool call, enforced by the servers.")
    max_concurrency: int = Field(2, ge=1, description="Heavy computations (madmom, the model) at once; "
                                                      "cache hits never wait.")
    dsp_workers: int = Field(0, ge=0, description="0: madmom runs in the calling thread; N: in N worker processes.")
    cache_lookup_timeout_s: float = Field(5.0, gt=0, description="A cache lookup (opening the file under the roots "
                                                                   "and checking memory) longer than this is refused "
                                                                   "with a reason, seconds: a hung file system.")
    preload_model: bool = Field(True, description="Servers load the model in the background at start.")

    # -- the model: embedded (checkpoint, device, ...) or a remote service (url, token)
    checkpoint: str | None = Field(None, description="TinyMU weights: a .safetensors file or folder, an "
                                                     "official tinymu.pt, hf:AndreasXi/TinyMU (the official release, "
                                                     "downloaded once), or preset:NAME; default: the shipped one.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the embedded model runs.")
    quantize: Literal["auto", "int8", "none"] = Field("auto", description="auto: int8 decoder weights on a CPU.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads for the embedded model.")
    weights_dir: Path | None = Field(None, description="Where converted SmolLM2 weights are kept "
                                                       "(default: the user cache).")
    model_url: str | None = Field(None, validation_alias=AliasChoices("model_url", "TINYMU_URL", "TINYMU_MODEL_URL"),
                                  description="A TinyMU model service (tinymu serve model) instead of the "
                                              "embedded model. Env: TINYMU_URL.")
    model_token: str | None = Field(None, validation_alias=AliasChoices("model_token", "TINYMU_TOKEN",
                                                                        "TINYMU_MODEL_TOKEN"),
                                    description="Bearer token of the model service. Env: TINYMU_TOKEN.")
    model_timeout_s: float = Field(60.0, gt=0, description="Per request to the model service, seconds "
                                                           "(its own, shorter than the call timeout).")

    @field_validator("cache_dir", "weights_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("roots", mode="after")
    @classmethod
    def _expand_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(Path(root).expanduser() for root in value)

    @field_validator("model_url", "model_token", "checkpoint", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def audio_limits(self) -> AudioLimits:
        return AudioLimits(max_bytes=int(self.max_audio_mb * MiB), max_duration_s=self.max_duration_s,
                           min_duration_s=self.min_duration_s, max_memory_bytes=int(self.max_call_memory_mb * MiB),
                           analysis_cap_s=LONGEST_WHOLE_ANALYSIS_S)

    @property
    def http_body_bytes(self) -> int:
        """The largest HTTP request body the MCP server accepts: a data: URI of max_data_uri_bytes
        (base64 is 4/3 of the bytes) plus room for the rest of the request, so the advertised
        inline-audio limit is the real one."""
        return self.max_data_uri_bytes * 4 // 3 + MiB

    @property
    def quantize_weights(self) -> str | None:
        """The engine's quantize argument: None for float weights ("auto" is decided by the engine's device)."""
        return None if self.quantize == "none" else self.quantize

    def allowed_roots(self) -> tuple[Path, ...]:
        """The resolved root directories (the current working directory when none is configured)."""
        roots = self.roots or (Path.cwd(),)
        return tuple(Path(root).expanduser().resolve() for root in roots)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced, validated again; None values are ignored (CLI flags)."""
        given = {key: value for key, value in changes.items() if value is not None}
        if not given:
            return self
        return type(self).from_values({**self.model_dump(), **given})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Settings:
        """Settings from `values`; fields they leave out come from the environment."""
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(describe(error)) from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from the TINYMU_* variables of `environ` (default: the process environment)."""
        if environ is None:
            try:
                return cls()
            except ValidationError as error:
                raise SettingsError(describe(error)) from None
        values = {}
        for name, field in cls.model_fields.items():  # every field given, so the process environment is not read
            given = [environ[variable] for variable in env_names(name) if variable in environ]
            values[name] = given[0] if given else field.get_default(call_default_factory=True)
        return cls.from_values(values)

    @classmethod
    def reference(cls) -> str:
        """Every setting with its environment variable, default and meaning (a Markdown table)."""
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            env = env_names(name)[0]
            default = "user cache" if field.default_factory else field.default
            if isinstance(default, tuple):
                default = ",".join(map(str, default)) or "(none)"
            rows.append(f"| `{env}` | `{default}` | {field.description} |")
        return "\n".join(rows)


def env_names(field: str) -> list[str]:
    """The environment variables a field is read from, the documented one first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str) and choice.startswith(ENV_PREFIX)]
    return [ENV_PREFIX + field.upper()]


def describe(error: ValidationError) -> str:
    """One line per bad setting: which variable, what it got, what it expects."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        env = env_names(name)[0] if name in Settings.model_fields else name
        got = problem.get("input")
        lines.append(f"{env}={got!r}: {problem['msg']}" if not isinstance(got, dict) else f"{env}: {problem['msg']}")
    return "invalid settings: " + "; ".join(lines)
