"""index_folder and find_similar over a folder of rendered clips with known tempo and key."""

import shutil

import pytest
import soundfile as sf
from _clips import render_library

from agent_tools.config import Settings
from agent_tools.similarity import load_index
from agent_tools.tools import MusicTools
from model.errors import AccessDeniedError, InputError


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    folder = root / "library"
    labels = render_library(folder)
    # A quieter copy of the query: the nearest neighbour any sane measure must find.
    audio, rate = sf.read(folder / "query_rock_a_minor.wav", dtype="float32")
    sf.write(folder / "near_copy_of_query.wav", audio * 0.8, rate, subtype="PCM_16")
    (root / "not_music").mkdir()
    toolbox = MusicTools(Settings(roots=(root,), cache_dir=root / "cache"))
    progress = []
    from agent_tools import context as tools_module

    token = tools_module.progress_callback.set(lambda done, total, message: progress.append((done, total)))
    try:
        report = toolbox.index_folder(str(folder))
    finally:
        tools_module.progress_callback.reset(token)
    return toolbox, folder, labels, report, progress


def test_index_covers_every_clip_and_reports_progress(library):
    toolbox, folder, labels, report, progress = library
    assert report.clips == len(labels) + 1 and report.analysed == report.clips and not report.failed
    assert progress[-1] == (report.clips, report.clips) and len(progress) == report.clips
    index = load_index(toolbox.settings.cache_dir, folder.resolve())
    by_name = {c.path.rsplit("/", 1)[-1]: c for c in index.clips}
    measured = by_name["rock_e_minor_fast.wav"].attributes
    assert measured.tempo_bpm == pytest.approx(labels["rock_e_minor_fast"].tempo_bpm, rel=0.04)
    assert measured.mode == "minor"


def test_reindexing_reuses_unchanged_files(library):
    toolbox, folder, labels, report, _ = library
    again = toolbox.index_folder(str(folder))
    assert again.analysed == 0 and again.reused == report.clips


def test_nearest_neighbour_is_the_near_copy_and_never_the_query_itself(library):
    toolbox, folder, *_ = library
    found = toolbox.find_similar(str(folder / "query_rock_a_minor.wav"), str(folder), k=3)
    names = [r.path.rsplit("/", 1)[-1] for r in found.results]
    assert names[0] == "near_copy_of_query.wav"
    assert "query_rock_a_minor.wav" not in names
    similarities = [r.similarity for r in found.results]
    assert similarities == sorted(similarities, reverse=True)
    assert found.method == "features"


def test_faster_and_minor_constraints(library):
    toolbox, folder, labels, *_ = library
    query = str(folder / "query_rock_a_minor.wav")
    faster = toolbox.find_similar(query, str(folder), tempo="faster")
    query_bpm = faster.query_attributes.tempo_bpm
    assert faster.results and all(r.tempo_bpm > query_bpm * 1.04 for r in faster.results)
    assert {r.path.rsplit("/", 1)[-1] for r in faster.results} == {"rock_e_minor_fast.wav", "pop_c_major_fast.wav"}

    minor = toolbox.find_similar(query, str(folder), key_mode="minor")
    assert minor.results and all(r.key.endswith("minor") for r in minor.results)

    both = toolbox.find_similar(query, str(folder), tempo="faster", key_mode="minor")
    assert [r.path.rsplit("/", 1)[-1] for r in both.results] == ["rock_e_minor_fast.wav"]
    assert "faster" in both.constraints[0] and "+" in both.results[0].why  # says how much faster

    slower = toolbox.find_similar(query, str(folder), tempo="slower")
    assert all(r.tempo_bpm < query_bpm / 1.04 for r in slower.results)


def test_unindexed_and_forbidden_folders_are_actionable_errors(library, tmp_path):
    toolbox, folder, *_ = library
    query = str(folder / "query_rock_a_minor.wav")
    with pytest.raises(InputError, match="index_folder"):
        toolbox.find_similar(query, str(folder.parent / "not_music"))
    with pytest.raises(InputError, match="no audio files"):
        toolbox.index_folder(str(folder.parent / "not_music"))
    with pytest.raises(AccessDeniedError):
        toolbox.index_folder(str(tmp_path))
    with pytest.raises(InputError, match="embedding"):
        toolbox.find_similar(query, str(folder), method="embedding")


def test_a_corrupt_file_is_reported_and_the_rest_indexed(library, tmp_path_factory):
    toolbox, folder, labels, *_ = library
    extra = folder.parent / "with_bad_file"
    extra.mkdir()
    shutil.copy(folder / "ballad_f_major_slow.wav", extra / "good.wav")
    (extra / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    report = toolbox.index_folder(str(extra))
    assert report.clips == 1 and len(report.failed) == 1 and "broken.wav" in report.failed[0]
