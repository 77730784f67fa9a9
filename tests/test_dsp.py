"""The madmom DSP tools recover what the synthetic music was written with."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from model.audio import load_audio
from model.dsp.analyzer import find_loop
from model.dsp.results import ClipAnalysis


@pytest.fixture(scope="module")
def analyses(labelled_clips, analyzer) -> dict[str, ClipAnalysis]:
    return {name: analyzer.analyze(load_audio(clip.path)) for name, clip in labelled_clips.items()}


@pytest.mark.parametrize("name", ["rock_a_minor", "waltz_eb_major", "chamber_f_major"])
def test_tempo_within_4_percent_with_alternatives(labelled_clips, analyses, name):
    truth, tempo = labelled_clips[name].labels, analyses[name].tempo
    assert tempo.bpm == pytest.approx(truth.tempo_bpm, rel=0.04)
    assert 0 < tempo.confidence <= 1
    assert {c.relation for c in tempo.alternatives} == {"half", "double"}
    half = next(c for c in tempo.alternatives if c.relation == "half")
    assert half.bpm == pytest.approx(tempo.bpm / 2, abs=0.1)
    assert f"{tempo.bpm:.0f} BPM" in tempo.summary


@pytest.mark.parametrize("name", ["rock_a_minor", "waltz_eb_major", "chamber_f_major"])
def test_key_exact(labelled_clips, analyses, name):
    truth, key = labelled_clips[name].labels, analyses[name].key
    assert key.key == truth.key
    assert (key.tonic, key.mode) == (truth.key_tonic, truth.key_mode)
    assert key.confidence > max(c.confidence for c in key.alternatives)
    assert truth.key in key.summary


@pytest.mark.parametrize("name", ["rock_a_minor", "waltz_eb_major", "chamber_f_major"])
def test_meter_and_downbeats_on_the_right_beats(labelled_clips, analyses, name):
    truth, beats = labelled_clips[name].labels, analyses[name].beats
    assert beats.meter == truth.meter and beats.beats_per_bar == truth.beats_per_bar
    beat_s = 60 / truth.tempo_bpm
    # Every detected beat sits on a true beat (within 70 ms), skipping the first second's lead-in.
    true_beats = np.array(truth.beats_s)
    detected = np.array([b for b in beats.beats_s if b > 1.0])
    assert np.max(np.min(np.abs(detected[:, None] - true_beats[None, :]), axis=1)) < 0.07
    assert len(detected) >= 0.9 * np.sum(true_beats > 1.0)
    # Downbeats fall on bar starts, not on other beats of the bar.
    true_downbeats = np.array(truth.downbeats_s)
    downbeats = np.array([d for d in beats.downbeats_s if d > 1.0])
    distance = np.min(np.abs(downbeats[:, None] - true_downbeats[None, :]), axis=1)
    assert np.all(distance < 0.25 * beat_s)
    assert len(downbeats) >= np.sum(true_downbeats > 1.0) - 1


@pytest.mark.parametrize("name", ["rock_a_minor", "waltz_eb_major", "chamber_f_major"])
def test_chords_overlap_the_written_ones(labelled_clips, analyses, name):
    import mir_eval

    truth, chords = labelled_clips[name].labels, analyses[name].chords
    ref_iv = np.array([[c.start_s, c.end_s] for c in truth.chords])
    est_iv = np.array([[s.start_s, s.end_s] for s in chords.segments])
    est_iv, est_lab = mir_eval.util.adjust_intervals(est_iv, [s.label for s in chords.segments], 0, truth.duration_s, "N", "N")
    iv, ref, est = mir_eval.util.merge_labeled_intervals(ref_iv, [c.label for c in truth.chords], est_iv, est_lab)
    overlap = mir_eval.chord.weighted_accuracy(mir_eval.chord.majmin(ref, est), mir_eval.util.intervals_to_durations(iv))
    assert overlap >= 0.85
    # The summary names the written loop (as a rotation: the analysis may start listening mid-loop).
    written = [label.replace(":7", ":maj").replace(":maj7", ":maj").replace(":min7", ":min") for label in truth.progression]
    collapsed = [c for i, c in enumerate(written) if c != written[i - 1]] or written
    loop = chords.progression
    assert sorted(loop) == sorted(collapsed)
    assert " ".join(loop) in chords.summary


def test_analyze_shares_work_and_matches_single_tools(labelled_clips, analyzer, analyses):
    clip = load_audio(labelled_clips["rock_a_minor"].path)
    assert analyzer.tempo(clip) == analyses["rock_a_minor"].tempo
    assert analyzer.chords(clip) == analyses["rock_a_minor"].chords
    assert analyses["rock_a_minor"].sha256 == clip.sha256


def test_window_reports_file_times(labelled_clips, analyzer):
    path = labelled_clips["rock_a_minor"].path
    window = analyzer.beats(load_audio(path, offset_s=4.0, duration_s=10.0))
    assert 4.0 <= window.beats_s[0] < 5.0 and window.beats_s[-1] <= 14.0
    truth = np.array(labelled_clips["rock_a_minor"].labels.downbeats_s)
    assert all(np.min(np.abs(truth - d)) < 0.06 for d in window.downbeats_s if d > 5.0)


def test_silence_reports_nothing_found(tmp_path, analyzer):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(5 * 44100, dtype=np.float32), 44100, subtype="PCM_16")
    result = analyzer.analyze(load_audio(path))
    assert result.silent
    assert result.tempo.bpm is None and result.beats.beats_s == [] and result.beats.meter is None
    assert result.key.key is None and result.chords.segments == []
    assert "silent" in result.summary.lower() and "silent" in result.key.summary


@pytest.mark.parametrize("sound", ["noise", "sine"])
def test_noise_and_drones_have_no_invented_tempo_or_key(tmp_path, analyzer, sound):
    t = np.arange(8 * 44100) / 44100
    samples = np.random.default_rng(1).normal(0, 0.2, len(t)) if sound == "noise" else 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / f"{sound}.wav"
    sf.write(path, samples.astype(np.float32), 44100, subtype="PCM_16")
    result = analyzer.analyze(load_audio(path))
    assert not result.silent
    assert result.tempo.bpm is None and result.beats.beats_s == [] and "No tempo" in result.tempo.summary
    assert result.key.key is None, result.key
    assert all(s.label == "N" for s in result.chords.segments)


def test_find_loop():
    assert find_loop("A:min F:maj C:maj G:maj A:min F:maj C:maj G:maj A:min F:maj".split()) == (
        ["A:min", "F:maj", "C:maj", "G:maj"], 2.5)
    # A gap (N) inside a repeated chord does not break the loop: C C G C G C G is C G three times.
    assert find_loop(["C:maj", "N", "C:maj", "G:maj", "C:maj", "G:maj", "C:maj", "G:maj"]) == (["C:maj", "G:maj"], 3.0)
    assert find_loop(["C:maj", "D:min", "E:min", "F:maj", "G:maj"]) == ([], 0.0)
    # A loop may return to a chord before it repeats (i iv i V).
    assert find_loop("A:min D:min A:min E:maj".split() * 3) == (["A:min", "D:min", "A:min", "E:maj"], 3.0)


def test_bar_length_is_the_trackers_and_the_phase_follows_the_downbeat_activation():
    from model.dsp.analyzer import ACTIVATION_FPS, _choose_bar

    beats = np.arange(1, 25) * 0.5  # 24 beats at 120 BPM
    activation = np.zeros((int(14 * ACTIVATION_FPS), 2))
    for i, t in enumerate(beats):
        activation[int(round(t * ACTIVATION_FPS)), 0 if (i - 2) % 3 else 1] = 0.9  # downbeats on beats 2, 5, 8, ...
    chroma = np.ones((140, 12))  # no harmonic change: the activation decides
    meter, phase, confidence, phase_confidence = _choose_bar(beats, activation, chroma, 3)
    assert (meter, phase) == (3, 2) and confidence > 0.5 and phase_confidence > 0.5
    meter, _, confidence_4, _ = _choose_bar(beats, activation, chroma, 4)  # the tracker said 4: kept, but doubted
    assert meter == 4 and confidence_4 < 0.5


def test_bass_notes_on_one_beat_of_the_bar_choose_the_phase_the_activation_leaves_open():
    from model.dsp.analyzer import ACTIVATION_FPS, _choose_bar
    from model.dsp.bar_phase import bass_evidence

    rate, beat_s = 44100, 0.5
    beats = np.arange(1, 25) * beat_s
    t = np.arange(int(13 * rate)) / rate
    audio = 0.01 * np.sin(2 * np.pi * 880 * t)  # a quiet tone above the bass band
    for b in beats[1::4]:  # a 55 Hz bass note held for two beats from beats 1, 5, 9, ...
        held = (t >= b) & (t < b + 2 * beat_s)
        audio[held] += 0.5 * np.sin(2 * np.pi * 55 * (t[held] - b))
    bass = bass_evidence(audio, rate, beats)
    assert bass["bass_onset"][1::4].min() > bass["bass_onset"][np.arange(24) % 4 != 1].max()
    assert bass["bass_energy"][1::4].min() > bass["bass_energy"][3::4].max()
    activation = np.zeros((int(14 * ACTIVATION_FPS), 2))
    activation[np.round(beats * ACTIVATION_FPS).astype(int), 1] = 0.5  # every beat alike: no phase
    meter, phase, _, phase_confidence = _choose_bar(beats, activation, np.ones((140, 12)), 4, bass)
    assert (meter, phase) == (4, 1) and phase_confidence > 0.5


def test_fetch_debian_reuses_an_extracted_package_and_explains_a_failure(tmp_path):
    import shutil

    from training.corpora import fetch_debian

    (tmp_path / "some-package" / "usr").mkdir(parents=True)
    (tmp_path / "some-package" / "usr" / "file").write_text("extracted before")
    assert fetch_debian("some-package", tmp_path) == tmp_path / "some-package"  # no apt call: already there
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not available")
    with pytest.raises(RuntimeError, match="apt-get download no-such-package-tinymu"):
        fetch_debian("no-such-package-tinymu", tmp_path)


def test_long_clips_are_beat_tracked_in_windows_without_losing_or_doubling_beats(analyzer):
    from model.dsp.analyzer import ACTIVATION_FPS, DBN_WINDOW_S, _track_in_windows

    seconds = 3 * DBN_WINDOW_S + 17  # several windows and a ragged end
    activation = np.full((int(seconds * ACTIVATION_FPS), 2), 0.01)
    truth = np.arange(0.25, seconds - 0.5, 0.5)  # 120 BPM, a downbeat every 4 beats
    for i, t in enumerate(truth):
        frame = int(round(t * ACTIVATION_FPS))
        activation[frame - 1:frame + 2, 1 if i % 4 == 0 else 0] = 0.9
    dbn = analyzer._procs()["downbeat_dbn"]
    beats, meter, downbeats = _track_in_windows(dbn, activation)
    assert meter == 4
    assert len(beats) == pytest.approx(len(truth), abs=2)
    assert np.all(np.diff(beats) > 0.4)  # no doubled beat at a seam
    matched = np.min(np.abs(beats[:, None] - truth[None, :]), axis=1)
    assert np.mean(matched < 0.05) > 0.97
    # The DBN's own downbeats come through the seams too (the benchmark scores its bar phase beside ours).
    assert len(downbeats) == pytest.approx(len(truth[::4]), abs=1) and np.isin(downbeats, beats).all()
    to_bar_start = np.min(np.abs(downbeats[:, None] - truth[::4][None, :]), axis=1)
    assert np.mean(to_bar_start < 0.05) > 0.95


def test_long_clips_get_their_features_in_windows_frame_for_frame(analyzer):
    from madmom.audio.signal import Signal

    from model.dsp.analyzer import CHROMA_FPS, FEATURE_WINDOW_S, _in_windows

    rate = 44100
    t = np.arange(int((2 * FEATURE_WINDOW_S + 13) * rate)) / rate
    notes = np.where((t // 4) % 2 == 0, 220.0, 246.94)  # A3 and B3 alternating every 4 s
    signal = Signal((0.3 * np.sin(2 * np.pi * notes * t)).astype(np.float32), sample_rate=rate)
    chroma = analyzer._procs()["deep_chroma"]
    windowed = _in_windows(chroma, signal, CHROMA_FPS)
    whole = chroma(signal)  # what the windows replace (fine at this length; not at 20 minutes)
    assert windowed.shape == whole.shape
    assert np.abs(windowed - whole).max() < 0.05


def test_reported_confidences_are_the_calibrated_raw_scores(labelled_clips, analyzer, analyses):
    from model.dsp.analyzer import CALIBRATION, calibrated

    for name in labelled_clips:
        clip = load_audio(labelled_clips[name].path)
        result = analyzer.analyze(clip)  # again, so that this clip's raw scores are in the analyzer's memo
        assert result == analyses[name]
        raw = analyzer._features(clip)["raw_confidence"]  # what the benchmark fits the tables on
        reported = {"tempo": result.tempo.confidence, "meter": result.beats.meter_confidence, "key": result.key.confidence}
        for quantity, value in reported.items():
            assert value == calibrated(quantity, raw[quantity])
            low, high = min(CALIBRATION[quantity][1]), max(CALIBRATION[quantity][1])
            assert low <= value <= high  # an accuracy seen on the tuning parts, not the raw score
        assert f"confidence {result.tempo.confidence:.2f}" in result.tempo.summary
        # The key's runners-up share what the calibrated confidence leaves.
        assert sum(c.confidence for c in result.key.alternatives) <= 1 - result.key.confidence + 0.002
        assert result.key.confidence > max(c.confidence for c in result.key.alternatives)


def test_calibration_table_is_monotone_and_never_promises_certainty():
    from training.bench.dsp import fit_calibration

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 300)
    right = rng.uniform(0, 1, 300) < raw  # a raw score that is itself a probability of being right
    points, accuracies = fit_calibration(list(raw), list(right), bins=5)
    assert len(points) == 5 and np.all(np.diff(points) > 0) and np.all(np.diff(accuracies) >= 0)
    assert accuracies[0] < 0.25 and accuracies[-1] > 0.75  # follows the truth (bin means ~0.1 and ~0.9)
    # A score that says nothing about being right maps to (about) the overall accuracy everywhere,
    # and one perfect bin of a few clips is not reported as certain.
    points, accuracies = fit_calibration([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [True, False, True, True, True, True], bins=2)
    assert 0 < accuracies[0] <= accuracies[1] < 1


def test_the_dbn_bar_phase_is_mapped_onto_a_halved_beat_grid():
    from training.bench.dsp import _dbn_phase

    dbn_beats = np.arange(32) * 0.25  # the DBN tracked eighth notes at 240 BPM, bars of 4 of them
    feats = {"dbn_beats": dbn_beats, "dbn_downbeats": dbn_beats[1::4], "beats_array": dbn_beats}
    assert _dbn_phase(feats, 4, 10.0) == pytest.approx(list(dbn_beats[1::4] + 10.0))  # its own, in file times
    feats["beats_array"] = dbn_beats[1::2]  # our tempo correction kept every other beat
    assert _dbn_phase(feats, 4, 0.0) == pytest.approx(list(dbn_beats[1::8]))


def _networks(step) -> list:
    """Every madmom NeuralNetwork inside a processor chain."""
    from madmom.ml.nn import NeuralNetwork

    if isinstance(step, NeuralNetwork):
        return [step]
    return [n for inner in getattr(step, "processors", []) for n in _networks(inner)]


def test_networks_run_on_one_thread_and_give_madmoms_own_outputs(labelled_clips, analyzer):
    from madmom.audio.signal import Signal
    from madmom.features.chords import CNNChordFeatureProcessor
    from madmom.features.key import CNNKeyRecognitionProcessor

    from model.dsp.analyzer import ONNX_THREADS

    procs = analyzer._procs()
    counts = {name: len(_networks(procs[name])) for name in ("downbeat_rnn", "deep_chroma", "key_cnn", "chord_cnn")}
    assert counts["downbeat_rnn"] == 8 and all(counts.values())
    assert ONNX_THREADS == 1
    for name in counts:
        assert all(n._runtime._intra_op_num_threads == ONNX_THREADS for n in _networks(procs[name])), name
    # The reloaded key and chord networks are madmom's own: same numbers as its default chains.
    clip = load_audio(labelled_clips["waltz_eb_major"].path, duration_s=8.0).resampled(44100)
    signal = Signal(clip.samples, sample_rate=44100)
    assert np.array_equal(procs["key_cnn"](signal), CNNKeyRecognitionProcessor()(signal))
    assert np.array_equal(procs["chord_cnn"](signal), CNNChordFeatureProcessor()(signal))


def test_the_dbn_decodes_at_50_fps_with_the_beats_it_finds_at_100(labelled_clips, analyzer):
    from madmom.features.downbeats import DBNDownBeatTrackingProcessor

    from model.dsp.analyzer import ACTIVATION_FPS, DBN_FPS, _track_in_windows

    assert DBN_FPS == 50 and analyzer._procs()["downbeat_dbn"].fps == DBN_FPS
    full_rate = DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=ACTIVATION_FPS)
    for name in ("rock_a_minor", "waltz_eb_major"):
        clip = load_audio(labelled_clips[name].path)
        activation = analyzer._get(analyzer._features(clip), "activation")
        beats, meter, downbeats = _track_in_windows(analyzer._procs()["downbeat_dbn"], activation)
        reference = full_rate(activation)
        assert meter == int(reference[:, 1].max()) == labelled_clips[name].labels.beats_per_bar
        assert len(beats) == pytest.approx(len(reference), abs=1)
        offset = np.min(np.abs(beats[:, None] - reference[None, :, 0]), axis=1)
        assert np.mean(offset <= 0.021) > 0.95  # one 20 ms frame at most
        assert len(downbeats) == pytest.approx(np.sum(reference[:, 1] == 1), abs=1)


def test_a_doubled_tempo_whose_off_beats_are_stronger_keeps_valid_alternatives():
    from model.dsp.analyzer import ACTIVATION_FPS, _correct_tempo

    beats = np.arange(1, 21) * 0.6  # tracked at 100 BPM ...
    activation = np.zeros((int(13 * ACTIVATION_FPS), 2))
    for t in beats:
        activation[int(round(t * ACTIVATION_FPS)), 0] = 0.4
        activation[int(round((t + 0.3) * ACTIVATION_FPS)), 0] = 0.8  # ... but the stronger pulses lie between
    corrected, tempo = _correct_tempo(beats, activation)
    assert tempo.bpm == pytest.approx(200, rel=0.01) and len(corrected) == 2 * len(beats) - 1
    assert all(0 <= c.strength <= 1 for c in tempo.alternatives)  # was a validation error (strength -0.5)


def test_block_stft_is_madmoms_stft_bit_for_bit(labelled_clips):
    """The block STFT (model/dsp/stft.py) against madmom's per-frame loop, for every frame size and
    rate our chains use, a hop that is not a whole number of samples, and edge frames that need padding."""
    from madmom.audio.signal import FramedSignal, Signal
    from madmom.audio.stft import (
        ShortTimeFourierTransform,
        ShortTimeFourierTransformProcessor,
    )

    from model.dsp.stft import BlockSTFTProcessor

    clip = load_audio(labelled_clips["rock_a_minor"].path, duration_s=6.3).resampled(44100)
    block = BlockSTFTProcessor(ShortTimeFourierTransformProcessor())
    cases = [(44100, 1024, 100), (44100, 2048, 100), (44100, 4096, 100), (44100, 8192, 10), (44100, 8192, 5),
             (22050, 2048, 100)]  # 22050 / 100: a hop of 220.5 samples
    for rate, frame_size, fps in cases:
        signal = Signal(clip.samples[::44100 // rate].copy(), sample_rate=rate)
        frames = FramedSignal(signal, frame_size=frame_size, fps=fps)
        theirs, ours = ShortTimeFourierTransform(frames), block(frames)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert np.array_equal(ours, theirs), (rate, frame_size, fps)
        assert np.array_equal(ours.bin_frequencies, theirs.bin_frequencies)
        assert np.abs(ours).max() > 0  # real music, not an all-zero comparison


def test_analyzer_spectrogram_chains_give_madmoms_own_network_outputs(labelled_clips, analyzer):
    """With the block STFT, the fused STFT + filterbank step and one BLAS thread, the downbeat and
    deep-chroma networks return exactly what madmom's own chains return (key and chord CNN:
    test_networks_run_on_one_thread_and_give_madmoms_own_outputs)."""
    from madmom.audio.chroma import DeepChromaProcessor
    from madmom.audio.signal import Signal
    from madmom.features.downbeats import RNNDownBeatProcessor

    from model.dsp.stft import BlockFilteredSpectrogramProcessor

    procs = analyzer._procs()

    def steps(step):
        return [step] + [s for inner in getattr(step, "processors", []) for s in steps(inner)]

    assert sum(isinstance(s, BlockFilteredSpectrogramProcessor) for s in steps(procs["downbeat_rnn"])) == 3
    clip = load_audio(labelled_clips["waltz_eb_major"].path, duration_s=8.0)
    signal = Signal(clip.resampled(44100).samples, sample_rate=44100)
    feats = analyzer._features(clip)
    activation, chroma = analyzer._get(feats, "activation"), analyzer._get(feats, "chroma")
    assert np.array_equal(activation, RNNDownBeatProcessor()(signal))
    assert np.array_equal(chroma, DeepChromaProcessor()(signal))
    assert activation.max() > 0.3  # the waltz has beats the network finds
