"""Does an encoder hear genre on music from sources it never saw? A linear probe.

Fits a logistic regression on clip features of the train-eligible real recordings
(`training.real_sets build --split train`) and scores it on the held-out sources
(`--split heldout`), for the checkpoint's audio encoder (clip-mean tokens) beside
plain timbre statistics (MFCC and spectral-contrast means and deviations, librosa)
in the same run. If the statistics beat the encoder, the encoder learned its
training sources rather than their genre.

    python -m training.bench genre_probe --checkpoint .cache/ship20/run/tinymu.safetensors
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table


def _clips(data: Path) -> tuple[list[str], list[str]]:
    from training.labels import read_labels

    labels = read_labels(data, "real")
    return [c.file_name for c in labels], [c.style for c in labels]


def encoder_features(checkpoint: str, data: Path, names: list[str]) -> np.ndarray:
    import torch

    from model.lm.checkpoints import load_checkpoint
    from training.dataset import load_clip

    model, _ = load_checkpoint(checkpoint)
    model.encoder.eval()
    with torch.no_grad():
        return np.stack([model.encoder(torch.from_numpy(load_clip(data / n))[None])[0].mean(0).numpy() for n in names])


def timbre_statistics(data: Path, names: list[str]) -> np.ndarray:
    import librosa

    from training.dataset import load_clip

    rows = []
    for name in names:
        audio = load_clip(data / name, rate=22050)
        mfcc = librosa.feature.mfcc(y=audio, sr=22050, n_mfcc=20)
        contrast = librosa.feature.spectral_contrast(y=audio, sr=22050)
        rows.append(np.concatenate([mfcc.mean(1), mfcc.std(1), contrast.mean(1), contrast.std(1)]))
    return np.stack(rows)


def probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> tuple[float, dict]:
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    # Strong regularisation and balanced classes: a few hundred clips, one source per genre.
    model = LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced").fit((train_x - mean) / std, train_y)
    predicted = model.predict((test_x - mean) / std)
    confusion = {g: dict(Counter(str(p) for p, t in zip(predicted, test_y) if t == g)) for g in sorted(set(test_y))}
    return float(np.mean(predicted == np.array(test_y))), confusion


def main(
    checkpoint: str = typer.Option(..., help="checkpoint whose audio encoder is probed"),
    train: Path = typer.Option(Path(".cache/real-train"), help="training.real_sets build --split train"),
    heldout: Path = typer.Option(Path(".cache/real-heldout"), help="training.real_sets build --split heldout"),
) -> None:
    """Genre of held-out real sources from a probe on the encoder vs on timbre statistics."""
    train_names, train_y = _clips(train)
    test_names, test_y = _clips(heldout)
    majority = Counter(test_y).most_common(1)[0][1] / len(test_y)
    table = Table(title=f"genre probe: {len(train_y)} train clips -> {len(test_y)} held-out clips "
                        f"(majority class {100 * majority:.1f} %)")
    for column in ("features", "accuracy", "held-out genre -> predicted"):
        table.add_column(column)
    for label, featurise in (("encoder tokens (clip mean)", lambda d, n: encoder_features(checkpoint, d, n)),
                             ("MFCC + spectral contrast", timbre_statistics)):
        accuracy, confusion = probe(featurise(train, train_names), train_y, featurise(heldout, test_names), test_y)
        table.add_row(label, f"{100 * accuracy:.1f} %", "; ".join(f"{g}: {c}" for g, c in confusion.items()))
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
