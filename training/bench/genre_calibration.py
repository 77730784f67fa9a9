"""How often is the heard genre right, by how sure the clip classifier is? (sets STATED_GENRE_MIN_PROBABILITY)

A free-form answer names the genre the clip classifier hears only above a probability
(`model.lm.prompts.STATED_GENRE_MIN_PROBABILITY`). That threshold may not be tuned on the
held-out sets, so it is set here, on a calibration set from Debian packages that are
neither trained on nor held out (`CALIBRATION_PACKAGES`), whose genre comes from an
independent tagger trained on real music (musicnn, `training.tagger`), counted only
where the tagger is sure. Prints, per threshold, on how many clips a genre would be
named and how often it is right (the classifier's genre words at the coarse level of
the fact check, `training.factcheck.GENRE_OF`).

    python -m training.bench genre_calibration cut            # fetch the packages, cut clips
    make tagger && .cache/tagger-venv/bin/python -m training.tagger .cache/genre-calibration
    python -m training.bench genre_calibration score
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

CALIBRATION_PACKAGES = ("drascula-music", "asc-music")  # game music, in no list of training.real_sets
FOLDER = Path(".cache/genre-calibration")
# musicnn tags (MagnaTagATune and Million Song Dataset names) that say each coarse genre of our labels.
TAGS_OF_GENRE = {
    "orchestral": {"classical", "orchestra", "choral", "opera"},
    "electronic": {"electronic", "techno", "electronica", "electro", "house", "dance", "trance"},
    "rock": {"rock", "metal", "hard rock", "heavy metal", "punk", "classic rock", "alternative rock", "indie rock",
             "progressive rock"},
}
SURE_TAG = 0.3  # the tagger is sure of a genre when its best tag says it at least this much ...
SURE_MARGIN = 2.0  # ... and this many times the best tag of any other genre
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def cut(folder: Path = typer.Option(FOLDER)) -> None:
    """Fetch the calibration packages (apt-get download) and cut three 10 s clips from each recording."""
    import hashlib

    from training.augment import cut_clips, fetch_debian_music

    folder.mkdir(parents=True, exist_ok=True)
    # drascula-music ships one soundtrack per language folder, byte for byte: each recording counts once.
    recordings = list({hashlib.sha256(path.read_bytes()).digest(): path
                       for path in reversed(fetch_debian_music(folder / "packages", CALIBRATION_PACKAGES))}.values())
    clips = [clip for path in recordings for clip in cut_clips(path, folder, per_file=3)]
    typer.echo(f"{len(clips)} clips from {len(recordings)} recordings in {folder}")


def tagger_genre(probabilities: list[float], tags: list[str]) -> str | None:
    """The coarse genre the tagger is sure of, or None."""
    scores = {genre: max(p for p, tag in zip(probabilities, tags) if tag.split(":")[-1].lower() in names)
              for genre, names in TAGS_OF_GENRE.items()}
    (best, top), (_, second) = sorted(scores.items(), key=lambda item: -item[1])[:2]
    return best if top >= SURE_TAG and top >= SURE_MARGIN * second else None


@app.command()
def score(folder: Path = typer.Option(FOLDER),
          checkpoint: str = typer.Option("model/lm/shipped/tinymu-small.safetensors")) -> None:
    """The classifier's genre beside the tagger's, per threshold."""
    import torch

    from model.lm.checkpoints import load_checkpoint
    from training.dataset import load_clip
    from training.factcheck import GENRE_OF

    tagged = json.loads((folder / "tags.json").read_text())
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    rows = []  # (tagger's genre or None, classifier's coarse genre, its probability)
    with torch.inference_mode():
        for name, probabilities in sorted(tagged["clips"].items()):
            heard = model.heard_genre(model.encode_audio(torch.from_numpy(load_clip(folder / name))[None]))[0]
            if heard.word:  # the classifier names a genre
                rows.append((tagger_genre(probabilities, tagged["tags"]), GENRE_OF.get(heard.word, heard.word),
                             heard.probability))
    sure = sum(truth is not None for truth, _, _ in rows)
    table = Table(title=f"heard genre vs musicnn's on {len(rows)} calibration clips ({sure} where the tagger is sure)")
    for column in ("threshold", "genre named on", "tagger sure", "right"):
        table.add_column(column, justify="right")
    for threshold in THRESHOLDS:
        named = [(truth, said) for truth, said, p in rows if p >= threshold]
        checked = [(truth, said) for truth, said in named if truth is not None]
        right = sum(truth == said for truth, said in checked)
        table.add_row(f"{threshold:g}", str(len(named)), str(len(checked)),
                      f"{right} ({100 * right / len(checked):.0f} %)" if checked else "-")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="python -m training.bench genre_calibration")


if __name__ == "__main__":
    main()
