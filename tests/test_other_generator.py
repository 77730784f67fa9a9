"""The held-out other-generator set: mma grooves rendered with a soundfont nothing else uses."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from training.labels import read_labels
from training.other_generator import build, groove_meter
from training.qa import load_records


def test_meters_come_from_the_mma_library():
    assert groove_meter("Waltz") == 3 and groove_meter("JazzWaltz") == 3
    assert groove_meter("8Beat") == 4 and groove_meter("BossaNova") == 4


def test_build_renders_labelled_clips_and_their_questions(tmp_path):
    labels = build(tmp_path, per_groove=2, grooves={"Waltz": "waltz", "8Beat": "pop"})
    assert [c.mode for c in labels] == ["major", "minor", "major", "minor"]
    assert {c.meter for c in labels if c.style == "waltz"} == {"3/4"} and {c.meter for c in labels if c.style == "pop"} == {"4/4"}
    assert all(c.has_drums is not None and c.families for c in labels)
    for clip in labels:
        audio, rate = sf.read(tmp_path / clip.file_name)
        assert rate == 44100 and len(audio) == 10 * rate and np.sqrt(np.mean(audio**2)) > 0.01
        assert clip.chords[0].startswith(clip.key_tonic)  # the progression starts on the tonic
    assert read_labels(tmp_path, "test") == labels
    tasks = {r.task for r in load_records(tmp_path / "test.jsonl")}
    assert tasks == {"multiple_choice", "binary", "open_qa", "captioning"}
