"""Reproducing TinyMU: synthetic labelled music, QA generation, training, evaluation and every benchmark."""
