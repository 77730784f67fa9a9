"""Label real recordings with our own DSP tools, then ask questions about them (the LLark recipe).

Real music has no ground truth here, so we measure what the madmom tools
measure well (tempo, meter, key, chords) and leave everything else unknown
(`None`): no question is ever generated about instruments, style or energy of
a real clip. Confidence thresholds drop readings the tools are unsure of.

Set-up step (a command, never run at import): fetch free music from Debian
packages without installing them (`apt-get download` + `dpkg -x` into a cache
directory; the audio is not ours, so it stays out of the repository):

    python -m training.augment fetch --out .cache/debian-music
    python -m training.augment label --audio .cache/debian-music --out .cache/real --clips-per-file 3

`label` cuts 10 s clips out of each recording (16-bit WAV under OUT/audio/),
analyses each clip with `MusicAnalyzer` and writes `labels_real.jsonl` and
`real.jsonl` (QA records in the same format as the synthetic set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import typer
from tqdm import tqdm

from model.errors import InputError
from model.lm.measurements import Measurements
from training.labels import ClipLabels, chord_loop, chord_symbol, write_labels

# Free music in Debian main: Planet Blupi's soundtrack, Wesnoth's orchestral score, Frets on Fire rock songs.
DEFAULT_PACKAGES = ("planetblupi-music-ogg", "wesnoth-1.16-music", "fretsonfire-songs-muldjord")
AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3", ".oga", ".opus")
# Frets on Fire ships isolated instrument stems beside each mix ("song.ogg"); only the mix is music to label.
STEM_TRACKS = {"guitar", "rhythm", "drums", "bass", "preview"}

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real recordings labelled by our DSP tools.")


def fetch_debian_music(out_dir: str | Path, packages: Sequence[str] = DEFAULT_PACKAGES) -> list[Path]:
    """Unpack the packages under `out_dir/<package>` (`training.corpora.fetch_debian`, once each);
    returns the audio files of everything under `out_dir`."""
    from training.corpora import fetch_debian

    out = Path(out_dir)
    for package in packages:
        try:
            fetch_debian(package, out)
        except RuntimeError as error:
            raise InputError(f"{error} (run `apt-get update` first, or pick another package)") from error
    return sorted(audio_files([out]))


def audio_files(folders: Iterable[Path]) -> Iterable[Path]:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() and path.stem.lower() not in STEM_TRACKS:
                yield path


def labels_from_analysis(analysis, file_name: str, dataset: str = "debian") -> ClipLabels:
    """A `ClipLabels` holding only what the DSP tools measured confidently (the rest stays None).

    Tempo, meter and key pass the same confidence thresholds as the measurement sentence the
    model reads at inference (`Measurements.from_analysis`), so training and use agree."""
    if analysis.silent:
        return ClipLabels(file_name=file_name, dataset=dataset)
    measured = Measurements.from_analysis(analysis)
    tonic, mode = measured.key.split() if measured.key else (None, None)
    chords = analysis.chords
    loop = chord_loop(chord_symbol(label) for label in chords.progression if label not in ("N", "X"))
    return ClipLabels(
        file_name=file_name,
        dataset=dataset,
        tempo_bpm=measured.tempo_bpm,
        meter=measured.meter,
        key_tonic=tonic,
        mode=mode,
        chords=loop if chords.loop_repeats >= 1.5 and loop else None,
    )


def cut_clips(path: Path, out_dir: Path, *, clip_s: float = 10.0, per_file: int = 3) -> list[Path]:
    """Up to `per_file` clips of `clip_s` seconds, evenly spread over the recording, as WAV files."""
    from model.audio import load_audio

    audio = load_audio(path)
    total = audio.duration_s
    if total < clip_s:
        return []
    starts = np.linspace(0.0, total - clip_s, num=per_file + 2)[1:-1] if per_file > 1 else [max(0.0, (total - clip_s) / 2)]
    clips = []
    for i, start in enumerate(starts):
        first = int(round(start * audio.sample_rate))
        samples = audio.samples[first: first + int(round(clip_s * audio.sample_rate))]
        # Recordings in different folders often share a stem ("song.ogg"): name clips by folder too.
        target = out_dir / f"{_slug(path.parent.name)}-{_slug(path.stem)}-{i}.wav"
        sf.write(target, samples, audio.sample_rate, subtype="PCM_16")
        clips.append(target)
    return clips


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "clip"


def augment_recordings(recordings: Sequence[Path], out_dir: str | Path, *, clip_s: float = 10.0, per_file: int = 3,
                       seed: int = 0, dataset: str = "debian") -> list[ClipLabels]:
    """Cut, analyse and label clips of real recordings; writes `labels_real.jsonl` and `real.jsonl` in `out_dir`."""
    from model.audio import load_audio
    from model.dsp.analyzer import MusicAnalyzer
    from training.qa import generate_qa, write_jsonl

    out = Path(out_dir)
    audio_dir = out / "audio" / "real"
    audio_dir.mkdir(parents=True, exist_ok=True)
    analyzer = MusicAnalyzer()
    labels: list[ClipLabels] = []
    for recording in tqdm(recordings, desc="labelling recordings", unit="file"):
        for clip_path in cut_clips(Path(recording), audio_dir, clip_s=clip_s, per_file=per_file):
            analysis = analyzer.analyze(load_audio(clip_path))
            labels.append(labels_from_analysis(analysis, str(clip_path.relative_to(out)), dataset))
    write_labels(out, "real", labels)
    write_jsonl(generate_qa(labels, seed=seed, tasks=("open_qa", "multiple_choice", "binary")), out / "real.jsonl")
    return labels


@app.command()
def fetch(out: Path = typer.Option(Path(".cache/debian-music"), help="where to unpack the packages"),
          package: list[str] = typer.Option(list(DEFAULT_PACKAGES), help="Debian packages holding music")) -> None:
    """Download free music from Debian packages (no installation, no root needed)."""
    files = fetch_debian_music(out, package)
    typer.echo(f"{len(files)} audio files under {out}")


@app.command()
def label(audio: Path = typer.Option(..., help="a folder of recordings (searched recursively)"),
          out: Path = typer.Option(..., help="output folder for clips, labels and QA records"),
          clips_per_file: int = typer.Option(3), clip_seconds: float = typer.Option(10.0),
          limit: int = typer.Option(0, help="at most this many recordings (0: all)"), seed: int = typer.Option(0)) -> None:
    """Cut clips from real recordings, label them with the DSP tools and write QA records."""
    recordings = sorted(audio_files([audio]))
    if not recordings:
        raise InputError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {audio}; run `fetch` first")
    labels = augment_recordings(recordings[: limit or None], out, clip_s=clip_seconds, per_file=clips_per_file, seed=seed)
    known = {field: sum(getattr(c, field) is not None for c in labels) for field in ("tempo_bpm", "meter", "mode", "chords")}
    typer.echo(f"{len(labels)} clips labelled; known fields: {known}")


if __name__ == "__main__":
    app()
