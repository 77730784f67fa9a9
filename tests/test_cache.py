"""Result cache: memory LRU, disk store, keys, listing, and a repeated analyze answered from it."""

from __future__ import annotations

import pytest

from agent_tools.cache import ResultCache
from model.audio import load_audio
from model.dsp.results import ClipAnalysis, KeyResult, TempoResult

SHA = "ab" * 32


def tempo(bpm: float) -> TempoResult:
    return TempoResult(bpm=bpm, confidence=0.9, summary=f"Tempo {bpm:g} BPM.")


def test_memory_then_disk_then_listing(tmp_path):
    cache = ResultCache(tmp_path, max_items=2)
    calls = []
    compute = lambda: calls.append(1) or tempo(120.0)  # noqa: E731
    first = cache.get_or_compute("tempo", SHA, {}, TempoResult, compute)
    second = cache.get_or_compute("tempo", SHA, {}, TempoResult, compute)
    assert first == second == tempo(120.0) and len(calls) == 1
    # A new process (fresh memory) reads the same answer from disk.
    fresh = ResultCache(tmp_path)
    assert fresh.get("tempo", SHA, {}, TempoResult) == tempo(120.0)
    # Parameters and analysis kind are part of the key.
    assert fresh.get("tempo", SHA, {"min_bpm": 40}, TempoResult) is None
    assert fresh.get("key", SHA, {}, KeyResult) is None
    cache.put("tempo", SHA, {"min_bpm": 40}, tempo(60.0))
    assert fresh.get("tempo", SHA, {"min_bpm": 40}, TempoResult) == tempo(60.0)
    listed = fresh.analyses(SHA)
    assert set(listed) == {"tempo", 'tempo {"min_bpm": 40}'}
    assert listed["tempo"].result["bpm"] == 120.0
    # Callers get copies: changing one never changes the cache.
    got = cache.get("tempo", SHA, {}, TempoResult)
    got.bpm = 1.0
    assert cache.get("tempo", SHA, {}, TempoResult).bpm == 120.0


def test_code_version_invalidates(tmp_path):
    ResultCache(tmp_path, version="v1").put("tempo", SHA, {}, tempo(100.0))
    assert ResultCache(tmp_path, version="v2").get("tempo", SHA, {}, TempoResult) is None
    assert ResultCache(tmp_path, version="v2").analyses(SHA) == {}
    assert ResultCache(tmp_path, version="v1").get("tempo", SHA, {}, TempoResult).bpm == 100.0


def test_damaged_file_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put("tempo", SHA, {}, tempo(90.0))
    for path in tmp_path.rglob("*.json"):
        path.write_text("{not json")
    assert ResultCache(tmp_path).get("tempo", SHA, {}, TempoResult) is None


def test_memory_only_cache_lists_and_evicts():
    cache = ResultCache(None, max_items=2)
    for i, bpm in enumerate((100.0, 110.0, 120.0)):
        cache.put("tempo", SHA, {"i": i}, tempo(bpm))
    assert cache.get("tempo", SHA, {"i": 0}, TempoResult) is None  # least recently used went first
    assert cache.get("tempo", SHA, {"i": 2}, TempoResult).bpm == 120.0
    assert len(cache.analyses(SHA)) == 2


def test_rejects_unsafe_keys(tmp_path):
    with pytest.raises(ValueError):
        ResultCache(tmp_path).put("../x", SHA, {}, tempo(1.0))
    with pytest.raises(ValueError):
        ResultCache(tmp_path).get("tempo", "../../etc", {}, TempoResult)


def test_repeated_analyze_is_answered_from_cache(tmp_path, labelled_clips, analyzer):
    path = labelled_clips["waltz_eb_major"].path
    cache = ResultCache(tmp_path)
    clip = load_audio(path)
    computed = cache.get_or_compute("analysis", clip.sha256, {}, ClipAnalysis, lambda: analyzer.analyze(clip))
    again = load_audio(path)
    never = lambda: pytest.fail("a repeated analyze must not recompute")  # noqa: E731
    assert cache.get_or_compute("analysis", again.sha256, {}, ClipAnalysis, never) == computed
    assert ResultCache(tmp_path).get_or_compute("analysis", again.sha256, {}, ClipAnalysis, never) == computed
    assert "analysis" in ResultCache(tmp_path).analyses(clip.sha256)
