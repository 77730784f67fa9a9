"""A held-out set from another generator and another soundfont: Debian's `mma` arranger
(its groove library, written by other people than our `training.synth`), rendered with the
csound General MIDI bank (`csound-soundfont`), which no training or tuning step uses.

The model never trains on it. Labels come from what we ask mma to play: the tempo, the
key and its chords, the groove's meter (its library file says `Time 3` or `Time 4`), the
instrument families and drums found in the MIDI mma writes, and a style word for the
grooves whose genre is one our vocabulary names (50sRock is rock, BossaNova is bossa ...).

    python -m training.other_generator --out .cache/other-generator
    python -m training.evaluate --checkpoint CKPT --data .cache/other-generator \\
        --conditions audio,silence,noise --tasks multiple_choice,binary

Fixed on 2026-12-04 before the model was evaluated on it; do not tune on it.
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import soundfile as sf
import typer

from training.corpora import fetch_debian
from training.labels import (
    DRUMS_FAMILY,
    GM_FAMILIES,
    ClipLabels,
    tonic_name,
    write_labels,
)
from training.synth import STYLES

MMA_LIBRARY = Path("/usr/share/mma/lib/stdlib")
SOUNDFONT_PACKAGE = "csound-soundfont"
SOUNDFONT_FILE = "usr/share/sounds/sf2/sf_GMbank.sf2"
CLIP_S = 10.0
RATE = 44100

# mma groove -> the style word of our vocabulary a listener would give it. Only clear matches.
GROOVE_STYLES = {
    "50sRock": "rock", "60sRock": "rock", "BasicRock": "rock", "BubbleRock": "rock", "FolkRock": "rock",
    "SoftRock": "rock",
    "Waltz": "waltz", "FrenchWaltz": "waltz", "BroadwayWaltz": "waltz", "CountryWaltz": "waltz",
    "FastWaltz": "waltz", "VieneseWaltz": "waltz",
    "JazzWaltz": "jazz_waltz", "FastJazzWaltz": "jazz_waltz", "ModernJazzWaltz": "jazz_waltz",
    "BossaNova": "bossa",
    "Ballad": "ballad", "PianoBallad": "ballad", "PopBallad": "ballad", "RockBallad": "ballad",
    "GuitarBallad": "ballad",
    "CountrySwing": "country", "BlueGrass": "country", "HillCountry": "country", "SlowCountry": "country",
    "March": "march", "BWMarch": "march", "DixieMarch": "march",
    "BVFunk": "funk",
    "8Beat": "pop",
}
# Chords, one per bar: a cadence that states the mode (the minor one has its major dominant).
MAJOR_STEPS = ((0, ""), (5, ""), (7, ""), (0, ""))  # I IV V I
MINOR_STEPS = ((0, "m"), (5, "m"), (7, ""), (0, "m"))  # i iv V i

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@lru_cache(maxsize=4)
def groove_meters(library: Path = MMA_LIBRARY) -> dict[str, tuple[int | None, str]]:
    """(beats per bar, library file) of every mma groove in the library, by lower-cased name: the
    `Time` in force where its file defines it (None: defined before any Time). Read once."""
    meters: dict[str, tuple[int | None, str]] = {}
    for path in sorted(library.glob("*.mma")):
        time = None
        for line in path.read_text(errors="replace").splitlines():
            if match := re.match(r"\s*Time\s+(\d+)", line, re.IGNORECASE):
                time = int(match.group(1))
            if match := re.match(r"\s*DefGroove\s+(\S+)", line, re.IGNORECASE):
                meters.setdefault(match.group(1).lower(), (time, path.name))
    return meters


def groove_meter(groove: str, library: Path = MMA_LIBRARY) -> int:
    """Beats per bar of one mma groove."""
    if groove.lower() not in groove_meters(library):
        raise ValueError(f"no mma groove named {groove} in {library}")
    time, file = groove_meters(library)[groove.lower()]
    if time is None:
        raise ValueError(f"{file} defines {groove} before any Time statement")
    return time


def mma_source(groove: str, bpm: float, tonic: int, mode: str, bars: int) -> str:
    steps = MAJOR_STEPS if mode == "major" else MINOR_STEPS
    chords = [tonic_name(tonic + step) + quality for step, quality in steps]
    return "\n".join([f"Tempo {bpm:g}", f"Groove {groove}"] + [chords[i % len(chords)] for i in range(bars)]) + "\n"


def render_clip(source: str, soundfont: Path, out: Path) -> dict:
    """Arrange `source` with mma, render CLIP_S seconds of it; returns what the MIDI holds."""
    import pretty_midi

    from training.synth import render_song

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "song.mma").write_text(source)
        done = subprocess.run(["mma", "song.mma", "-f", "song.mid"], cwd=tmp, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mma failed: {done.stdout[-400:]} {done.stderr[-400:]}")
        midi = pretty_midi.PrettyMIDI(str(Path(tmp) / "song.mid"))
    heard = [i for i in midi.instruments if any(n.start < CLIP_S for n in i.notes)]
    sf.write(out, render_song(midi, CLIP_S, soundfont), RATE, subtype="PCM_16")
    return {"families": tuple(dict.fromkeys(GM_FAMILIES[i.program // 8] for i in heard if not i.is_drum)),
            "has_drums": any(i.is_drum for i in heard)}


def build(out: Path, *, per_groove: int = 2, seed: int = 0, grooves: dict[str, str] | None = None) -> list[ClipLabels]:
    """Render `per_groove` clips of every groove (default GROOVE_STYLES; one major, one minor, ...)
    into OUT/audio/test/, and write OUT/labels_test.jsonl and OUT/test.jsonl."""
    from training.qa import ValuePools, generate_qa, write_jsonl

    soundfont = fetch_debian(SOUNDFONT_PACKAGE) / SOUNDFONT_FILE
    rng = random.Random(seed)
    (out / "audio" / "test").mkdir(parents=True, exist_ok=True)
    labels = []
    for groove, style in sorted((grooves or GROOVE_STYLES).items()):
        beats = groove_meter(groove)
        low, high = STYLES[style].tempo_range
        for take in range(per_groove):
            mode = ("major", "minor")[take % 2]
            tonic, bpm = rng.randrange(12), float(rng.randrange(int(low), int(high) + 1))
            name = f"audio/test/{groove.lower()}-{take}.wav"
            bars = int(CLIP_S * bpm / 60 / beats) + 2
            heard = render_clip(mma_source(groove, bpm, tonic, mode, bars), soundfont, out / name)
            steps = MAJOR_STEPS if mode == "major" else MINOR_STEPS
            labels.append(ClipLabels(
                file_name=name, dataset="mma+csound", tempo_bpm=bpm, meter=f"{beats}/4", key_tonic=tonic_name(tonic),
                mode=mode, chords=tuple(dict.fromkeys(tonic_name(tonic + s) + q for s, q in steps)),
                families=tuple(f for f in heard["families"] if f != DRUMS_FAMILY) or None, style=style,
                has_drums=heard["has_drums"]))
    write_labels(out, "test", labels)
    records = generate_qa(labels, seed=seed, tasks=("multiple_choice", "binary", "open_qa", "captioning"),
                          pools=ValuePools.from_labels(labels))
    write_jsonl(records, out / "test.jsonl")
    return labels


@app.command()
def main(out: Path = typer.Option(Path(".cache/other-generator"), help="output folder"),
         per_groove: int = typer.Option(2, help="clips per groove (alternating major and minor)"),
         seed: int = typer.Option(0)) -> None:
    """Render the held-out mma + csound-soundfont set and its questions."""
    labels = build(out, per_groove=per_groove, seed=seed)
    typer.echo(f"{len(labels)} clips of {len(GROOVE_STYLES)} mma grooves in {out}")


if __name__ == "__main__":
    app()
