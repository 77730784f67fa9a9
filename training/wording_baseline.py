"""Can the multiple-choice answers be guessed from the text alone? A check.

Two text-only "students" learn from the training split and answer the test
split without any audio:

- `option prior`: picks the option whose text (within its attribute) was the
  right answer most often in training: catches options that are right more
  often than one time in four.
- `logistic regression`: scores each option from hashed word and word-pair
  features of the question crossed with the option, the option's letter, and
  how much the option shares with the other options (a model that noticed
  "the answer is the option the distractors were built around" would gain
  from that one); the highest-scoring option is the answer.

Both should sit near 25 %. Run:
`python -m training.wording_baseline --train DIR/train.jsonl --test DIR/test.jsonl`.
"""

from __future__ import annotations

import argparse
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.qa import QARecord, load_records


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9#/]+", text.lower())


def _choice_records(records: Sequence[QARecord]) -> list[QARecord]:
    return [r for r in records if r.task == "multiple_choice" and r.meta and "options" in r.meta]


def option_prior_predictions(train: Sequence[QARecord], test: Sequence[QARecord], seed: int = 0) -> list[int]:
    right: Counter = Counter()
    shown: Counter = Counter()
    for record in train:
        for i, option in enumerate(record.meta["options"]):
            key = (record.meta["attribute"], option)
            shown[key] += 1
            right[key] += i == record.meta["answer"]
    rng = random.Random(seed)
    predictions = []
    for record in test:
        attribute = record.meta["attribute"]
        score = [(right[(attribute, o)] + 0.25) / (shown[(attribute, o)] + 1) for o in record.meta["options"]]
        predictions.append(max(range(4), key=lambda i: (score[i], rng.random())))
    return predictions


def _option_features(record: QARecord, index: int) -> list[str]:
    options = record.meta["options"]
    option_words = _words(options[index])
    question_words = _words(record.meta["question"])
    features = [f"o:{w}" for w in option_words]
    features += [f"oo:{a}_{b}" for a, b in zip(option_words, option_words[1:])]
    features += [f"qo:{q}_{o}" for q in question_words for o in option_words]
    features.append(f"letter:{index}")
    features.append(f"attr:{record.meta['attribute']}_len:{min(len(option_words), 8)}")
    shared = sum(len(set(option_words) & set(_words(other))) for j, other in enumerate(options) if j != index)
    features.append(f"shared:{min(shared, 6)}")
    return features


def logistic_regression_predictions(train: Sequence[QARecord], test: Sequence[QARecord]) -> list[int]:
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import LogisticRegression

    hasher = FeatureHasher(n_features=2**18, input_type="string", alternate_sign=False)
    rows = [_option_features(r, i) for r in train for i in range(4)]
    targets = [int(i == r.meta["answer"]) for r in train for i in range(4)]
    model = LogisticRegression(C=1.0, max_iter=1000, solver="liblinear")
    model.fit(hasher.transform(rows), targets)
    scores = model.decision_function(hasher.transform([_option_features(r, i) for r in test for i in range(4)]))
    return [int(i) for i in scores.reshape(-1, 4).argmax(axis=1)]


def wording_baselines(train: Sequence[QARecord], test: Sequence[QARecord]) -> dict[str, dict[str, float]]:
    """Accuracy of both text-only students on the test split's multiple-choice questions, overall
    ('all') and per attribute; chance is 0.25. Each entry: {'n', 'option_prior', 'logistic_regression'}."""
    train, test = _choice_records(train), _choice_records(test)
    if not train or not test:
        return {}
    predictions = {"option_prior": option_prior_predictions(train, test),
                   "logistic_regression": logistic_regression_predictions(train, test)}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(test):
        groups["all"].append(i)
        groups[record.meta["attribute"]].append(i)
    return {
        name: {"n": float(len(rows)),
               **{student: float(np.mean([predictions[student][i] == test[i].meta["answer"] for i in rows]))
                  for student in predictions}}
        for name, rows in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    args = parser.parse_args(argv)
    results = wording_baselines(load_records(args.train), load_records(args.test))
    n = results["all"]["n"]
    margin = 1.96 * math.sqrt(0.25 * 0.75 / max(n, 1))
    print(f"multiple-choice questions in test: {int(n)} (chance 25 %, 95 % band for a guesser: "
          f"{25 - 100 * margin:.1f}-{25 + 100 * margin:.1f} %)")
    print(f"{'attribute':28s} {'n':>5s} {'option prior':>13s} {'logistic reg.':>14s}")
    for attribute, scores in results.items():
        print(f"{attribute:28s} {int(scores['n']):5d} {100 * scores['option_prior']:12.1f}% "
              f"{100 * scores['logistic_regression']:13.1f}%")


if __name__ == "__main__":
    main()
