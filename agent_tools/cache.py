"""Result cache: analyses keyed by audio content, answered from memory or disk.

A key is (content sha256 of the analysed audio window, analysis kind, its
parameters, code version), so the same audio sent as a path, a URL or a data
URI hits the same entry, and a code change that alters results
(`model.dsp.ANALYSIS_VERSION`) never serves stale answers. Entries live in an
in-memory LRU and as JSON files under `<cache_dir>/<sha256[:2]>/<sha256>/`,
which also lets a server list everything known about one recording.

The disk is a convenience, never a reason to fail a call: the directory is
checked when the cache is made (an unusable one leaves the cache memory-only,
with `warning` saying why), a failed write is logged and its temp file removed,
and an entry whose checksum does not match its result (damaged or edited) is a
miss, recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from model.dsp.analyzer import ANALYSIS_VERSION

Model = TypeVar("Model", bound=BaseModel)

log = logging.getLogger("tinymu.cache")
STALE_TEMP_S = 3600  # temp files older than this are leftovers of a crashed or failed write


class CachedEntry(BaseModel):
    """One stored analysis of a recording."""

    kind: str
    params: dict
    version: str
    result: dict
    checksum: str | None = None  # sha256 of the result's canonical JSON; entries without one are not trusted

    @staticmethod
    def digest(result: dict) -> str:
        return hashlib.sha256(json.dumps(result, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def intact(self) -> bool:
        return self.checksum is not None and self.checksum == self.digest(self.result)


class ResultCache:
    """In-memory LRU in front of a JSON-file store; thread-safe. `directory=None` keeps it in memory only."""

    def __init__(self, directory: str | Path | None = None, max_items: int = 256, version: str = ANALYSIS_VERSION):
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.max_items = max_items
        self.version = version
        self.warning: str | None = None  # why the cache is memory-only although a directory was given
        if self.directory is not None:
            self._check_directory()
        # key -> (sha256, CachedEntry metadata label, result); the label lets `analyses` list memory-only entries
        self._memory: OrderedDict[str, tuple[str, str, BaseModel]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, kind: str, sha256: str, params: dict | None = None) -> str:
        blob = json.dumps([self.version, kind, sha256, params or {}], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, kind: str, sha256: str, params: dict | None, model_cls: type[Model],
            memory_only: bool = False) -> Model | None:
        """The cached result, or None; `memory_only` never reads the disk (a lookup that must not block)."""
        key = self.key(kind, sha256, params)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key][2].model_copy(deep=True)
        if memory_only:
            return None
        path = self._path(kind, sha256, key)
        if path is None or not path.is_file():
            return None
        try:
            entry = CachedEntry.model_validate_json(path.read_text())
            if not entry.intact:
                log.warning("cache entry %s does not match its checksum; recomputing it", path)
                return None
            value = model_cls.model_validate(entry.result)
        except (OSError, ValueError):
            return None  # a damaged or outdated file is a miss; it is overwritten on the next put
        self._remember(key, sha256, _label(kind, params), value)
        return value.model_copy(deep=True)

    def put(self, kind: str, sha256: str, params: dict | None, value: BaseModel) -> None:
        key = self.key(kind, sha256, params)
        self._remember(key, sha256, _label(kind, params), value.model_copy(deep=True))
        path = self._path(kind, sha256, key)
        if path is None:
            return
        result = value.model_dump(mode="json")
        entry = CachedEntry(kind=kind, params=params or {}, version=self.version, result=result,
                            checksum=CachedEntry.digest(result))
        self._write(path, entry.model_dump_json())

    def _write(self, path: Path, text: str) -> None:
        """Write then rename, so a concurrent reader never sees half a file; a failure (read-only, full
        disk) is logged and cleaned up, never raised: the result is still in memory and returned."""
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
                tmp_name = tmp.name
                tmp.write(text)
            os.replace(tmp_name, path)
        except OSError as exc:
            log.warning("could not store a cache entry in %s (%s); the result is kept in memory only",
                        path.parent, exc)
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)

    def get_or_compute(
        self, kind: str, sha256: str, params: dict | None, model_cls: type[Model], compute: Callable[[], Model]
    ) -> Model:
        """The cached result, or `compute()` stored and returned."""
        cached = self.get(kind, sha256, params, model_cls)
        if cached is not None:
            return cached
        value = compute()
        self.put(kind, sha256, params, value)
        return value

    def entries(self, sha256: str) -> list[CachedEntry]:
        """Every stored analysis (of this code version) of the audio with this content hash."""
        if self.directory is None:
            return []
        folder = self.directory / sha256[:2] / sha256
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                entry = CachedEntry.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
            if entry.version == self.version and entry.intact:
                found.append(entry)
        return found

    def analyses(self, sha256: str) -> dict[str, CachedEntry]:
        """Every cached analysis of this audio, by label ('analysis', 'key', 'tempo {"x": 1}' ...)."""
        found = {_label(e.kind, e.params): e for e in self.entries(sha256)}
        with self._lock:
            for sha, label, value in self._memory.values():
                if sha == sha256 and label not in found:
                    kind = label.split(" ", 1)[0]
                    params = json.loads(label.split(" ", 1)[1]) if " " in label else {}
                    found[label] = CachedEntry(kind=kind, params=params, version=self.version,
                                               result=value.model_dump(mode="json"))
        return found

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    def _check_directory(self) -> None:
        """Make sure entries can be written; otherwise say why and keep results in memory only."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp") as probe:
                probe.write("probe")
                probe.flush()
        except OSError as exc:
            reason = "it is a file, not a folder" if self.directory.is_file() else (exc.strerror or str(exc))
            self.warning = (f"the cache directory {self.directory} is not usable ({reason}); results are "
                            "cached in memory only. Set TINYMU_CACHE_DIR (or --cache-dir) to a writable folder.")
            log.warning(self.warning)
            self.directory = None
            return
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Temp files left by writes that died half-way (older than an hour, so no live write is touched)."""
        cutoff = time.time() - STALE_TEMP_S
        for tmp in self.directory.glob("*/*/*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass

    def _remember(self, key: str, sha256: str, label: str, value: BaseModel) -> None:
        with self._lock:
            self._memory[key] = (sha256, label, value)
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)

    def _path(self, kind: str, sha256: str, key: str) -> Path | None:
        if self.directory is None:
            return None
        if not all(c in "0123456789abcdef" for c in sha256) or not kind.replace("_", "").isalnum():
            raise ValueError("cache keys take a hex sha256 and an alphanumeric analysis kind")
        return self.directory / sha256[:2] / sha256 / f"{kind}-{key}.json"


def _label(kind: str, params: dict | None) -> str:
    return f"{kind} {json.dumps(params, sort_keys=True)}" if params else kind
