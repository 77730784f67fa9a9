"""The calibration set's genre: musicnn's tags read as one of our coarse genres only where the tagger is sure."""

from training.bench.genre_calibration import tagger_genre

TAGS = ["MTT:classical", "MTT:rock", "MSD:electronic", "MSD:heavy metal", "MTT:piano"]


def test_the_tagger_genre_is_the_sure_one():
    assert tagger_genre([0.8, 0.05, 0.1, 0.02, 0.9], TAGS) == "orchestral"
    assert tagger_genre([0.1, 0.2, 0.05, 0.6, 0.1], TAGS) == "rock"  # any tag of the genre counts


def test_no_genre_where_the_tagger_is_unsure():
    assert tagger_genre([0.2, 0.1, 0.1, 0.1, 0.9], TAGS) is None  # no genre tag reaches 0.3
    assert tagger_genre([0.5, 0.05, 0.4, 0.05, 0.1], TAGS) is None  # two genres close together
