"""The real-recording sets: split by whole source, and questions every clip can be asked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.errors import InputError

from training.labels import ClipLabels
from training.real_sets import HELD_OUT, TRAIN, write_questions


def test_held_out_sources_are_never_train_sources():
    held_out = {s.package for s in HELD_OUT}
    assert held_out and not held_out & {s.package for s in TRAIN}
    # Genre questions need every held-out source's genre known.
    assert all(s.style for s in HELD_OUT)


def test_three_genres_still_give_four_option_genre_questions(tmp_path):
    labels = [ClipLabels(file_name=f"{style}/{i}.wav", dataset=style, style=style, tempo_bpm=bpm, mode=mode)
              for style, bpm, mode in (("rock", 150.0, "minor"), ("orchestral", 70.0, "major"),
                                       ("electronic", 110.0, "minor"))
              for i in range(4)]
    write_questions(labels, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "test.jsonl").open()]
    genre = [r for r in records if r["task"] == "multiple_choice" and r["meta"]["attribute"] == "style"]
    assert len(genre) == len(labels)
    for record in genre:
        options = record["meta"]["options"]
        assert len(options) == 4 and len(set(options)) == 4
        truth = options[record["meta"]["answer"]]
        assert truth == record["target_text"].lower() and truth in {"rock", "orchestral", "electronic"}
        assert {"rock", "orchestral", "electronic"} <= set(options)  # the real genres compete with each other


def test_real_clips_join_the_training_split_with_labels_beside_them(tmp_path):
    import numpy as np
    import soundfile as sf

    from training.pretrain_encoder import label_targets, read_clip_labels

    data, real = tmp_path / "data", tmp_path / "real"
    (data / "audio" / "train").mkdir(parents=True)
    (real / "pkg" / "audio" / "real").mkdir(parents=True)
    synthetic = [ClipLabels(file_name=f"audio/train/s{i}.wav", style=style, mode="major", tempo_bpm=100.0,
                            instruments=("Acoustic Grand Piano",), families=("piano",), lead_instrument="Acoustic Grand Piano",
                            lead_family="piano", has_drums=False, energy="low")
                 for i, style in enumerate(("waltz", "pop", "bossa nova", "rock"))]
    for split, labels in (("train", synthetic), ("val", synthetic[:1]), ("test", synthetic[1:2])):
        (data / f"labels_{split}.jsonl").write_text("".join(json.dumps(c.to_json()) + "\n" for c in labels))
    for clip in synthetic:
        sf.write(data / clip.file_name, np.zeros(1600, "float32"), 16000)
        (data / clip.file_name).with_suffix(".json").write_text(json.dumps(clip.to_json()))
    sf.write(real / "pkg" / "audio" / "real" / "song-0.wav", np.zeros(1600, "float32"), 16000)
    heard = ClipLabels(file_name="pkg/audio/real/song-0.wav", dataset="pkg", style="orchestral", mode="minor")
    (real / "labels_real.jsonl").write_text(json.dumps(heard.to_json()) + "\n")

    from training.real_sets import add_to_dataset

    assert add_to_dataset(real, data) == 1
    records = [json.loads(line) for line in (data / "train.jsonl").open()]
    about_real = [r for r in records if "real-" in r["file_name"]]
    assert about_real and all((data / r["file_name"]).is_file() for r in about_real)
    genre = [r for r in about_real if r["task"] == "multiple_choice" and r["meta"]["attribute"] == "style"]
    assert genre and genre[0]["target_text"] == "orchestral"
    # Nothing is asked about what a real clip's labels do not say (its instruments).
    assert not [r for r in about_real if "instrument" in r["meta"]["attribute"]]
    # The encoder's warm-up reads the label beside the clip and learns nothing about its unknown families.
    files = sorted((data / "audio" / "train").glob("*.wav"))
    targets, _ = label_targets(read_clip_labels(files))
    real_row = [i for i, f in enumerate(files) if f.name.startswith("real-")][0]
    assert (targets["family"][real_row] == -1).all() and (targets["family"][:real_row] >= 0).all()


def test_no_held_out_package_is_heard_even_without_labels():
    from training.real_sets import UNLABELLED

    assert not {s.package for s in UNLABELLED} & {s.package for s in HELD_OUT}
    assert {s.package for s in TRAIN} <= {s.package for s in UNLABELLED}


def test_the_teacher_probe_fits_genres_on_train_clips_and_scores_another_set(tmp_path):
    from training.context_probe import teacher_probe

    def real_set(folder, n):
        folder.mkdir()
        clips = [ClipLabels(file_name=f"{style}/audio/real/{i}.wav", style=style)
                 for style in ("rock", "orchestral") for i in range(n)]
        (folder / "labels_real.jsonl").write_text("".join(json.dumps(c.to_json()) + "\n" for c in clips))
        # A tagger that hears "guitar" in rock and "strings" in orchestral music, with some noise.
        rng = np.random.default_rng(len(str(folder)))
        probs = {c.file_name: ([0.8, 0.1] if c.style == "rock" else [0.1, 0.7]) + rng.uniform(0, 0.2, 2) for c in clips}
        (folder / "tags.json").write_text(json.dumps({"tags": ["guitar", "strings"],
                                                      "clips": {k: v.tolist() for k, v in probs.items()}}))

    real_set(tmp_path / "train", 6)
    real_set(tmp_path / "heldout", 4)
    report = teacher_probe(tmp_path / "train", tmp_path / "heldout")
    assert report["teacher_clips"] == 8 and report["teacher_accuracy"] == 1.0
    assert report["teacher_confusion"]["rock"] == {"rock": 4}
    (tmp_path / "heldout" / "tags.json").unlink()
    with pytest.raises(InputError, match="training.tagger"):
        teacher_probe(tmp_path / "train", tmp_path / "heldout")
