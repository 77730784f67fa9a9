"""QA generation from labels: record format, balance, variety, filters, loaders, answer judging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from model.errors import InputError
from training import synth
from training.labels import ClipLabels, chord_loop, tempo_class
from training.qa import (
    LETTERS,
    TASKS,
    QARecord,
    ValuePools,
    binary_answer,
    generate_qa,
    load_records,
    open_answer_is_right,
    passes_filters,
    write_jsonl,
)
from training.wording_baseline import wording_baselines


def composed_labels(n: int, seed: int, prefix: str = "clip") -> list[ClipLabels]:
    """Labels of `n` planned synthetic songs (composed, not rendered: labels only)."""
    labels = []
    for choice in synth.set_plan(n, seed):
        _, song = synth.make_song(choice["seed"], duration_s=10.0, style=choice["style"], key=choice["key"],
                                  tempo_bpm=choice["tempo_bpm"], drums=choice["drums"], name=f"{prefix}_{choice['name']}")
        labels.append(ClipLabels.from_metadata(song.model_dump(), file_name=f"{song.name}.wav"))
    return labels


@pytest.fixture(scope="module")
def labels() -> list[ClipLabels]:
    return composed_labels(150, seed=3)


@pytest.fixture(scope="module")
def records(labels) -> list[QARecord]:
    return generate_qa(labels, seed=5)


def test_labels_from_synth_metadata_keep_every_field():
    _, song = synth.make_song(7, duration_s=10.0, style="waltz", tempo_bpm=150.0, key=(2, "minor"))
    clip = ClipLabels.from_metadata(song.model_dump(), file_name="x.wav")
    assert clip.tempo_bpm == 150.0 and clip.tempo_class == "fast" and clip.meter == "3/4"
    assert clip.key == "D minor" and clip.style == "waltz"
    assert clip.lead_instrument == song.lead_instrument
    assert clip.has_drums == song.has_drums
    assert len(clip.instruments) == len([i for i in song.instruments if i.role != "drums"])
    assert clip.lead_family == next(i.family.lower() for i in song.instruments if i.role == "lead")
    heard = [s.label for s in song.chords if s.start_s < 10.0]
    assert clip.chords[0].startswith("D") and clip.chords[0].endswith("m")  # the loop starts on the minor tonic
    assert len(clip.chords) <= len(heard)
    assert ClipLabels.from_json(json.loads(json.dumps(clip.to_json()))) == clip


def test_chord_loop_and_tempo_class_bounds():
    assert chord_loop(["Am", "Am", "F", "C", "G", "Am", "F", "C", "G", "Am"]) == ("Am", "F", "C", "G")
    assert chord_loop(["N", "C", "N", "C"]) == ("C",)
    assert [tempo_class(b) for b in (70, 89.9, 90, 130, 130.1)] == ["slow", "slow", "medium", "medium", "fast"]


def test_every_task_and_attribute_is_generated_in_the_musicskills_format(records, tmp_path):
    assert {r.task for r in records} == set(TASKS)
    attributes = {(r.meta or {}).get("attribute") for r in records}
    for wanted in ("lead_instrument", "lead_family", "instrument_families", "style", "key", "mode", "meter",
                   "tempo_class", "drums", "energy", "chords", "tempo"):
        assert any(wanted == a or wanted in (a or "").split("+") for a in attributes), wanted
    path = tmp_path / "qa.jsonl"
    write_jsonl(records, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert {"file_name", "input_text", "target_text", "dataset", "task"} <= set(first)
    assert load_records(path) == records


def test_multiple_choice_has_four_distinct_options_and_balanced_letters(records):
    choices = [r for r in records if r.task == "multiple_choice"]
    letters = Counter()
    for record in choices:
        meta = record.meta
        assert len(meta["options"]) == 4 and len(set(meta["options"])) == 4
        assert record.target_text == meta["options"][meta["answer"]]
        assert meta["kinds"].count("answer") == 1 and meta["kinds"][meta["answer"]] == "answer"
        assert set(meta["kinds"]) <= {"answer", "incorrect_related", "correct_unrelated", "incorrect_unrelated"}
        assert all(f"({letter}) {option}" in record.input_text for letter, option in zip(LETTERS, meta["options"]))
        assert record.input_text.rstrip().endswith("The correct answer is:")
        letters[meta["answer"]] += 1
    # Letters cycle through A-D per attribute, so the totals differ by at most one per attribute.
    n_attributes = len({r.meta["attribute"] for r in choices})
    assert max(letters.values()) - min(letters.values()) <= n_attributes
    kinds = Counter(k for r in choices for k in r.meta["kinds"])
    assert kinds["incorrect_related"] > 0 and kinds["correct_unrelated"] > 0 and kinds["incorrect_unrelated"] > 0


def test_key_options_are_the_same_set_whichever_is_true(records):
    for record in (r for r in records if r.meta.get("attribute") == "key" and r.task == "multiple_choice"):
        tonics = Counter(option.split()[0] for option in record.meta["options"])
        modes = Counter(option.split()[1] for option in record.meta["options"])
        assert sorted(tonics.values()) == [2, 2] and sorted(modes.values()) == [2, 2]


def test_yes_no_questions_are_balanced_per_value_asked(records):
    sides = defaultdict(Counter)
    for record in (r for r in records if r.task == "binary"):
        sides[(record.meta["attribute"], json.dumps(record.meta["value"]))][record.meta["answer"]] += 1
        assert binary_answer(record.target_text) == record.meta["answer"]
    assert sides and all(c["yes"] == c["no"] for c in sides.values())


def test_profile_questions_have_uniform_true_combinations(records):
    combos = defaultdict(Counter)
    for record in (r for r in records if "truth" in (r.meta or {})):
        combos[record.meta["attribute"]][json.dumps(record.meta["truth"], sort_keys=True)] += 1
    assert combos
    for counts in combos.values():
        assert len(set(counts.values())) == 1


def test_questions_are_worded_many_ways(records):
    wordings = defaultdict(set)
    for record in records:
        key = (record.task, record.meta.get("attribute"))
        wordings[key].add(record.meta.get("question", record.input_text) if record.task != "captioning" else record.input_text)
    assert len(wordings[("captioning", "caption")]) >= 6
    for (task, attribute), texts in wordings.items():
        if task in ("open_qa", "binary") and sum(1 for r in records if (r.task, r.meta.get("attribute")) == (task, attribute)) >= 20:
            assert len(texts) >= 3, (task, attribute)


def test_generation_is_deterministic_from_the_seed(labels):
    first = [r.to_json_line() for r in generate_qa(labels[:30], seed=1)]
    again = [r.to_json_line() for r in generate_qa(labels[:30], seed=1)]
    other = [r.to_json_line() for r in generate_qa(labels[:30], seed=2)]
    assert first == again and first != other


_QA_DIGEST = """
import hashlib
from training import synth
from training.labels import ClipLabels
from training.qa import generate_qa
labels = []
for choice in synth.set_plan(40, 3):
    _, song = synth.make_song(choice["seed"], duration_s=10.0, style=choice["style"], key=choice["key"],
                              tempo_bpm=choice["tempo_bpm"], drums=choice["drums"], name=choice["name"])
    labels.append(ClipLabels.from_metadata(song.model_dump(), file_name=song.name + ".wav"))
print(hashlib.sha1("".join(r.to_json_line() for r in generate_qa(labels, seed=1)).encode()).hexdigest())
"""


def test_generation_does_not_depend_on_the_process_hash_seed():
    """Python salts string hashes per process, so anything drawn while iterating a set of
    strings differs between runs; the dataset must not (found: yes/no family questions did)."""
    digests = {subprocess.run([sys.executable, "-c", _QA_DIGEST], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1, digests


def test_open_answers_are_judged_on_content(records, labels):
    opens = [r for r in records if r.task == "open_qa"]
    assert all(open_answer_is_right(r.meta, r.target_text) for r in opens)
    # The same answer judged against another clip's (different) value is wrong.
    wrong = 0
    for record in opens:
        other = next((o for o in opens if o.meta["attribute"] == record.meta["attribute"]
                      and o.meta["value"] != record.meta["value"]), None)
        if other is not None and record.meta["attribute"] != "tempo":
            assert not open_answer_is_right(other.meta, record.target_text), (record.target_text, other.meta)
            wrong += 1
    assert wrong > 100
    tempo = {"attribute": "tempo", "value": 120}
    assert open_answer_is_right(tempo, "About 124 BPM.") and not open_answer_is_right(tempo, "About 60 BPM.")


def test_captions_state_the_labels(records, labels):
    by_file = {clip.file_name: clip for clip in labels}
    for record in (r for r in records if r.task == "captioning"):
        clip = by_file[record.file_name]
        assert clip.style in record.target_text and clip.key in record.target_text
        assert str(int(round(clip.tempo_bpm))) in record.target_text


def test_llark_phrase_filters_drop_bad_text():
    base = dict(file_name="a.wav", dataset="x", task="open_qa")
    assert passes_filters(QARecord(input_text="What key is this in?", target_text="A minor.", **base))
    for question, answer in [("Who is the composer?", "Bach."), ("What is the title of this song?", "Yesterday."),
                             ("What is the duration of the clip?", "30 s."), ("Which album is it from?", "Abbey Road."),
                             ("What key is this in?", "Based on the provided metadata, A minor."),
                             ("What is the tempo?", "It is difficult to determine the tempo.")]:
        assert not passes_filters(QARecord(input_text=question, target_text=answer, **base)), question
    assert all(passes_filters(r) for r in generate_qa(composed_labels(10, seed=9), seed=0))


def test_real_musicskills_and_musiccaps_files_load_as_they_are(tmp_path):
    skills = [
        {"file_name": "fma/000002.mp3", "input_text": "Describe the music.", "target_text": "A lo-fi hip hop beat.",
         "dataset": "FMA", "task": "Captioning"},
        {"file_name": "mtt/123.mp3", "input_text": "Is there a guitar?", "target_text": "Yes.", "dataset": "MTT",
         "task": "yes_no", "extra_field": 1},
        {"file_name": "as/9.wav", "input_text": "Who is the artist?", "target_text": "Unknown.", "dataset": "AS",
         "task": "open-ended"},
    ]
    path = tmp_path / "skills.json"
    path.write_text(json.dumps(skills))
    loaded = load_records(path)
    assert [r.task for r in loaded] == ["captioning", "binary"]  # the artist question is filtered out
    assert len(load_records(path, apply_filters=False)) == 3
    caps = tmp_path / "musiccaps.jsonl"
    caps.write_text(json.dumps({"ytid": "-0Gj8-vB1q4", "start_s": 30, "caption": "A calm piano piece."}) + "\n")
    (record,) = load_records(caps)
    assert record.file_name == "-0Gj8-vB1q4.wav" and record.task == "captioning"
    assert record.target_text == "A calm piano piece."


def test_broken_record_files_raise_actionable_errors(tmp_path):
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(json.dumps({"file_name": "a.wav", "input_text": "q", "dataset": "d", "task": "binary"}) + "\n")
    with pytest.raises(InputError, match="line 1.*target_text"):
        load_records(missing)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text(json.dumps({"file_name": "a.wav", "input_text": "q", "target_text": "t", "dataset": "d",
                                   "task": "binary"}) + "\n{not json\n")
    with pytest.raises(InputError, match="line 2 is not JSON"):
        load_records(garbage)
    with pytest.raises(InputError, match="does not exist"):
        load_records(tmp_path / "nowhere.jsonl")
    with pytest.raises(InputError, match="unknown task"):
        generate_qa(composed_labels(2, seed=1), tasks=["karaoke"])


def test_partial_labels_ask_only_about_what_is_known():
    clip = ClipLabels(file_name="real.ogg", dataset="debian", tempo_bpm=97.0, key_tonic="G", mode="major",
                      meter="4/4", chords=("G", "C", "D"))
    records = generate_qa([clip] * 4, seed=0, pools=ValuePools.from_labels(composed_labels(40, seed=4)))
    attributes = {r.meta["attribute"] for r in records if r.task != "captioning"}
    assert attributes <= {"tempo", "tempo_class", "key", "mode", "meter", "chords", "mode+meter",
                          "mode+tempo_class", "meter+tempo_class"}
    assert "style" not in " ".join(r.target_text for r in records if r.task == "captioning")


def test_text_only_students_stay_near_chance_on_held_out_clips():
    train_labels = composed_labels(300, seed=21, prefix="train")
    test_labels = composed_labels(100, seed=22, prefix="test")
    pools = ValuePools.from_labels(train_labels + test_labels)
    scores = wording_baselines(generate_qa(train_labels, seed=1, pools=pools),
                               generate_qa(test_labels, seed=2, pools=pools))
    overall = scores["all"]
    assert overall["n"] > 600
    assert overall["option_prior"] < 0.32 and overall["logistic_regression"] < 0.33, overall


def test_family_questions_name_whole_family_words(records):
    """A single family must read as its word ("brass"), never spelled out ("b, r, a, s and s")."""
    from training.labels import GM_FAMILIES

    families = [r for r in records if (r.meta or {}).get("attribute") == "instrument_families"]
    assert families
    for record in families:
        if record.task == "multiple_choice":
            assert set(record.meta["options"]) <= set(GM_FAMILIES), record.meta["options"]
        text = record.input_text + " " + record.target_text
        assert not any(len(word) == 1 and word.isalpha() and word not in ("a", "A", "I")
                       for word in text.replace(",", " ").split()), text
