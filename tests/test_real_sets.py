"""The real-recording sets: split by whole source, and questions every clip can be asked."""

from __future__ import annotations

import json

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
