"""Pitch-class names spelled the way musicians write them.

Keys take their conventional names (Db major, not C# major; G# minor, not Ab
minor) and chord roots follow the key's signature (Bb:maj in F major, A#:maj
only in sharp keys), so results read naturally to a person or an LLM.
"""

from __future__ import annotations

NEUTRAL = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
FLATS = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
SHARPS = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
MAJOR_KEY_TONICS = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MINOR_KEY_TONICS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"]
_NATURALS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def pitch_class(name: str) -> int:
    """0-11 for a note name such as 'C', 'F#', 'Bb', 'Db'."""
    return (_NATURALS[name[0].upper()] + name.count("#") - name[1:].count("b")) % 12


def key_name(tonic: int, mode: str) -> str:
    """'Eb major', 'G# minor' ... for a tonic pitch class and 'major' | 'minor'."""
    return f"{(MAJOR_KEY_TONICS if mode == 'major' else MINOR_KEY_TONICS)[tonic % 12]} {mode}"


def root_names(tonic: int | None = None, mode: str | None = None) -> list[str]:
    """The 12 pitch-class names to spell chord roots with in this key (neutral when the key is unknown)."""
    if tonic is None or mode is None:
        return NEUTRAL
    relative_major = tonic % 12 if mode == "major" else (tonic + 3) % 12
    if relative_major == 0:
        return NEUTRAL
    return FLATS if MAJOR_KEY_TONICS[relative_major] in ("F", "Bb", "Eb", "Ab", "Db") else SHARPS


def respell_chord(label: str, names: list[str]) -> str:
    """A Harte label with its root spelled from `names` ('A#:maj' -> 'Bb:maj'); 'N' and 'X' unchanged."""
    if ":" not in label:
        return label
    root, quality = label.split(":", 1)
    return f"{names[pitch_class(root)]}:{quality}"
