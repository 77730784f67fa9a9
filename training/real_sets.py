"""Real recordings from Debian packages, split by source before any training or tuning.

The shipped model learned our generator, not music; the only honest test is music
it never heard, from sources it never trained on. So the split is by whole
package and fixed here, in code, before anything is trained or tuned on it:

- held out (evaluation only, never trained or tuned on): `HELD_OUT`
- train-eligible: `TRAIN`

Labels are what we can stand behind: the genre a whole package is known to be
(source-level facts, the one label a listener would not dispute), and the DSP
readings our tools measure confidently (tempo class, mode; `training.augment`).
Everything else stays unknown, so no question is asked about it.

    python -m training.real_sets build --split heldout --out .cache/real-heldout
    python -m training.evaluate --checkpoint model/lm/shipped/tinymu-small.safetensors \\
        --data .cache/real-heldout --conditions audio,silence,noise --tasks multiple_choice

The audio is not ours: it is fetched in this set-up step (`apt-get download`,
never installed) into the given folder and never committed.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import typer

from training.augment import (
    audio_files,
    augment_recordings,
    cut_clips,
    fetch_debian_music,
)
from training.corpora import DEBIAN_DIR
from training.labels import ClipLabels, read_labels, write_labels


@dataclass(frozen=True)
class Source:
    package: str
    style: str | None  # the genre every recording of the package is known to be; None: not sure
    clips_per_file: int = 3
    music_under: str = ""  # only recordings whose path contains this (game packages hold sound effects too)
    archive: str = ""  # a zip (e.g. a Quake .pk3) inside the package that holds the music


# Fixed on 2026-12-04 before any training on real music. Never move a package between
# the two lists to improve a number: add new packages instead.
HELD_OUT = (
    Source("fretsonfire-songs-sectoid", "rock"),  # 4 rock/metal songs (Sectoid), mixes only
    Source("wesnoth-1.16-music", "orchestral", clips_per_file=2),  # 41 orchestral game-score tracks
    Source("singularity-music", "electronic"),  # 16 electronic/ambient tracks
)
TRAIN = (
    Source("fretsonfire-songs-muldjord", "rock", clips_per_file=8),  # 4 rock/metal songs (Muldjord)
    Source("widelands-data", "orchestral", clips_per_file=2, music_under="/data/music/"),  # orchestral game score
    Source("nexuiz-music", "electronic", archive="music.pk3"),  # electronic game soundtrack (in a .pk3 zip)
)
SPLITS = {"heldout": HELD_OUT, "train": TRAIN}
# Music the encoder may hear without labels: it only learns to predict the tagger's outputs on it
# (`training.tagger`), so no genre is claimed. Never a held-out package; added 2026-12-05.
UNLABELLED = TRAIN + (
    Source("hyperrogue-music", None, music_under="/music/"),  # 17 game tracks, several composers
    Source("warzone2100-music", None, music_under="/music/"),  # 30 tracks of three soundtracks
    Source("megaglest-data", None, music_under="/music/"),  # 9 faction and menu themes
)
EXTRA_STYLE_DISTRACTORS = ("jazz",)  # one genre none of the sources is, so three genres make four options

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real-recording sets split by source.")


@app.callback()
def _commands() -> None:
    """Real-recording sets split by source."""


def build_split(split: str, out_dir: Path, music_dir: Path, *, limit_files: int = 0, seed: int = 0) -> list[ClipLabels]:
    """Fetch the split's packages, cut and label clips, add source-level genres, write QA records.

    Writes OUT/labels_real.jsonl, OUT/test.jsonl (multiple choice, yes/no and open questions) and the clips
    under OUT/audio/real/."""
    labels: list[ClipLabels] = []
    for source in SPLITS[split]:
        files = recordings_of(source, music_dir)[: limit_files or None]
        clips = augment_recordings(files, out_dir / source.package, per_file=source.clips_per_file, seed=seed,
                                   dataset=source.package)
        # Clips live under OUT/<package>/audio/real/; records name them relative to OUT.
        labels += [replace(c, file_name=f"{source.package}/{c.file_name}", style=source.style) for c in clips]
    write_labels(out_dir, "real", labels)
    write_questions(labels, out_dir, seed=seed)
    return labels


def cut_unlabelled(out_dir: Path, music_dir: Path, *, per_file: int = 6) -> int:
    """Cut `per_file` clips from every recording of `UNLABELLED` into OUT/<package>/ (no analysis,
    no labels); returns the number of clips."""
    held_out = {source.package for source in HELD_OUT}
    clips = 0
    for source in UNLABELLED:
        assert source.package not in held_out, source.package
        (out_dir / source.package).mkdir(parents=True, exist_ok=True)
        for recording in recordings_of(source, music_dir):
            clips += len(cut_clips(recording, out_dir / source.package, per_file=per_file))
    return clips


def recordings_of(source: Source, music_dir: Path) -> list[Path]:
    """The music files of one source, fetched (and unzipped) on first use."""
    package_dir = music_dir / source.package
    if source.archive:
        unpacked = package_dir / "unpacked"
        if not unpacked.is_dir():
            if not package_dir.is_dir():
                fetch_debian_music(music_dir, [source.package])
            for archive in package_dir.rglob(source.archive):
                with zipfile.ZipFile(archive) as bundle:
                    bundle.extractall(unpacked)
        files = sorted(audio_files([unpacked]))
    else:
        files = [f for f in fetch_debian_music(music_dir, [source.package]) if source.package in f.parts]
    return [f for f in files if source.music_under in f.as_posix()]


def add_to_dataset(real_dir: Path, data_dir: Path, *, seed: int = 0) -> int:
    """Add the labelled real clips of `real_dir` (made by `build --split train`) to the training
    split of a synthetic data set, and rewrite its training questions over both.

    Each clip gets a label file beside it, as the synthetic clips have (the encoder's warm-up
    reads them). Returns the number of real clips added."""
    from training.dataset import SPLIT_SEED_OFFSET
    from training.qa import ValuePools, generate_qa, write_jsonl

    real = read_labels(real_dir, "real")
    target = data_dir / "audio" / "train"
    added = []
    for clip in real:
        source = real_dir / clip.file_name
        name = "real-" + clip.file_name.replace("/audio/real/", "-").replace("/", "-")
        if not (target / name).exists():
            shutil.copyfile(source, target / name)
        added.append(replace(clip, file_name=f"audio/train/{name}"))
        (target / name).with_suffix(".json").write_text(json.dumps(clip.to_json()))
    synthetic = [c for c in read_labels(data_dir, "train") if not Path(c.file_name).name.startswith("real-")]
    labels = synthetic + added
    pools = ValuePools.from_labels(labels + read_labels(data_dir, "val") + read_labels(data_dir, "test"))
    write_jsonl(generate_qa(labels, seed=seed + SPLIT_SEED_OFFSET["train"], pools=pools), data_dir / "train.jsonl")
    write_labels(data_dir, "train", labels)
    return len(added)


def write_questions(labels: list[ClipLabels], out_dir: Path, *, seed: int = 0) -> int:
    """Multiple-choice, yes/no and open questions about the clips, as OUT/test.jsonl."""
    from training.qa import ValuePools, generate_qa, write_jsonl

    # Three genres leave too few wrong options for a four-way question: add one genre that none of
    # these sources is, so every genre question offers all three genres and one more.
    pools = ValuePools.from_labels(labels)
    pools.values.setdefault("style", Counter()).update(EXTRA_STYLE_DISTRACTORS)
    records = generate_qa(labels, seed=seed, tasks=("multiple_choice", "binary", "open_qa"), pools=pools)
    return write_jsonl(records, out_dir / "test.jsonl")


@app.command()
def questions(data: Path = typer.Option(..., help="a folder made by `build`"), seed: int = typer.Option(0)) -> None:
    """Rewrite DATA/test.jsonl from DATA/labels_real.jsonl (no fetching or analysis)."""
    labels = read_labels(data, "real")
    typer.echo(f"{write_questions(labels, data, seed=seed)} questions about {len(labels)} clips")


@app.command()
def build(split: str = typer.Option("heldout", help="heldout or train"),
          out: Path = typer.Option(..., help="output folder: clips, labels, QA records (test.jsonl)"),
          music: Path = typer.Option(DEBIAN_DIR, help="where Debian packages are unpacked"),
          limit_files: int = typer.Option(0, help="at most this many recordings per package (0: all)"),
          seed: int = typer.Option(0)) -> None:
    """Build the real-recording set of SPLIT (fetches the packages if needed)."""
    if split not in SPLITS:
        raise typer.BadParameter(f"split must be one of {', '.join(SPLITS)}")
    out.mkdir(parents=True, exist_ok=True)
    labels = build_split(split, out, music, limit_files=limit_files, seed=seed)
    known = {f: sum(getattr(c, f) is not None for c in labels) for f in ("style", "tempo_bpm", "mode", "meter")}
    typer.echo(f"{len(labels)} clips from {len(SPLITS[split])} packages; known labels: {known}")


@app.command()
def unlabelled(out: Path = typer.Option(..., help="output folder for the clips"),
               music: Path = typer.Option(DEBIAN_DIR, help="where Debian packages are unpacked"),
               per_file: int = typer.Option(6, help="clips cut from each recording")) -> None:
    """Cut unlabelled clips for the encoder's distillation (tag them with `training.tagger`)."""
    typer.echo(f"{cut_unlabelled(out, music, per_file=per_file)} clips under {out}")


if __name__ == "__main__":
    app()
