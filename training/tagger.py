"""Soft labels from a tagger trained on real music (musicnn), for distillation into our encoder.

Our encoder has heard our generator and three real packages; musicnn's networks were
trained on real recordings (MagnaTagATune and the Million Song Dataset) and ship their
weights inside the PyPI wheel, so they run here offline. Their 100 tag probabilities
per clip (genre, instruments, voice, mood) become targets the encoder learns to predict
(`training.pretrain_encoder`), the "distil a pretrained tagger" step of the recipe.

musicnn needs TensorFlow 1.x-style graphs, so it runs at labelling time only, in its own
environment (its wheel pins numpy < 1.17, hence `--no-deps`; `make tagger` does this):

    python -m venv .cache/tagger-venv
    .cache/tagger-venv/bin/pip install 'tensorflow-cpu==2.15.1' 'numpy<2' librosa soundfile
    .cache/tagger-venv/bin/pip install --no-deps musicnn==0.1.0
    .cache/tagger-venv/bin/python -m training.tagger FOLDER     # writes FOLDER/tags.json

This module imports nothing of ours, so it runs in that environment. Output:
`{"models": [...], "tags": [100 names], "clips": {"relative/path.wav": [100 probabilities]}}`,
each probability the mean over the clip's 3-second patches. Files already in the output
are skipped, so a run can be resumed or extended.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

MODELS = ("MTT_musicnn", "MSD_musicnn")  # MagnaTagATune (instruments, mood) + Million Song Dataset (genres)
AUDIO_SUFFIXES = (".wav", ".ogg", ".flac", ".mp3", ".opus")
PATCH_SECONDS = 3.0  # the networks were trained on 3-second inputs


class Tagger:
    """One TensorFlow graph per musicnn model, built once and run on every clip."""

    def __init__(self, models=MODELS):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import librosa
        import tensorflow as tf
        from musicnn import configuration
        from musicnn import models as networks

        tf.compat.v1.disable_eager_execution()
        self.librosa, self.config = librosa, configuration
        self.frames = librosa.time_to_frames(PATCH_SECONDS, sr=configuration.SR, n_fft=configuration.FFT_SIZE,
                                             hop_length=configuration.FFT_HOP) + 1
        self.models, self.tags, self.sessions = list(models), [], []
        package_dir = Path(networks.__file__).parent
        for name in self.models:
            labels = configuration.MTT_LABELS if name.startswith("MTT") else configuration.MSD_LABELS
            graph = tf.Graph()
            with graph.as_default():
                x = tf.compat.v1.placeholder(tf.float32, [None, self.frames, configuration.N_MELS])
                training = tf.compat.v1.placeholder(tf.bool)
                with tf.name_scope("model"):  # the checkpoints' variable scope
                    probabilities = tf.nn.sigmoid(networks.define_model(x, training, name, len(labels))[0])
                session = tf.compat.v1.Session(graph=graph)
                tf.compat.v1.train.Saver().restore(session, f"{package_dir / name}/")
            self.sessions.append((session, x, training, probabilities))
            self.tags += [f"{name.split('_')[0]}:{label}" for label in labels]

    def patches(self, path: Path):
        """Log-mel patches [n, frames, mels] of the whole file, the way musicnn's training computed them."""
        import numpy as np

        c = self.config
        audio, _ = self.librosa.load(str(path), sr=c.SR)
        mel = self.librosa.feature.melspectrogram(y=audio, sr=c.SR, hop_length=c.FFT_HOP, n_fft=c.FFT_SIZE,
                                                  n_mels=c.N_MELS).T
        mel = np.log10(10000 * mel.astype(np.float16) + 1)
        if len(mel) < self.frames:  # a clip shorter than one patch: pad with silence (log10(1) = 0)
            mel = np.pad(mel, ((0, self.frames - len(mel)), (0, 0)))
        starts = range(0, len(mel) - self.frames + 1, self.frames)
        return np.stack([mel[s: s + self.frames] for s in starts]).astype(np.float32)

    def __call__(self, path: Path) -> list[float]:
        import numpy as np

        batch = self.patches(path)
        probs = []
        for session, x, training, probabilities in self.sessions:
            probs.append(session.run(probabilities, feed_dict={x: batch, training: False}).mean(axis=0))
        return [round(float(p), 4) for p in np.concatenate(probs)]


def tag_folder(folder: Path, out: Path, limit: int = 0) -> int:
    """Tag every audio file under `folder` not yet in `out`; returns how many were added."""
    from tqdm import tqdm

    done = json.loads(out.read_text()) if out.is_file() else {}
    clips = done.get("clips", {})
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    todo = [p for p in files if str(p.relative_to(folder)) not in clips][: limit or None]
    if not todo:
        return 0
    tagger = Tagger()
    for i, path in enumerate(tqdm(todo, desc="musicnn tags")):
        clips[str(path.relative_to(folder))] = tagger(path)
        if i % 200 == 199 or i == len(todo) - 1:  # save as it goes: a long run can be resumed
            out.write_text(json.dumps({"models": tagger.models, "tags": tagger.tags, "clips": clips}))
    return len(todo)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.tagger", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="clips to tag (searched recursively)")
    p.add_argument("--out", type=Path, help="tags file (default FOLDER/tags.json)")
    p.add_argument("--limit", type=int, default=0, help="at most this many new files (0: all)")
    args = p.parse_args(argv)
    added = tag_folder(args.folder, args.out or args.folder / "tags.json", args.limit)
    print(f"tagged {added} new files under {args.folder}")


if __name__ == "__main__":
    main()
