"""Training package: the compact layout's loss, a tiny training run with resume, encoder
pretraining and projector alignment, all on a few clips rendered by our own generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.lm.config import preset
from model.lm.network import build_model
from training import qa, synth
from training.labels import ClipLabels, write_labels
from training.train import TextBatch, compact_loss, parse_args, train

CLIP_SECONDS = 6.0


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Four rendered clips with QA records: three clips train, one validates."""
    root = tmp_path_factory.mktemp("train_data")
    songs = [synth.write_song(root / "clips", 100 + i, duration_s=CLIP_SECONDS, name=f"c{i}", style=style)
             for i, style in enumerate(["rock", "waltz", "bossa", "ballad"])]
    labels = [ClipLabels.from_metadata(s.model_dump(), file_name=f"{s.name}.wav") for s in songs]
    records = qa.generate_qa(labels, seed=0, tasks=["multiple_choice", "binary"])
    qa.write_jsonl([r for r in records if r.file_name != "c3.wav"], root / "train.jsonl")
    qa.write_jsonl([r for r in records if r.file_name == "c3.wav"], root / "val.jsonl")
    write_labels(root, "train", labels[:3])
    write_labels(root, "val", labels[3:])
    return root


def _reference_batch(examples_prompt, examples_target, length=129):
    """Prompts and targets padded to the full reference length (129), as the reference code does."""
    def pad(rows):
        ids = torch.full((len(rows), length), 17, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask
    return (*pad(examples_prompt), *pad(examples_target))


def test_compact_layout_loss_equals_reference_layout():
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    audio = torch.randn(2, 7, model.cfg.encoder.output_dim)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    targets = [[20, 21, 22, 0], [23, 0]]
    p_ids, p_mask, t_ids, t_mask = _reference_batch(prompts, targets)
    with torch.no_grad():
        reference = model(p_ids, p_mask, t_ids, t_mask, audio_tokens=audio)
        # Compact: prompts padded to the longest + 1, targets to the longest.
        cp_ids, cp_mask = p_ids[:, :6], p_mask[:, :6]
        ct_ids, ct_mask = t_ids[:, :4], t_mask[:, :4]
        compact = compact_loss(model, audio, TextBatch(cp_ids, cp_mask, ct_ids, ct_mask))
    assert torch.isfinite(reference)
    assert compact.item() == pytest.approx(reference.item(), rel=1e-4, abs=1e-5)


def test_tiny_training_lowers_loss_resumes_and_loads_into_engine(tiny_data, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(tiny_data), "--out", str(out), "--preset", "tiny", "--mode", "full", "--lr", "3e-3",
              "--batch", "8", "--micro-batch", "4", "--eval-every", "4", "--save-every", "4", "--quiet"]
    first = train(parse_args(common + ["--max-steps", "8"]))
    assert first["steps"] == 8
    progress = json.loads((out / "state" / "progress.json").read_text())
    assert progress["step"] == 8
    val = progress["history"]["val"]
    assert val[-1][1] < val[0][1] - 0.5, f"validation loss did not fall: {val}"

    resumed = train(parse_args(common + ["--max-steps", "12", "--resume"]))
    assert resumed["steps"] == 12
    history = json.loads((out / "history.json").read_text())
    steps = [s for s, _ in history["train"]]
    assert steps == list(range(1, 13)), "resume must continue from step 9, not restart"
    assert (out / "loss.png").stat().st_size > 1000

    from model.lm.engine import load_engine

    engine = load_engine(str(out / "tinymu.safetensors"))
    assert engine.info().trained
    choice = engine.choose(np.zeros(16000 * 3, dtype=np.float32), "Which style is this?", ["rock", "waltz", "bossa nova"])
    assert sum(choice.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_same_seed_retrains_the_same_weights(tiny_data, tmp_path):
    """What makes `python -m training.ship` reproducible: align and LM training are deterministic
    for a seed on a CPU (different seeds must differ, or the check would prove nothing)."""
    from safetensors.torch import load_file

    from model.lm.checkpoints import save_checkpoint
    from training.align import align

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)

    def weights(seed: int, tag: str) -> dict[str, torch.Tensor]:
        aligned = tmp_path / f"aligned_{tag}.safetensors"
        align(tiny_data, str(init), aligned, steps=6, batch=3, seed=seed, quiet=True,
              features_file=tmp_path / "features.safetensors")
        out = tmp_path / f"run_{tag}"
        train(parse_args(["--data", str(tiny_data), "--out", str(out), "--init", str(aligned), "--mode", "lora",
                          "--lora-rank", "4", "--batch", "4", "--micro-batch", "4", "--max-steps", "3",
                          "--lr", "1e-3", "--seed", str(seed), "--eval-every", "3", "--quiet",
                          # The LM stage's own random draws: which records are kept, which rows get true words.
                          "--per-attribute", "3", "--true-word-share", "0.5"]))
        return load_file(str(out / "tinymu.safetensors"))

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_per_attribute_cap_gives_every_question_type_a_similar_share():
    from collections import Counter

    from training.train import balance_attributes

    def record(task, attribute, i):
        return {"task": task, "meta": {"attribute": attribute}, "file_name": f"c{i}.wav"}

    records = ([record("multiple_choice", "key", i) for i in range(50)]
               + [record("multiple_choice", "mode+meter", i) for i in range(4)]
               + [record("binary", "key", i) for i in range(20)])
    kept = balance_attributes(records, 10, seed=0)
    shares = Counter((r["task"], r["meta"]["attribute"]) for r in kept)
    assert shares == {("multiple_choice", "key"): 10, ("multiple_choice", "mode+meter"): 4, ("binary", "key"): 10}
    assert kept == [r for r in records if r in kept], "records keep their order"
    assert balance_attributes(records, 10, seed=0) == kept, "the draw is seeded"
    assert balance_attributes(records, 10, seed=1) != kept


def test_true_words_replace_the_audio_of_their_rows_only():
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    audio, other = torch.randn(2, 2, 7, model.cfg.encoder.output_dim)
    text = TextBatch(torch.tensor([[5, 6, 17], [7, 17, 17]]), torch.tensor([[1, 1, 0], [1, 0, 0]]),
                     torch.tensor([[20, 0], [21, 0]]), torch.tensor([[1, 1], [1, 1]]))
    words = torch.tensor([[30, 31, 32, 33, 34, 35, 36], [-1] * 7])
    with torch.no_grad():
        plain = compact_loss(model, audio, text, "sum")
        none_replaced = compact_loss(model, audio, text, "sum", torch.full((2, 7), -1))
        first_replaced = compact_loss(model, audio, text, "sum", words)
        other_audio = compact_loss(model, torch.stack([other[0], audio[1]]), text, "sum", words)
    assert none_replaced.item() == pytest.approx(plain.item(), rel=1e-6)
    assert first_replaced.item() != pytest.approx(plain.item(), rel=1e-3)
    assert other_audio.item() == pytest.approx(first_replaced.item(), rel=1e-6), "a replaced row ignores its audio"


def test_training_on_true_words_alone_leaves_the_projector_untouched(tiny_data, tmp_path):
    """With every row fed its clip's true slot words, no gradient reaches the projector: the
    wiring check of --true-word-share (a share of 0 must move it, or the check proves nothing)."""
    from model.lm.checkpoints import load_checkpoint, save_checkpoint

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)

    def projector_after(share: float) -> dict[str, torch.Tensor]:
        out = tmp_path / f"run_{share}"
        train(parse_args(["--data", str(tiny_data), "--out", str(out), "--init", str(init), "--mode", "projector",
                          "--batch", "4", "--micro-batch", "4", "--max-steps", "2", "--lr", "1e-2",
                          "--true-word-share", str(share), "--eval-every", "2", "--quiet"]))
        # The last weights, not best.safetensors (which may be the starting point).
        state = torch.load(out / "state" / "train_state.pt", weights_only=False)["trainable"]
        return {k.removeprefix("projector."): v for k, v in state.items()}

    start = load_checkpoint(init)[0].projector.state_dict()
    assert all(torch.equal(start[k], v) for k, v in projector_after(1.0).items())
    assert not all(torch.equal(start[k], v) for k, v in projector_after(0.0).items())


def test_lora_mode_trains_only_projector_and_adapters(tiny_data, tmp_path):
    from training.train import build_for_training, set_trainable

    cfg = parse_args(["--data", str(tiny_data), "--out", str(tmp_path), "--preset", "tiny", "--mode", "lora",
                      "--lora-rank", "4"])
    model = build_for_training(cfg)
    names = set_trainable(model, "lora")
    assert names and all(n.startswith("projector.") or ".lora_" in n for n in names)
    assert any(".lora_A" in n for n in names)


def test_projector_lr_zero_keeps_the_aligned_projector_and_trains_the_adapters(tiny_data, tmp_path):
    from model.errors import InputError
    from model.lm.checkpoints import load_checkpoint, save_checkpoint

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)
    out = tmp_path / "frozen"
    train(parse_args(["--data", str(tiny_data), "--out", str(out), "--init", str(init), "--mode", "lora",
                      "--lora-rank", "4", "--batch", "4", "--micro-batch", "4", "--max-steps", "2", "--lr", "1e-2",
                      "--projector-lr", "0", "--eval-every", "2", "--quiet"]))
    state = torch.load(out / "state" / "train_state.pt", weights_only=False)["trainable"]
    assert state and not any(k.startswith("projector.") for k in state)  # not even in the optimizer
    start, trained = load_checkpoint(init)[0], load_checkpoint(out / "tinymu.safetensors")[0]
    assert all(torch.equal(v, trained.projector.state_dict()[k]) for k, v in start.projector.state_dict().items())
    lora_b = [v for k, v in state.items() if ".lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapters (zero at the start) moved
    with pytest.raises(InputError, match="give it a --projector-lr above 0"):
        train(parse_args(["--data", str(tiny_data), "--out", str(tmp_path / "none"), "--init", str(init),
                          "--mode", "projector", "--projector-lr", "0", "--max-steps", "1", "--quiet"]))


def test_matpac_pretraining_lowers_its_loss(tiny_data):
    from training.pretrain_encoder import MatpacPretrainer, log_mels

    torch.manual_seed(0)
    encoder = build_model(preset("tiny")).encoder
    mels = log_mels(encoder, sorted((tiny_data / "clips").glob("*.wav")), CLIP_SECONDS)[:, :, :256].float()
    ssl = MatpacPretrainer(encoder)
    opt = torch.optim.Adam([p for p in ssl.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    predict, classify = [], []
    for step in range(25):
        generator.manual_seed(0)  # the same mask every step: the prediction loss must fall on it
        losses = ssl(mels, generator)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        ssl.update_teacher(step / 25)
        predict.append(losses["predict"].item())
        classify.append(losses["classify"].item())
    assert np.isfinite(predict + classify).all()
    # The teacher moves too, so the targets drift; the masked-latent error still has to shrink clearly.
    assert np.mean(predict[-5:]) < 0.8 * np.mean(predict[:5]), predict
    # The DINO-style head neither blows up nor ends worse than a uniform guess over the prototypes.
    assert max(classify) < 2 * np.log(ssl.cfg.prototypes)


def test_supervised_warm_up_has_a_lead_instrument_head():
    from training.labels import ClipLabels, write_labels
    from training.pretrain_encoder import label_targets

    clips = [ClipLabels(file_name="a.wav", lead_instrument="Tenor Sax"),
             ClipLabels(file_name="b.wav", lead_instrument="Flute"), ClipLabels(file_name="c.wav")]
    targets, classes = label_targets(clips)
    assert classes["lead_instrument"] == ["Flute", "Tenor Sax"]
    assert targets["lead_instrument"].tolist() == [1, 0, -1]  # unknown leads are left out of the loss


def test_pretrain_command_writes_an_encoder_checkpoint(tiny_data, tmp_path):
    from model.lm.checkpoints import load_checkpoint
    from training.pretrain_encoder import parse_args as pretrain_args
    from training.pretrain_encoder import pretrain

    out = tmp_path / "encoder.safetensors"
    report = pretrain(pretrain_args(["--data", str(tiny_data / "clips"), "--out", str(out), "--preset", "tiny",
                                     "--steps", "3", "--supervised-steps", "30", "--batch", "3",
                                     "--crop-frames", "256", "--quiet", "--no-probe"]))
    assert report["supervised_loss_last"] < report["supervised_loss_first"]
    model, header = load_checkpoint(out)
    assert not header.trained
    assert model.encoder.cfg.embed_dim == preset("tiny").encoder.embed_dim


def test_align_moves_audio_tokens_towards_label_words(tiny_data, tmp_path):
    from model.errors import InputError
    from model.lm.checkpoints import load_checkpoint, save_checkpoint
    from model.lm.smollm2 import load_tokenizer
    from training.align import SLOTS, align, slot_name_ids, slot_token_ids, slot_words
    from training.labels import ClipLabels, write_labels

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)
    report = align(tiny_data, str(init), tmp_path / "aligned.safetensors", steps=60, batch=3, lr=3e-3, quiet=True)
    assert report["loss_last"] < report["loss_first"] / 2
    labels = ClipLabels.from_metadata(json.loads((tiny_data / "clips" / "c1.json").read_text()))
    words = dict(zip(SLOTS, slot_words(labels)))
    assert words["style"] == "waltz" and words["meter"] == "3", words
    assert set(report["val_slot_accuracy"]) == set(SLOTS)
    plain, _ = load_checkpoint(tmp_path / "aligned.safetensors")
    assert plain.cfg.audio_vocabulary == ()  # the read-out is opt-in

    align(tiny_data, str(init), tmp_path / "read.safetensors", steps=2, batch=3, word_readout=True, quiet=True)
    read, _ = load_checkpoint(tmp_path / "read.safetensors")
    vocabulary = read.cfg.audio_vocabulary
    assert len(vocabulary) == len(set(vocabulary))
    assert set(slot_token_ids(load_tokenizer(read.cfg.lm_weights), labels)) <= set(vocabulary)

    report = align(tiny_data, str(init), tmp_path / "lab.safetensors", steps=2, batch=3, word_readout=True,
                   labelled=True, quiet=True)
    labelled, _ = load_checkpoint(tmp_path / "lab.safetensors")
    assert report["labelled"] and set(report["val_slot_accuracy"]) == set(SLOTS)
    assert set(slot_name_ids(load_tokenizer(read.cfg.lm_weights))) <= set(labelled.cfg.audio_vocabulary)

    report = align(tiny_data, str(init), tmp_path / "ctx.safetensors", steps=2, batch=3, context="key", quiet=True)
    context, _ = load_checkpoint(tmp_path / "ctx.safetensors")
    assert context.cfg.projector_context_classes == (24,) and context.projector.context_head.out_features == 24
    assert 0 <= report["val_slot_accuracy"]["key (context head)"] <= 1

    # Clip context: the key plus one classifier per other slot, as wide as the words that slot takes.
    report = align(tiny_data, str(init), tmp_path / "clip.safetensors", steps=2, batch=3, context="clip", quiet=True)
    clip, _ = load_checkpoint(tmp_path / "clip.safetensors")
    others = [s for s in SLOTS if s not in ("tonic", "mode")]
    assert clip.cfg.projector_context_classes == (24, *(report["slot_choices"][s] for s in others))
    assert {f"{s} (context head)" for s in ["key", *others]} <= set(report["val_slot_accuracy"])
    assert set(report["val_token_accuracy"]) == set(SLOTS)
    with pytest.raises(InputError, match="context must be one of"):
        align(tiny_data, str(init), tmp_path / "bad.safetensors", steps=1, context="song", quiet=True)


def test_the_genre_hint_names_the_genre_classes_in_the_order_the_classifier_numbers_them(tiny_data, tmp_path):
    from model.errors import InputError
    from model.lm.checkpoints import load_checkpoint, save_checkpoint
    from model.lm.smollm2 import load_tokenizer
    from training.align import SLOTS, align, clip_labels_in, slot_token_ids

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)
    align(tiny_data, str(init), tmp_path / "hint.safetensors", steps=2, batch=3, context="clip", hear_genre=True,
          quiet=True)
    model, _ = load_checkpoint(tmp_path / "hint.safetensors")
    assert sorted(model.cfg.heard_genre_words) == ["bossa", "rock", "waltz"]  # the three training clips' genres
    assert model.cfg.projector_context_classes[model.cfg.heard_genre_group] == 3
    # Class i is the i-th genre token in id order, as align numbers the classifier's targets.
    tokenizer = load_tokenizer(model.cfg.lm_weights)
    style = SLOTS.index("style")
    by_token = sorted((slot_token_ids(tokenizer, clip)[style], clip.style) for clip in clip_labels_in(tiny_data).values())
    assert model.cfg.heard_genre_words == tuple(word for _, word in by_token)
    with pytest.raises(InputError, match="needs the clip context"):
        align(tiny_data, str(init), tmp_path / "bad.safetensors", steps=1, context="key", hear_genre=True, quiet=True)


def test_training_states_the_true_genre_and_doubts_an_open_genre_answer_without_it():
    import random

    from training import qa_templates as T
    from training.train import HEARD_DROP, add_heard_genre

    labels = {f"c{i}.wav": ClipLabels(file_name=f"c{i}.wav", style=style)
              for i, style in enumerate(["rock", "jazz", None])}
    rng = random.Random(0)
    records = [{"file_name": f"c{rng.randrange(3)}.wav", "task": task, "input_text": "What genre is this?",
                "target_text": "It is rock.", "meta": {"attribute": "style"}}
               for task in ["open_qa", "multiple_choice"] * 500]
    hinted = add_heard_genre(records, labels, ("jazz", "rock", "waltz"), seed=0)
    stated = [h for h in hinted if h["input_text"].startswith("Heard: genre ")]
    for record, out in zip(records, hinted):
        genre = labels[record["file_name"]].style
        if out in stated:  # only ever the clip's own genre, in front of the prompt as the engine puts it
            assert out["input_text"] == f"Heard: genre {genre}. What genre is this?"
        else:
            assert out["input_text"] == record["input_text"]
        unsure = any(out["target_text"].endswith(p) for p in T.UNSURE_GENRE)
        assert unsure == (out not in stated and record["task"] == "open_qa")
    known = [r for r in records if labels[r["file_name"]].style]
    assert 1 - len(stated) / len(known) == pytest.approx(HEARD_DROP, abs=0.04)
    # A hint that would not fit the prompt layout is left out.
    assert not any(h["input_text"].startswith("Heard") for h in
                   add_heard_genre(records, labels, ("jazz", "rock"), seed=0, fits=lambda text: len(text) < 25))


def test_captions_state_only_what_the_prompt_told_and_what_the_ear_hears():
    from training import qa_templates as T
    from training.train import add_heard_genre, add_measurements, ground_captions

    clips = {f"c{i}.wav": ClipLabels(file_name=f"c{i}.wav", tempo_bpm=150.0, meter="3/4", key_tonic="F#", mode="minor",
                                     chords=("F#m", "D", "A", "E"), instruments=("Violin", "Cello"),
                                     lead_instrument="Violin", style="rock", has_drums=False, energy="high")
             for i in range(40)}
    records = [{"file_name": name, "task": task, "input_text": "Describe this music.", "target_text": "Old.",
                "meta": {"attribute": "caption" if task == "captioning" else "chords"}}
               for name in clips for task in ("captioning", "open_qa")]
    told = add_heard_genre(add_measurements(records, clips, share=0.7, seed=0), clips, ("rock", "jazz"), seed=0)
    grounded = ground_captions(told, clips, seed=0, readings=True, genre=True)
    captions = [r for r in grounded if r["task"] == "captioning"]
    assert len(captions) == len(clips)  # the ear's facts (instruments, drums, energy) leave something to say
    seen = {"key": 0, "tempo": 0, "genre": 0}
    for record in captions:
        prompt, text = record["input_text"], record["target_text"]
        assert ("F# minor" in text) == ("key F# minor" in prompt)
        assert ("150 BPM" in text) == ("tempo 150 BPM" in prompt)
        assert ("rock" in text) == prompt.startswith("Heard: genre rock.")
        assert "F#m" not in text and "chords" not in text  # no prompt states the chords
        assert "violin" in text.lower() and any(no in text for no in T.CAPTION_DRUMS[False])
        seen["key"] += "F# minor" in text
        seen["tempo"] += "150 BPM" in text
        seen["genre"] += "rock" in text
    assert all(0 < count < len(captions) for count in seen.values()), seen  # both cases occur
    # An open answer about chords always says it is unsure; nothing measures them for the prompt.
    assert all(r["target_text"] != "Old." for r in grounded if r["task"] == "open_qa")
    # Without measurements in training, the readings stay in the caption as labelled.
    plain = ground_captions(records, clips, seed=0, readings=False, genre=False)
    assert all("F# minor" in r["target_text"] and "rock" in r["target_text"] for r in plain if r["task"] == "captioning")


def test_labelled_layout_puts_each_slot_name_before_its_value():
    from model.lm.smollm2 import load_tokenizer
    from training.align import (
        SLOTS,
        naming_word,
        slot_name_ids,
        slot_positions,
        slot_targets,
    )

    values = list(range(1000, 1000 + len(SLOTS)))
    names = slot_name_ids(load_tokenizer("smollm2-gguf"))
    targets = slot_targets(values, 63, names).tolist()
    assert targets[:4] == [names[0], values[0], names[1], values[1]]
    assert targets[2 * len(SLOTS): 2 * len(SLOTS) + 2] == [names[0], values[0]]  # the cycle repeats
    assert slot_targets(values, 63).tolist()[:len(SLOTS) + 1] == values + values[:1]  # plain layout: values only
    slot, is_name = slot_positions(63, labelled=True)
    assert [targets[i] for i in range(63) if not is_name[i]] == [values[k] for k in slot[~is_name].tolist()]
    # Synth leads are told apart by their second word, other labels by their first.
    assert [naming_word(p) for p in ("square lead", "synth choir", "tenor sax", "synth lead")] == \
        ["square", "choir", "tenor", "lead"]


def test_every_family_of_a_four_family_clip_has_a_slot():
    from training.align import FAMILY_SLOTS, SLOTS, slot_words

    four = dict(zip(SLOTS, slot_words(ClipLabels(file_name="x.wav", families=("piano", "bass", "reed", "ensemble")))))
    # In GM order, so the layout is the same for every clip with these families.
    assert [four[slot] for slot in FAMILY_SLOTS] == ["piano", "bass", "ensemble", "reed"]
    two = dict(zip(SLOTS, slot_words(ClipLabels(file_name="y.wav", families=("organ", "bass")))))
    assert [two[slot] for slot in FAMILY_SLOTS] == ["organ", "bass", "none", "none"]


def test_labelled_layout_spells_the_key_as_the_answers_do():
    from model.lm.smollm2 import load_tokenizer
    from training.align import SLOTS, slot_name_ids, slot_targets, slot_token_ids
    from training.labels import ClipLabels, write_labels

    tokenizer = load_tokenizer("smollm2-gguf")

    def key_tokens(tonic: str, mode: str) -> list[int]:
        labels = ClipLabels(file_name="k.wav", key_tonic=tonic, mode=mode)
        stream = slot_targets(slot_token_ids(tokenizer, labels), 63, slot_name_ids(tokenizer, labels)).tolist()
        tonic_at = 2 * SLOTS.index("tonic") + 1
        return stream[tonic_at: tonic_at + 3]

    def answer(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    assert key_tokens("C#", "minor") == answer(" C# minor")  # the sharp is not lost to the tonic's first token
    assert key_tokens("Bb", "major") == answer(" Bb major")
    assert key_tokens("C", "minor") != key_tokens("C#", "minor")
    natural = key_tokens("C", "minor")
    assert [natural[0], natural[2]] == answer(" C minor")


def test_slot_values_are_the_tokens_the_answers_spell_them_with():
    from model.lm.smollm2 import load_tokenizer
    from training.align import _first_token

    tokenizer = load_tokenizer("smollm2-gguf")

    def answer_tokens(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    # The decoder matches a slot to an option by the token they share.
    assert _first_token(tokenizer, "3") in answer_tokens("a clip in 3/4 time")
    assert _first_token(tokenizer, "3") != _first_token(tokenizer, "4")  # the digit, not the space before it
    assert _first_token(tokenizer, "moderately") in answer_tokens("a medium-tempo, moderately energetic song")
    assert _first_token(tokenizer, "without") in answer_tokens("a tune in a minor key without drums")
    assert _first_token(tokenizer, "minor") in answer_tokens("a tune in a minor key without drums")


def test_true_words_are_the_clips_slot_words_in_the_labelled_layout(tiny_data):
    from model.lm.smollm2 import load_tokenizer
    from training.align import SLOTS, clip_labels_in, slot_name_ids, slot_token_ids
    from training.sweep import true_word_embeddings

    model = build_model(preset("tiny"))
    tokenizer = load_tokenizer("smollm2-gguf")
    labels = next(iter(clip_labels_in(tiny_data).values()))
    names, values = slot_name_ids(tokenizer, labels), slot_token_ids(tokenizer, labels)
    expected = [token for pair in zip(names, values) for token in pair]  # genre waltz solo reed ...
    with torch.no_grad():
        got = true_word_embeddings(model, tokenizer, labels, 2 * len(SLOTS))
        assert torch.equal(got, model.lm.get_input_embeddings().weight[expected])


def test_sweep_trains_each_run_and_scores_validation_choices(tiny_data, tmp_path):
    from model.lm.checkpoints import save_checkpoint
    from training import sweep

    init = save_checkpoint(build_model(preset("tiny")), tmp_path / "init.safetensors", trained=False)
    common = ["--data", str(tiny_data), "--init", str(init), "--features", str(tmp_path / "features.safetensors"),
              "--out", str(tmp_path / "sweep")]
    sweep.main(common + ["--true-words", "--run", '{"name": "a", "mode": "full", "lr": 3e-3, "max_steps": 2}',
                         "--run", f'{{"name": "b", "mode": "projector", "projector_lr": 1e-3, "max_steps": 1, '
                                  f'"init": "{init}"}}'])
    results = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    val_choices = [r for r in qa.load_records(tiny_data / "val.jsonl") if r.task == "multiple_choice"]
    assert [r["run"]["name"] for r in results] == ["a", "b"]
    for r in results:
        assert r["n"] == len(val_choices) > 0
        assert 0 <= r["audio"] <= 100 and 0 <= r["silence"] <= 100 and 0 <= r["true_words"] <= 100
    assert json.loads((tmp_path / "sweep" / "a" / "summary.json").read_text())["steps"] == 2
    with pytest.raises(SystemExit, match="unknown TrainConfig fields"):
        sweep.main(common + ["--run", '{"name": "c", "learning_rate": 1}'])


def test_training_with_measurements_marks_the_checkpoint_as_reading_them(tiny_data, tmp_path):
    from model.lm.engine import load_engine

    common = ["--data", str(tiny_data), "--preset", "tiny", "--mode", "full", "--batch", "4", "--micro-batch", "4",
              "--max-steps", "1", "--eval-every", "10", "--quiet"]
    train(parse_args(common + ["--out", str(tmp_path / "plain")]))
    train(parse_args(common + ["--out", str(tmp_path / "measured"), "--measured-share", "0.75"]))
    assert not load_engine(str(tmp_path / "plain" / "tinymu.safetensors")).info().reads_measurements
    assert load_engine(str(tmp_path / "measured" / "tinymu.safetensors")).info().reads_measurements


def test_the_warm_up_distils_the_taggers_probabilities_also_from_unlabelled_clips(tiny_data, tmp_path):
    import shutil

    from model.errors import InputError
    from training.pretrain_encoder import load_tags
    from training.pretrain_encoder import parse_args as pretrain_args
    from training.pretrain_encoder import pretrain

    clips, extra = tmp_path / "clips", tmp_path / "unlabelled"
    shutil.copytree(tiny_data / "clips", clips)
    extra.mkdir()
    for wav in sorted(clips.glob("*.wav"))[:2]:
        shutil.copy(wav, extra / f"real-{wav.name}")  # no label file beside these
    # What a tagger would say: "fast" and "loud" for the rock clip, "slow" and "quiet" for the others.
    names = ["tag:fast", "tag:loud", "tag:slow", "tag:quiet"]

    def write_tags(folder):
        probs = {w.name: [0.9, 0.8, 0.1, 0.1] if "c0" in w.name else [0.1, 0.2, 0.9, 0.7]
                 for w in sorted(folder.glob("*.wav")) if w.name != "c3.wav"}  # one clip left untagged
        (folder / "tags.json").write_text(json.dumps({"models": ["t"], "tags": names, "clips": probs}))

    write_tags(clips)
    write_tags(extra)
    files = sorted(clips.glob("*.wav")) + sorted(extra.glob("*.wav"))
    tags, tag_names = load_tags(files, [clips, extra])
    assert tag_names == names and tags.shape == (len(files), 4)
    untagged = [i for i, f in enumerate(files) if f.name == "c3.wav"]
    assert (tags[untagged] == -1).all() and (tags[[i for i in range(len(files)) if i not in untagged]] >= 0).all()
    assert load_tags(files, [tmp_path / "nowhere"]) is None

    report = pretrain(pretrain_args(["--data", str(clips), "--out", str(tmp_path / "enc.safetensors"),
                                     "--preset", "tiny", "--steps", "0", "--supervised-steps", "30", "--batch", "3",
                                     "--crop-frames", "256", "--quiet", "--no-probe", "--extra-audio", str(extra)]))
    assert report["clips"] == 6 and report["tagged_clips"] == 5
    assert report["supervised_loss_last"] < report["supervised_loss_first"]

    (extra / "tags.json").write_text(json.dumps({"models": ["u"], "tags": ["other"], "clips": {}}))
    with pytest.raises(InputError, match="other tagger models"):
        load_tags(files, [clips, extra])


def test_a_clip_of_unknown_genre_teaches_no_genre():
    from training.labels import ClipLabels
    from training.pretrain_encoder import label_targets

    targets, classes = label_targets([ClipLabels(file_name="a.wav", style="rock"), ClipLabels(file_name="b.wav")])
    assert classes["style"] == ["rock"] and targets["style"].tolist() == [0, -1]
