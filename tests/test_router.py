"""The question router: labelled-set accuracy and the behaviours its rules promise."""

import pytest

from agent_tools.router import RouteDecision, route
from training.bench.router import accuracy, evaluate, load_questions


def test_labelled_set_is_large_varied_and_split():
    rows = load_questions()
    assert len(rows) >= 200
    assert {r["split"] for r in rows} == {"dev", "heldout"}
    assert {"plain", "paraphrase", "casual", "typo", "mixed"} <= {r["style"] for r in rows}
    assert sum(len(r["backends"]) > 1 for r in rows) >= 40  # plenty of mixed questions
    assert len({r["question"] for r in rows}) == len(rows)


def test_held_out_accuracy_meets_target():
    results = evaluate()
    heldout = [r for r in results if r.split == "heldout"]
    assert len(heldout) >= 60
    assert accuracy(heldout) >= 0.95
    assert accuracy([r for r in results if r.split == "dev"]) >= 0.95


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How many beats per minute is it?", ["tempo"]),  # the phrase wins over "beats"
        ("Where are the beats?", ["beats"]),
        ("What's the tmepo?", ["tempo"]),  # swapped letters
        ("whats the progresion", ["chords"]),  # dropped letter
        ("time sigature?", ["beats"]),
        ("Is it in 7/8?", ["beats"]),
        ("Is it a ii-V-I?", ["chords"]),
        ("Mostly major or minor chords?", ["chords"]),  # major/minor describe the chords here
        ("Is it major or minor?", ["key"]),
        ("Which chords does the guitar play?", ["chords"]),  # guitar is the subject, not the question
        ("Is there a guitar in it?", ["model"]),
        ("Tell me about this recording.", ["model"]),  # no cue: the generalist answers
        ("What's the key, and is it a happy song?", ["key", "model"]),
        ("Show me the mood", ["model"]),  # "show" is not a typo of "slow"
    ],
)
def test_route_examples(question, expected):
    assert route(question).backends == expected


def test_decision_explains_itself():
    decision = route("What's the bpm and which instruments play?")
    assert isinstance(decision, RouteDecision)
    assert decision.backends == ["tempo", "model"]
    assert decision.dsp == ["tempo"] and decision.uses_model
    assert "tempo:bpm" in decision.cues and any(c.startswith("model:instrument") for c in decision.cues)
    assert "madmom" in decision.reason and "TinyMU" in decision.reason
