"""Key: the tonic's share of chord time beside the key CNN and the key profiles, scored on cached outputs.

    nice -n 10 python -m training.bench.dsp_keyroots [--out .cache/bench]

Our key errors on the tuning chorales are relative and neighbouring keys (docs/dsp.md). The chord
heard longest is usually the tonic, so each key's log-odds gets `w x` the share of chord time whose
root is its tonic (`model.dsp.analyzer._root_shares` on the chord CRF's segments). This scores w over
a grid on the tuning parts of the key-labelled sets (chorales, mma, synth); the held-out parts are
printed beside them and never used to choose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.audio import load_audio
from model.dsp import analyzer as A
from training.corpora import load_sets

WEIGHTS = [0, 1, 2, 3, 4, 6, 8, 16, 32]


def collect(out: Path, corpora: Path) -> list[tuple]:
    """(clip, log-odds of the CNN + profiles, root shares) per key-labelled clip, cached."""
    from training.bench.dsp import NETWORK_OUTPUTS, _analyze_from, synth_clips

    clips = [c for c in load_sets(corpora, ["chorales", "mma"]) + synth_clips(out) if c.key]
    cache = out / "dsp_keyroots"
    cache.mkdir(parents=True, exist_ok=True)
    analyzer, rows = None, []
    for c in clips:
        entry = cache / f"{c.set}_{c.name}_{A.NETWORKS_VERSION}.json"
        if not entry.exists():
            analyzer = analyzer or A.MusicAnalyzer()
            clip = load_audio(corpora / c.path)
            saved = np.load(out / "dsp_estimates" / "ours_networks" / f"{c.set}_{c.name}_{A.NETWORKS_VERSION}.npz")
            _analyze_from(analyzer, clip, {n: saved[n] for n in NETWORK_OUTPUTS})
            feats = analyzer._features(clip)
            cnn = A._cnn_probabilities_by_index(feats["key_probabilities"])
            log_odds = np.log(cnn + 1e-9) + A.PROFILE_WEIGHT * A._profile_correlations(feats["chroma"].mean(axis=0))
            entry.write_text(json.dumps({"log_odds": log_odds.tolist(), "roots": A._root_shares(analyzer._raw_chords(feats)).tolist()}))
        d = json.loads(entry.read_text())
        rows.append((c, np.array(d["log_odds"]), np.array(d["roots"])))
    return rows


def mirex(rows: list[tuple], weight: float, set_name: str, held_out: bool) -> float | None:
    import mir_eval

    scores = [mir_eval.key.weighted_score(c.key, A._key_name(int(np.argmax(lo + weight * np.tile(r, 2)))))
              for c, lo, r in rows if c.set == set_name and c.held_out == held_out]
    return float(np.mean(scores)) if scores else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.bench.dsp_keyroots", description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path(".cache/corpora"))
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"))
    args = parser.parse_args(argv)
    rows = collect(args.out, args.corpora)
    parts = [(s, h) for s in ("chorales", "mma", "synth") for h in (False, True) if mirex(rows, 0, s, h) is not None]
    print("| root-share weight | " + " | ".join(f"{s} {'held out' if h else 'tuning'}" for s, h in parts) + " |")
    print("|---" * (len(parts) + 1) + "|")
    for w in WEIGHTS:
        marker = " (analyzer)" if w == A.ROOT_SHARE_WEIGHT else ""
        print(f"| {w}{marker} | " + " | ".join(f"{mirex(rows, w, s, h):.3f}" for s, h in parts) + " |")
    for c, lo, r in rows:
        before, after = (A._key_name(int(np.argmax(lo + w * np.tile(r, 2)))) for w in (0, A.ROOT_SHARE_WEIGHT))
        if before != after and not c.held_out:
            print(f"tuning clip changed: {c.set}/{c.name} (label {c.key}): {before} -> {after}")


if __name__ == "__main__":
    main()
