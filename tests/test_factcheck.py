"""The fact check of free-form answers: what a text states, and whether it is true of a clip."""

from training.factcheck import FactCount, is_yes_no, score_text, stated_facts, verdict
from training.labels import ClipLabels

CLIP = ClipLabels(file_name="a.wav", style="orchestral", tempo_bpm=70.0, key_tonic="D", mode="minor", has_drums=False)


def test_facts_are_read_from_a_caption():
    facts = stated_facts("A slow orchestral piece in D minor, without drums.")
    assert ("style", "orchestral") in facts and ("tempo_class", "slow") in facts
    assert ("key", "D minor") in facts and ("drums", "no") in facts
    assert ("mode", "minor") not in facts  # the key already says it


def test_a_genre_in_other_words_is_a_genre_fact_once():
    assert stated_facts("It is a symphony.") == [("style", "orchestral")]
    assert stated_facts("It is electric dance music.") == [("style", "electronic")]
    assert stated_facts("An orchestral, classical piece for orchestra.") == [("style", "orchestral")]
    assert stated_facts("Heavy metal, then hip hop.") == [("style", "hiphop"), ("style", "rock")]
    assert stated_facts("It is an electric guitar melody.") == []


def test_each_fact_is_scored_against_the_labels():
    count = FactCount()
    for attribute, value in stated_facts("Fast rock in F# major with drums, played on a piano."):
        count.add(attribute, verdict(attribute, value, CLIP))
    assert (count.true, count.false) == (0, 4)
    assert verdict("style", "classical", CLIP) is None or verdict("style", "orchestral", CLIP) is True
    assert verdict("tempo_class", "slow", ClipLabels(file_name="b.wav")) is None  # unknown: not counted
    flat = ClipLabels(file_name="c.wav", key_tonic="Db", mode="major")
    assert verdict("key", "C# major", flat) is True and verdict("key", "C# minor", flat) is False


def test_yes_no_replies_are_recognised():
    assert is_yes_no("No, that's not right.") and is_yes_no("Yes, definitely.") and is_yes_no("No.")
    assert not is_yes_no("Yes, there are drums and a bright brass section playing the melody.")
    assert not is_yes_no("An orchestral piece.")


def test_facts_in_a_reply_that_says_it_is_unsure_are_also_counted_apart():
    counts, doubted = FactCount(), FactCount()
    score_text("It is rock. This is only what it sounds like to me.", CLIP, counts, doubted)
    score_text("A slow orchestral piece.", CLIP, counts, doubted)
    assert (counts.true, counts.false) == (2, 1)  # the headline counts the guess too
    assert (doubted.true, doubted.false) == (0, 1)


def test_captions_are_shown_verbatim_in_a_table():
    from training.factcheck import captions_table

    shown = [{"file": "pkg/audio/real/song-1.wav", "measured": "Measured: key D minor.", "caption": "A slow piece | in D minor.",
              "labels": {"style": "orchestral", "tempo_class": None, "key": "D minor", "mode": "minor"}}]
    table = captions_table(shown).splitlines()
    assert len(table) == 3 and table[2] == "| song-1 | key D minor | orchestral, D minor | A slow piece / in D minor. |"


def test_non_words_are_the_words_a_decoder_made_up():
    from training.factcheck import fluency, non_words

    assert non_words("A waltz in Eb major at 120 BPM; the strings played a Dm chord. It isn't hiphop.") == []
    assert non_words("A walttala melody in Gmajolo, with drums.") == ["walttala", "Gmajolo"]
    counted = fluency(["A walttala melody.", "A slow waltz."])
    assert counted == {"words": 6, "non_words": 1, "replies_with_non_words": 1, "replies": 2}


def test_stray_numbers_are_numbers_the_measurements_do_not_state():
    from training.factcheck import stray_numbers

    report = {"answers": [{"measured": "Measured: tempo 120 BPM (medium), meter 3/4.",
                           "caption": "About 120 BPM in 3/4, with a 128BPM beat.",
                           "answers": {"q": "Around 83 BPM.", "r": "It moves at 12"}}]}
    # 120, 3, 4 measured; 128 and 83 are not; the 12 at the end was cut off by the token limit.
    assert stray_numbers(report) == {"numbers": 5, "not_measured": 2}


def test_a_saved_report_is_scored_again_against_the_labels():
    """`--rescore`: the replies of an earlier run, scored with this checker and these labels."""
    from training.factcheck import WHAT_QUESTIONS, score

    example = {"file": "a.wav", "measured": "Measured: key D minor.", "caption": "It is a symphony in D minor.",
               "answers": dict(zip(WHAT_QUESTIONS, ["Rock.", "No.", "Calm and slow."]))}
    report = score([example], {"a.wav": CLIP})
    assert (report["facts_true"], report["facts_false"]) == (3, 1)  # orchestral, D minor, slow true; rock false
    assert report["yes_no_replies"] == 1 and report["replies"] == 4
    assert report["answers"][0]["labels"]["style"] == "orchestral" and report["fluency"]["numbers"]["numbers"] == 0
