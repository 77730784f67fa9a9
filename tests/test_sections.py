"""detect_sections: song form from bar features, on real rendered music with a known A B A B form."""

from __future__ import annotations

import shutil
from itertools import pairwise

import numpy as np
import pytest
import soundfile as sf

from agent_tools.config import Settings
from agent_tools.tools import MusicTools
from model.audio import load_audio
from model.dsp import sections as form
from model.errors import InputError
from training.synth import write_song

BAR_S = 2.0  # 120 BPM in 4/4
SECTION_BARS = 8


def _blocks(pattern: str, bars: int, rng) -> np.ndarray:
    """Bar features where each letter is its own (noisy) direction: a toy song with a known form."""
    centres = {letter: rng.normal(size=36) for letter in set(pattern)}
    rows = [centres[letter] + 0.2 * rng.normal(size=36) for letter in pattern for _ in range(bars)]
    rows = np.array(rows)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_segment_finds_the_form_and_its_boundaries():
    starts, letters, confidence = form.segment(_blocks("ABAB", 8, np.random.default_rng(0)))
    assert starts == [0, 8, 16, 24]
    assert "".join(letters) == "ABAB"
    assert 0 < confidence <= 1


def test_segment_letters_three_sections_in_order_of_appearance():
    starts, letters, _ = form.segment(_blocks("ABCA", 6, np.random.default_rng(1)))
    assert starts == [0, 6, 12, 18] and "".join(letters) == "ABCA"


def test_segment_gives_one_section_when_nothing_changes_or_the_clip_is_short():
    same = form.segment(_blocks("A", 32, np.random.default_rng(2)))
    assert same[0] == [0] and same[1] == ["A"]
    short = form.segment(_blocks("AB", 3, np.random.default_rng(3)))
    assert short == ([0], ["A"], 0.0)


def _phrase(bars: int, rng) -> np.ndarray:
    """A phrase whose every bar sounds different (a chorale's harmony moves each bar): unit rows."""
    rows = rng.normal(size=(bars, 36))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_segment_hears_a_written_out_repeat_without_contrast_at_its_middle():
    rng = np.random.default_rng(4)
    stollen, abgesang = _phrase(5, rng), _phrase(7, rng)
    played = np.vstack([stollen, stollen, abgesang]) + 0.05 * rng.normal(size=(17, 36))
    played /= np.linalg.norm(played, axis=1, keepdims=True)
    assert form.immediate_repeat(played @ played.T) == (0, 5)
    starts, letters, _ = form.segment(played)
    assert starts == [0, 5, 10] and "".join(letters) == "AAB"


def test_a_short_phrase_played_twice_is_not_a_section_repeat():
    rng = np.random.default_rng(5)
    phrase = _phrase(4, rng)
    played = np.vstack([phrase, phrase, _phrase(16, rng)])  # 8 of 24 bars: a phrase, not the form
    assert form.immediate_repeat(played @ played.T) is None


@pytest.fixture(scope="module")
def abab_song(tmp_path_factory):
    """Two really different arrangements at one tempo, played A B A B (8 bars each)."""
    folder = tmp_path_factory.mktemp("sections")
    seconds = SECTION_BARS * BAR_S
    verse = write_song(folder, seed=21, duration_s=seconds, name="verse", style="rock", tempo_bpm=120.0, key=(9, "minor"))
    chorus = write_song(folder, seed=22, duration_s=seconds, name="chorus", style="chamber", tempo_bpm=120.0, key=(5, "major"))
    assert verse.beats_per_bar == chorus.beats_per_bar == 4
    a, rate = sf.read(folder / "verse.wav", dtype="float32")
    b, _ = sf.read(folder / "chorus.wav", dtype="float32")
    n = int(seconds * rate)
    song = np.concatenate([np.pad(x, (0, max(0, n - len(x))))[:n] for x in (a, b, a, b)])
    path = folder / "abab.wav"
    sf.write(path, song, rate, subtype="PCM_16")
    return path


def test_analyzer_hears_abab_on_bar_boundaries(analyzer, abab_song):
    result = analyzer.sections(load_audio(abab_song))
    assert result.form == "ABAB", result.summary
    starts = [s.start_s for s in result.sections]
    assert np.allclose(starts[1:], [16.0, 32.0, 48.0], atol=BAR_S), starts
    downbeats = analyzer.beats(load_audio(abab_song)).downbeats_s
    for section in result.sections:  # bar-aligned: every start is one of our downbeats
        assert min(abs(section.start_s - d) for d in downbeats) < 1e-3 or section.start_s == result.sections[0].start_s
        assert section.bars >= form.MIN_SECTION_BARS
    assert result.summary.startswith("Form ABAB")


def test_detect_sections_tool_reports_in_file_time_and_refuses_silence(tmp_path, abab_song):
    tools = MusicTools(Settings(roots=(abab_song.parent, tmp_path), cache_dir=tmp_path / "cache"))
    report = tools.detect_sections(str(abab_song), offset_s=16.0, duration_s=32.0)
    assert report.audio.sha256 and report.sections.sections
    assert all(16.0 <= s.start_s < 48.0 for s in report.sections.sections)  # file times, not window times
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(44100 * 3, dtype=np.float32), 44100)
    with pytest.raises(InputError, match="silent"):  # the toolbox tells the agent plainly
        tools.detect_sections(str(silent))
    from model.dsp.analyzer import MusicAnalyzer

    quiet = MusicAnalyzer().sections(load_audio(silent))  # the analyzer itself answers "nothing found"
    assert quiet.sections == [] and quiet.form == "" and "silent" in quiet.summary


@pytest.mark.skipif(shutil.which("mma") is None, reason="Debian's mma is not installed")
def test_mma_song_labels_match_what_the_analyzer_hears(tmp_path, monkeypatch, analyzer):
    from training import corpora

    if not corpora.SECOND_SOUNDFONT.exists():
        pytest.skip("the TimGM6mb soundfont is not installed")
    monkeypatch.setattr(corpora, "MMA_SONGS", corpora.MMA_SONGS[7:8])  # one 4/4 song: 8Beat / 8BeatSus
    (clip,) = corpora.mma_clips(tmp_path)
    assert [s[2] for s in clip.sections] == list("ABAB") and clip.key.endswith("major")
    assert clip.downbeats_s == clip.beats_s[::4]
    audio = load_audio(tmp_path / clip.path)
    assert abs(audio.duration_s - clip.duration_s) < 0.1
    # The labels describe the audio: the labelled tempo is what we hear, or its half/double reading.
    tempo = analyzer.tempo(audio)
    heard = [tempo.bpm] + [alt.bpm for alt in tempo.alternatives]
    assert any(abs(bpm / clip.tempo_bpm - 1) < 0.04 for bpm in heard), (heard, clip.tempo_bpm)


# ---- the sections benchmark's music21 pieces and its baseline (training/bench/dsp_forms.py) ----------


def _score_with_repeat(pickup: bool, endings: bool = False):
    """A one-part 4/4 score: (pickup +) 2 bars ||: repeated :|| then 3 bars, with or without volta endings."""
    import music21

    part = music21.stream.Part()
    part.append(music21.meter.TimeSignature("4/4"))
    lengths = ([1.0] if pickup else []) + [4.0, 3.0 if pickup else 4.0] + [4.0, 4.0, 4.0]
    for number, length in enumerate(lengths, start=0 if pickup else 1):
        bar = music21.stream.Measure(number=number)
        bar.append(music21.note.Note("C4", quarterLength=length))
        part.append(bar)
    bars = list(part.getElementsByClass(music21.stream.Measure))
    bars[len(lengths) - 4].rightBarline = music21.bar.Repeat(direction="end")
    if endings:
        part.insert(0, music21.spanner.RepeatBracket(bars[len(lengths) - 4], number=1))
    score = music21.stream.Score()
    score.insert(0, part)
    return score


def test_repeat_form_labels_the_expanded_bar_form_a_a_b():
    from training.bench.dsp_forms import repeat_form

    assert repeat_form(_score_with_repeat(pickup=False)) == ([0.0, 8.0, 16.0, 28.0], ["A", "A", "B"])
    # With a 1-beat pickup the Stollen is pickup + 1 bar + the 3-beat bar that the pickup completes.
    assert repeat_form(_score_with_repeat(pickup=True)) == ([0.0, 8.0, 16.0, 28.0], ["A", "A", "B"])
    assert repeat_form(_score_with_repeat(pickup=False, endings=True)) is None  # volta endings: not labelled


def test_pickups_of_the_expanded_score_are_not_downbeats():
    import music21

    from training.bench.dsp_forms import _downbeats

    expanded = _score_with_repeat(pickup=True).expandRepeats()
    measures = list(expanded.parts[0].getElementsByClass(music21.stream.Measure))
    # bars: pickup(1) 4 3 | pickup(1) 4 3 | 4 4 4, at 1 s per beat
    assert _downbeats(measures, 4.0, 1.0) == [1.0, 5.0, 9.0, 13.0, 16.0, 20.0, 24.0]


def test_a_chorale_with_a_repeat_is_rendered_whole_with_its_form(tmp_path, monkeypatch):
    from training import corpora
    from training.bench import dsp_forms

    if not corpora.SECOND_SOUNDFONT.exists():
        pytest.skip("the TimGM6mb soundfont is not installed")
    monkeypatch.setattr(dsp_forms, "PIECES", 1)
    (clip,) = dsp_forms.form_clips(tmp_path)
    assert [s[2] for s in clip.sections] == list("AAB") and not clip.held_out
    a1, a2, b = clip.sections
    assert a1[0] == 0.0 and abs((a1[1] - a1[0]) - (a2[1] - a2[0])) < 2e-3 and b[1] == pytest.approx(clip.duration_s, abs=1e-3)
    audio = load_audio(tmp_path / clip.path)
    assert abs(audio.duration_s - clip.duration_s) < 0.1
    # The music plays to the end of the labelled form (no silent tail from a mislabelled length).
    tail = audio.samples[int((audio.duration_s - 2.0) * audio.sample_rate):]
    assert np.sqrt(np.mean(tail ** 2)) > 1e-3
    assert dsp_forms.form_clips(tmp_path)[0] == clip  # the second call reads the labels back


def test_laplacian_baseline_finds_a_blatant_change_and_covers_the_clip():
    from training.bench.dsp_forms import laplacian_sections

    rate, rng = 22050, np.random.default_rng(0)
    t = np.arange(int(8 * rate)) / rate
    clicks = (np.sin(2 * np.pi * 2 * t) > 0.999).astype(float)  # a beat every 0.5 s
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + clicks
    noise = 0.3 * rng.normal(size=len(t)) + clicks
    audio = np.concatenate([tone, noise, tone])
    found = laplacian_sections(audio, rate, k=2)
    assert found[0][0] == 0.0 and found[-1][1] == pytest.approx(24.0, abs=0.05)
    assert all(a[1] == b[0] for a, b in pairwise(found))
    starts = [s for s, _, _ in found[1:]]
    assert any(abs(s - 8.0) < 1.0 for s in starts) and any(abs(s - 16.0) < 1.0 for s in starts), found
    assert found[0][2] != found[1][2]


def test_chorale_downbeats_keep_only_bar_lines_on_the_scores_bar_grid():
    import music21

    from training.corpora import bar_grid_downbeats

    # pickup(1) 4 4 4 3 | pickup(1) 4 ...: the 1-beat measure at 16 is the fourth beat of a bar.
    measures = [(0.0, 1.0), (1.0, 4.0), (5.0, 4.0), (9.0, 4.0), (13.0, 3.0), (16.0, 1.0), (17.0, 4.0)]
    assert bar_grid_downbeats(measures, 4.0) == [1.0, 5.0, 9.0, 13.0, 17.0]
    assert bar_grid_downbeats([(0.0, 3.0), (3.0, 3.0)], 3.0) == [0.0, 3.0]  # no pickup
    # The real score: bwv104.6 splits its fifth bar at the first phrase's end (3 + 1 beats).
    score = music21.corpus.parse("bach/bwv104.6.mxl")
    measures = [(float(m.offset), float(m.duration.quarterLength)) for m in score.parts[0].getElementsByClass(music21.stream.Measure)]
    downbeats = bar_grid_downbeats(measures, 4.0)
    assert downbeats[:5] == [1.0, 5.0, 9.0, 13.0, 17.0]
    assert 16.0 not in downbeats


def test_bar_phases_count_downbeats_per_beat_of_the_labelled_bar():
    from training.bench.dsp import bar_phases
    from training.corpora import Clip

    beats = [0.5 * i for i in range(16)]
    truth = Clip(name="x", set="t", path="x.wav", duration_s=8.0, tempo_bpm=120.0, beats_s=beats,
                 downbeats_s=beats[1::4], beats_per_bar=4)  # a one-beat pickup
    assert bar_phases(truth, beats[1::4]) == [4, 0, 0, 0, 0]
    assert bar_phases(truth, beats[3::4]) == [0, 0, 4, 0, 0]  # half a bar late throughout
    assert bar_phases(truth, [0.25, 2.5]) == [1, 0, 0, 0, 1]  # 0.25 s is on no beat
