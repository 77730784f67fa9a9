"""Deterministic labelled synthetic music: MIDI arrangements rendered with a GM soundfont.

`make_song(seed, ...)` writes a short arrangement in a named style (rock, waltz,
bossa, ...) with drums, bass on the chord roots, sustained comping voicings and
a melody in key, and returns it with its ground truth (`SongLabels`: tempo,
meter, key, timed chords, beats, downbeats, instruments, style, energy).
`render_song` turns it into 44.1 kHz mono float32 audio; `generate_set` writes
many labelled clips in parallel as `<name>.wav` + `<name>.json`.

Everything is a pure function of the seed (and the arguments), so benchmarks
and training data can be regenerated bit for bit on any machine that has the
same soundfont.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf
import soxr
from pydantic import BaseModel, Field

from model.dsp.pitch_names import key_name, root_names

SAMPLE_RATE = 44100
GENERATOR_VERSION = 3  # bump when the same seed would render different music; cached sets are re-rendered
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts")
SOUNDFONT_PREFERENCE = ("FluidR3_GM.sf2", "TimGM6mb.sf2")

# Chord qualities as semitone offsets from the root, named the Harte way.
QUALITIES = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "min7": (0, 3, 7, 10), "maj7": (0, 4, 7, 11)}

# Chord loops as (semitones above the tonic, quality); each starts on the tonic so the key is unambiguous.
MAJOR_LOOPS = [
    [(0, "maj"), (7, "maj"), (9, "min"), (5, "maj")],  # I V vi IV
    [(0, "maj"), (5, "maj"), (7, "maj"), (0, "maj")],  # I IV V I
    [(0, "maj"), (9, "min"), (5, "maj"), (7, "maj")],  # I vi IV V
    [(0, "maj"), (5, "maj"), (0, "maj"), (7, "maj")],  # I IV I V
    [(0, "maj"), (2, "min"), (7, "maj"), (0, "maj")],  # I ii V I
    [(0, "maj"), (4, "min"), (5, "maj"), (7, "maj")],  # I iii IV V
]
MINOR_LOOPS = [
    [(0, "min"), (5, "min"), (7, "maj"), (0, "min")],  # i iv V i
    [(0, "min"), (8, "maj"), (5, "min"), (7, "maj")],  # i VI iv V
    [(0, "min"), (10, "maj"), (8, "maj"), (7, "maj")],  # i VII VI V
    [(0, "min"), (5, "min"), (0, "min"), (7, "maj")],  # i iv i V
    [(0, "min"), (8, "maj"), (3, "maj"), (7, "maj")],  # i VI III V
]
# Jazzier styles colour the same loops with sevenths (majmin evaluation maps them back to maj/min).
SEVENTHS = {"maj": "maj7", "min": "min7"}

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)

KICK, SNARE, SIDE_STICK, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE, TAMBOURINE = 36, 38, 37, 39, 42, 44, 46, 49, 51, 54


@dataclass(frozen=True)
class Style:
    """A genre-like recipe: tempo range, meter, drum grid, comping/bass figures and instrument choices."""

    name: str
    tempo_range: tuple[int, int]
    beats_per_bar: int
    drums: dict[int, tuple[int, ...]]  # GM drum note -> steps on a 4-per-beat grid (empty: no drums)
    comp: str  # comping figure, see _comp_onsets
    bass: str  # bass figure, see _bass_notes
    comp_programs: tuple[int, ...]
    bass_programs: tuple[int, ...]
    lead_programs: tuple[int, ...]
    pad_programs: tuple[int, ...] = ()
    sevenths: bool = False


EIGHTHS_4 = tuple(range(0, 16, 2))
STYLES: dict[str, Style] = {s.name: s for s in [
    Style("rock", (100, 160), 4, {KICK: (0, 8, 10), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4}, "eighths", "eighths",
          (29, 27, 30), (33, 34), (30, 29, 65, 81), (16, 18)),
    Style("punk", (160, 180), 4, {KICK: (0, 6, 8), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4}, "eighths", "eighths",
          (30, 29), (34, 33), (30, 81)),
    Style("pop", (90, 130), 4, {KICK: (0, 6, 8), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4, TAMBOURINE: (4, 12)}, "beats", "root_fifth",
          (0, 4, 5, 25), (33, 38), (73, 80, 11, 54, 65), (48, 89)),
    Style("ballad", (60, 80), 4, {KICK: (0, 10), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4}, "arpeggio", "whole",
          (0, 1, 46), (32, 33, 42), (40, 73, 71, 68, 66), (48, 49, 52)),
    Style("chamber", (60, 120), 4, {}, "arpeggio", "whole",
          (0, 46, 6), (42, 43, 32), (40, 73, 71, 68, 41), (48, 49)),
    Style("funk", (90, 115), 4, {KICK: (0, 3, 10), SNARE: (4, 12), CLOSED_HAT: tuple(range(16))}, "stabs", "funk",
          (7, 4, 28), (36, 37, 38), (61, 65, 66, 56), (), True),
    Style("march", (104, 128), 4, {KICK: (0, 8), SNARE: (0, 4, 6, 8, 12, 14), CRASH: (0, 8)}, "beats", "root_fifth",
          (61, 56, 57), (58, 57), (56, 72, 60)),
    Style("bossa", (120, 150), 4, {KICK: (0, 6, 8, 14), SIDE_STICK: (0, 3, 6, 10, 12), CLOSED_HAT: EIGHTHS_4}, "bossa", "bossa",
          (24, 0, 11), (32, 33), (73, 66, 71, 11), (), True),
    Style("reggae", (70, 90), 4, {KICK: (8,), SIDE_STICK: (8,), CLOSED_HAT: (2, 6, 10, 14)}, "offbeats", "root_fifth",
          (16, 27, 17), (33, 38), (22, 56, 62)),
    Style("house", (118, 130), 4, {KICK: (0, 4, 8, 12), CLAP: (4, 12), OPEN_HAT: (2, 6, 10, 14)}, "stabs", "offbeat_eighths",
          (81, 4, 90), (38, 39), (80, 82, 84), (89, 90)),
    Style("hiphop", (80, 100), 4, {KICK: (0, 7, 10), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4}, "whole", "root_fifth",
          (4, 5, 0), (38, 33, 39), (11, 80, 73), (), True),
    Style("country", (100, 170), 4, {KICK: (0, 8), SNARE: (4, 12), CLOSED_HAT: EIGHTHS_4}, "backbeat", "root_fifth",
          (25, 24, 0), (32, 33), (110, 22, 40, 25)),
    Style("waltz", (90, 180), 3, {KICK: (0,), SNARE: (4, 8), CLOSED_HAT: (4, 8)}, "oom_pah", "whole",
          (21, 48, 0), (32, 42, 58), (40, 73, 21, 71)),
    Style("jazz_waltz", (120, 180), 3, {RIDE: (0, 4, 7, 8), PEDAL_HAT: (4, 8), KICK: (0,)}, "oom_pah", "walking",
          (0, 4, 11), (32,), (66, 65, 56, 11), (), True),
    Style("folk_waltz", (60, 110), 3, {}, "arpeggio", "whole",
          (25, 24, 46), (32, 42), (73, 22, 40, 71), (48,)),
]}

# The energy label is the arrangement's note velocity, so what a listener hears of it is level and
# timbre: clips keep their rendered level (see `render_song`). Raw renders measured at these velocities
# (36 clips): RMS -35 / -26 / -22 dBFS, about 1.7 dB spread within each level.
ENERGY_VELOCITY = {"low": 52, "medium": 80, "high": 108}
# One gain for every clip (not a per-clip normalisation, which erased the velocity: held-out energy was
# read at 44 %, chance 33 %); the loudest of those raw renders peaked at -4.4 dBFS.
MASTER_GAIN_DB = 3.0
PEAK_CEILING = 0.89  # -1 dBFS: the rare clip louder than that is scaled down to it


class ChordSegment(BaseModel):
    start_s: float
    end_s: float
    label: str = Field(description="Harte chord label, e.g. 'A:min', 'F#:maj', 'G:7'")


class InstrumentLabel(BaseModel):
    role: str = Field(description="comping, pad, bass, lead or drums")
    program: int = Field(description="General MIDI program number (0-127); -1 for drums")
    name: str
    family: str


class SongLabels(BaseModel):
    """Ground truth of one synthetic clip; times in seconds from the start of the audio."""

    name: str
    seed: int
    style: str
    tempo_bpm: float
    meter: str = Field(description="'3/4' or '4/4'")
    beats_per_bar: int
    key: str = Field(description="e.g. 'A minor', 'Eb major'")
    key_tonic: str
    key_mode: str
    progression: list[str] = Field(description="the repeating chord loop, Harte labels")
    progression_roman: list[str] = Field(description="the loop as Roman numerals relative to the key, e.g. i iv V i")
    chords: list[ChordSegment]
    beats_s: list[float]
    downbeats_s: list[float]
    instruments: list[InstrumentLabel]
    lead_instrument: str
    has_drums: bool
    energy: str = Field(description="low, medium or high (note velocity level)")
    velocity: int
    duration_s: float
    sample_rate: int = SAMPLE_RATE
    soundfont: str = ""
    generator_version: int = GENERATOR_VERSION


def make_song(
    seed: int,
    *,
    duration_s: float = 30.0,
    style: str | None = None,
    tempo_bpm: float | None = None,
    key: tuple[int, str] | None = None,
    drums: bool | None = None,
    energy: str | None = None,
    name: str | None = None,
) -> tuple[pretty_midi.PrettyMIDI, SongLabels]:
    """Compose one labelled arrangement; every choice left as None is drawn from `seed`.

    `key` is (tonic pitch class 0-11, 'major' | 'minor').
    """
    rng = np.random.default_rng(seed)
    spec = STYLES[style] if style else STYLES[rng.choice(sorted(STYLES))]
    tempo = float(tempo_bpm if tempo_bpm is not None else round(rng.uniform(*spec.tempo_range), 1))
    tonic, mode = key if key is not None else (int(rng.integers(12)), str(rng.choice(["major", "minor"])))
    has_drums = bool(spec.drums) if drums is None else (drums and bool(spec.drums))
    energy = energy or str(rng.choice(list(ENERGY_VELOCITY)))
    velocity = ENERGY_VELOCITY[energy]

    loops = MAJOR_LOOPS if mode == "major" else MINOR_LOOPS
    loop = loops[int(rng.integers(len(loops)))]
    if spec.sevenths:  # every other chord gets its seventh; a major chord on the fifth degree is a dominant 7
        loop = [(step, _seventh(step, q) if i % 2 == 1 else q) for i, (step, q) in enumerate(loop)]
    chords = [((tonic + step) % 12, quality) for step, quality in loop]

    beat_s = 60.0 / tempo
    bar_s = beat_s * spec.beats_per_bar
    bars_per_chord = 2 if bar_s < 1.2 else 1  # keep harmonic rhythm near a listener's expectations
    n_bars = int(np.ceil(duration_s / bar_s)) + 1

    programs = {
        "comping": int(rng.choice(spec.comp_programs)),
        "bass": int(rng.choice(spec.bass_programs)),
        "lead": int(rng.choice(spec.lead_programs)),
    }
    if spec.pad_programs and rng.random() < 0.5:
        programs["pad"] = int(rng.choice(spec.pad_programs))

    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    tracks = {role: pretty_midi.Instrument(program=p, name=role) for role, p in programs.items()}
    drum_track = pretty_midi.Instrument(program=0, is_drum=True, name="drums") if has_drums else None

    spelling = root_names(tonic, mode)
    segments: list[ChordSegment] = []
    previous_voicing: list[int] = []
    scale = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    lead_pitch = 60 + tonic + 12 * (tonic < 5)
    for bar in range(n_bars):
        bar_start = bar * bar_s
        root, quality = chords[(bar // bars_per_chord) % len(chords)]
        if bar % bars_per_chord == 0:
            segments.append(ChordSegment(start_s=bar_start, end_s=bar_start + bars_per_chord * bar_s,
                                         label=f"{spelling[root]}:{quality}"))
        tones = [(root + i) % 12 for i in QUALITIES[quality]]
        voicing = _voice(tones, previous_voicing)
        previous_voicing = voicing
        accent = 8 if bar % 4 == 0 else 0
        for onset, length, pitches in _comp_notes(spec, beat_s, voicing):
            strength = velocity + (6 if onset == 0 else -4)
            _add_chord(tracks["comping"], pitches, bar_start + onset, length, strength + accent, rng)
        if "pad" in tracks:
            _add_chord(tracks["pad"], [p + 12 for p in voicing[:3]], bar_start, bar_s * 0.98, velocity - 15, rng)
        for onset, length, interval in _bass_notes(spec, beat_s, tones, rng):
            pitch = 36 + (root + interval) % 12
            tracks["bass"].notes.append(_note(pitch, bar_start + onset, length, velocity + 5 + accent, rng))
        lead_pitch = _melody_bar(tracks["lead"], spec, bar_start, beat_s, tonic, scale, tones, lead_pitch, velocity, rng)
        if drum_track is not None:
            steps = spec.beats_per_bar * 4
            for drum, grid in spec.drums.items():
                for step in grid:
                    if step < steps:
                        strength = velocity + (12 if step == 0 else 0) - (10 if drum in (CLOSED_HAT, PEDAL_HAT) else 0)
                        drum_track.notes.append(_note(drum, bar_start + step * beat_s / 4, 0.1, strength, rng))
            if bar % 4 == 0:  # a crash marks each phrase start, as drummers do
                drum_track.notes.append(_note(CRASH, bar_start, 0.5, velocity + 10, rng))

    midi.instruments.extend(tracks.values())
    if drum_track is not None:
        midi.instruments.append(drum_track)

    beats = [round(b * beat_s, 6) for b in range(n_bars * spec.beats_per_bar) if b * beat_s < duration_s - 1e-6]
    downbeats = beats[:: spec.beats_per_bar]
    segments = [s for s in segments if s.start_s < duration_s - 1e-6]
    segments[-1].end_s = duration_s
    for s in segments:
        s.start_s, s.end_s = round(s.start_s, 6), round(min(s.end_s, duration_s), 6)
    instruments = [
        InstrumentLabel(role=role, program=track.program, name=pretty_midi.program_to_instrument_name(track.program),
                        family=pretty_midi.program_to_instrument_class(track.program))
        for role, track in tracks.items()
    ]
    if drum_track is not None:
        instruments.append(InstrumentLabel(role="drums", program=-1, name="Drum Kit", family="Drums"))
    key_label = key_name(tonic, mode)
    labels = SongLabels(
        name=name or f"song_{seed}",
        seed=seed,
        style=spec.name,
        tempo_bpm=tempo,
        meter=f"{spec.beats_per_bar}/4",
        beats_per_bar=spec.beats_per_bar,
        key=key_label,
        key_tonic=key_label.split()[0],
        key_mode=mode,
        progression=[f"{spelling[r]}:{q}" for r, q in chords],
        progression_roman=[_roman(step, quality, mode) for step, quality in loop],
        chords=segments,
        beats_s=beats,
        downbeats_s=downbeats,
        instruments=instruments,
        lead_instrument=pretty_midi.program_to_instrument_name(programs["lead"]),
        has_drums=drum_track is not None,
        energy=energy,
        velocity=velocity,
        duration_s=duration_s,
    )
    return midi, labels


def _seventh(step: int, quality: str) -> str:
    return "7" if step == 7 and quality == "maj" else SEVENTHS[quality]


def _roman(step: int, quality: str, mode: str) -> str:
    """Roman numeral of a chord `step` semitones above the tonic: V, iv, bVII (as written in minor: VII), ii7."""
    degrees = dict(zip(MAJOR_SCALE if mode == "major" else MINOR_SCALE, ["I", "II", "III", "IV", "V", "VI", "VII"]))
    numeral = degrees.get(step, f"b{degrees.get(step + 1, '?')}")
    numeral = numeral.lower() if quality.startswith("min") else numeral
    return numeral + {"7": "7", "maj7": "maj7", "min7": "7"}.get(quality, "")


def _note(pitch: int, start: float, length: float, velocity: int, rng: np.random.Generator) -> pretty_midi.Note:
    # A little velocity jitter keeps the rendering from sounding like a drum machine test tone.
    v = int(np.clip(velocity + rng.integers(-4, 5), 1, 127))
    return pretty_midi.Note(velocity=v, pitch=int(pitch), start=float(start), end=float(start + length))


def _add_chord(track, voicing, start, length, velocity, rng) -> None:
    for pitch in voicing:
        track.notes.append(_note(pitch, start, length, velocity, rng))


def _voice(tones: list[int], previous: list[int]) -> list[int]:
    """Close voicing of `tones` between E3 and G4 with the root in it, nearest to the previous voicing."""
    candidates = []
    for inversion in range(len(tones)):
        order = tones[inversion:] + tones[:inversion]
        pitches, low = [], 52
        for pc in order:
            p = low + (pc - low) % 12
            pitches.append(p)
            low = p + 1
        candidates.append(pitches)
    if not previous:
        return candidates[0]
    centre = np.mean(previous)
    return min(candidates, key=lambda c: abs(np.mean(c) - centre))


def _comp_notes(spec: Style, beat_s: float, voicing: list[int]) -> list[tuple[float, float, list[int]]]:
    """(onset, length, pitches) of the comping within one bar, in seconds."""
    n = spec.beats_per_bar
    if spec.comp == "arpeggio":
        # Broken chord an octave up over the held chord, so the harmony stays audible.
        cycle = voicing + [voicing[0] + 12]
        broken = [(e * beat_s / 2, beat_s * 0.5, [cycle[e % len(cycle)] + 12]) for e in range(2 * n)]
        return [(0.0, n * beat_s * 0.97, voicing)] + broken
    return [(onset, length, voicing) for onset, length in _comp_onsets(spec.comp, n, beat_s)]


def _comp_onsets(figure: str, n: int, beat_s: float) -> list[tuple[float, float]]:
    """(onset, length) of the comping chords within one bar of `n` beats, in seconds."""
    bar_s = n * beat_s
    if figure == "whole":
        return [(0.0, bar_s * 0.97)]
    if figure == "beats":
        return [(b * beat_s, beat_s * 0.9) for b in range(n)]
    if figure == "eighths":
        return [(e * beat_s / 2, beat_s * 0.45) for e in range(2 * n)]
    if figure == "backbeat":
        return [(b * beat_s, beat_s * 0.8) for b in range(1, n, 2)] + [(0.0, beat_s * 0.8)]
    if figure == "offbeats":
        return [(b * beat_s + beat_s / 2, beat_s * 0.35) for b in range(n)]
    if figure == "oom_pah":
        return [(b * beat_s, beat_s * 0.8) for b in range(1, n)]
    if figure == "stabs":
        return [(s * beat_s / 4, beat_s * 0.4) for s in (0, 3, 6, 10, 12) if s < 4 * n]
    if figure == "bossa":
        return [(s * beat_s / 4, beat_s * 0.7) for s in (0, 3, 6, 10, 12) if s < 4 * n]
    raise ValueError(f"unknown comping figure {figure!r}")


def _bass_notes(spec: Style, beat_s: float, tones: list[int], rng) -> list[tuple[float, float, int]]:
    """(onset, length, semitones above the chord root) of the bass notes within one bar."""
    n = spec.beats_per_bar
    fifth = 7
    figure = spec.bass
    if figure == "whole":
        return [(0.0, n * beat_s * 0.95, 0)]
    if figure == "eighths":
        return [(e * beat_s / 2, beat_s * 0.45, 0) for e in range(2 * n)]
    if figure == "offbeat_eighths":
        return [(b * beat_s + beat_s / 2, beat_s * 0.45, 0) for b in range(n)]
    if figure == "root_fifth":
        return [(b * beat_s, beat_s * 0.9, 0 if b % 2 == 0 else fifth) for b in range(n)]
    if figure == "funk":
        return [(s * beat_s / 4, beat_s * 0.3, iv) for s, iv in ((0, 0), (3, 0), (6, 12), (10, fifth), (14, 0))]
    if figure == "bossa":
        # (onset, length) in beats: the dotted root-fifth figure of the bossa nova
        figure_beats = ((0.0, 1.4, 0), (1.5, 0.5, fifth), (2.0, 1.4, fifth), (3.5, 0.5, 0))
        return [(on * beat_s, length * beat_s, interval) for on, length, interval in figure_beats]
    if figure == "walking":
        third = (tones[1] - tones[0]) % 12
        steps = [0, third, fifth, int(rng.choice([10, 11, 2]))][:n]
        return [(b * beat_s, beat_s * 0.9, iv) for b, iv in enumerate(steps)]
    raise ValueError(f"unknown bass figure {figure!r}")


def _melody_bar(track, spec, bar_start, beat_s, tonic, scale, chord_tones, pitch, velocity, rng) -> int:
    """Add one bar of melody: chord tones on the beats, scale steps between; returns the last pitch."""
    n = spec.beats_per_bar
    slots = [b * 2 for b in range(n)] + ([b * 2 + 1 for b in range(n) if rng.random() < 0.5])
    in_key = [p for p in range(60, 85) if (p - tonic) % 12 in scale]
    for slot in sorted(slots):
        on_beat = slot % 2 == 0
        candidates = [p for p in in_key if p % 12 in chord_tones] if on_beat else in_key
        near = [p for p in candidates if abs(p - pitch) <= 5] or candidates
        pitch = int(rng.choice(near))
        length = beat_s * (0.9 if on_beat and (slot + 1) not in slots else 0.45)
        track.notes.append(_note(pitch, bar_start + slot * beat_s / 2, length, velocity - 5, rng))
    return pitch


@cache
def find_soundfont() -> Path:
    """A General MIDI soundfont: $TINYMU_SOUNDFONT, else one in the Debian locations
    (FluidR3 preferred, TimGM6mb as fallback)."""
    override = os.environ.get("TINYMU_SOUNDFONT")
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"TINYMU_SOUNDFONT={override} is not a file; point it at a GM .sf2 soundfont")
        return Path(override)
    for name in SOUNDFONT_PREFERENCE:
        for folder in SOUNDFONT_DIRS:
            path = Path(folder) / name
            if path.is_file():
                return path
    for folder in SOUNDFONT_DIRS:
        found = sorted(Path(folder).glob("*.sf2")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    raise FileNotFoundError(
        "No General MIDI soundfont found in /usr/share/sounds/sf2 or /usr/share/soundfonts; "
        "install one (apt-get install --no-install-recommends fluid-soundfont-gm timgm6mb-soundfont) "
        "or set TINYMU_SOUNDFONT to the path of a GM .sf2 file"
    )


@cache
def _soundfont_bytes(path: Path) -> bytes:
    return path.read_bytes()


def render_song(midi: pretty_midi.PrettyMIDI, duration_s: float, soundfont: Path | None = None) -> np.ndarray:
    """Render `midi` to mono float32 at 44.1 kHz, cut to `duration_s`, at the level its velocities give
    (one fixed gain, `MASTER_GAIN_DB`; peaks above -1 dBFS scaled down)."""
    import midirenderer  # optional dependency (training extra)

    buffer = io.BytesIO()
    midi.write(buffer)
    wav = midirenderer.render_wave_from(_soundfont_bytes(soundfont or find_soundfont()), buffer.getvalue())
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    wanted = int(round(duration_s * SAMPLE_RATE))
    mono = np.pad(mono[:wanted], (0, max(0, wanted - len(mono))))
    mono = mono * 10 ** (MASTER_GAIN_DB / 20)
    peak = float(np.max(np.abs(mono)))
    return (mono * min(1.0, PEAK_CEILING / peak) if peak > 0 else mono).astype(np.float32)


def write_song(out_dir: Path, seed: int, *, duration_s: float = 30.0, name: str | None = None, **choices) -> SongLabels:
    """Compose, render and write `<name>.wav` (16-bit PCM) and `<name>.json` (labels) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    midi, labels = make_song(seed, duration_s=duration_s, name=name, **choices)
    soundfont = find_soundfont()
    labels.soundfont = soundfont.name
    audio = render_song(midi, duration_s, soundfont)
    sf.write(out_dir / f"{labels.name}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    (out_dir / f"{labels.name}.json").write_text(labels.model_dump_json(indent=1))
    return labels


def set_plan(n: int, seed: int) -> list[dict]:
    """Choices for a balanced set of `n` clips: keys cycle through all 24, styles through every recipe,
    tempi spread over each style's range, a few drum-less takes of drummed styles."""
    rng = np.random.default_rng(seed)
    styles = sorted(STYLES)
    plan = []
    for i in range(n):
        style = STYLES[styles[(i * 7) % len(styles)]]  # 7 is coprime with the style count: varied order
        key = (i % 12 * 7 % 12, "major" if (i // 12) % 2 == 0 else "minor")  # circle of fifths, then minor
        low, high = style.tempo_range
        spread = (i * 0.618034 + rng.random() * 0.1) % 1.0  # golden-ratio stride covers the range evenly
        plan.append(dict(
            seed=seed * 1000 + i,
            name=f"clip_{i:03d}",
            style=style.name,
            key=key,
            tempo_bpm=round(low + spread * (high - low), 1),
            drums=None if i % 5 != 4 else False,
        ))
    return plan


def _write_planned(job: tuple[Path, float, dict]) -> SongLabels:
    out_dir, duration_s, choices = job
    json_path = out_dir / f"{choices['name']}.json"
    if json_path.exists() and (out_dir / f"{choices['name']}.wav").exists():
        try:
            labels = SongLabels.model_validate_json(json_path.read_text())
        except ValueError:  # written by an older generator: render again
            return write_song(out_dir, duration_s=duration_s, **choices)
        same = (labels.duration_s, labels.seed, labels.generator_version) == (duration_s, choices["seed"], GENERATOR_VERSION)
        if same and labels.soundfont == find_soundfont().name:
            return labels  # already rendered: generation is deterministic
    return write_song(out_dir, duration_s=duration_s, **choices)


def generate_set(out_dir: str | Path, n: int, seed: int = 0, duration_s: float = 30.0, workers: int = 2) -> list[SongLabels]:
    """Write `n` labelled clips (`clip_000.wav` + `.json` ...) into `out_dir`, reusing ones already there."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, duration_s, choices) for choices in set_plan(n, seed)]
    if workers <= 1:
        return [_write_planned(job) for job in tqdm(jobs, desc="rendering clips", unit="clip")]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_write_planned, jobs), total=n, desc="rendering clips", unit="clip"))


def load_labels(path: str | Path) -> SongLabels:
    """Labels stored beside a rendered clip (`x.wav` -> `x.json`)."""
    return SongLabels.model_validate_json(Path(path).with_suffix(".json").read_text())


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/synth")
    for labels in generate_set(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 4):
        print(json.dumps({k: getattr(labels, k) for k in ("name", "style", "tempo_bpm", "meter", "key")}))
