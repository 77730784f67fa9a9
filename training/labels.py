"""One label record per clip, whatever produced the labels.

`ClipLabels` is what question generation reads. The synthetic generator
(`training/synth.py`) knows every field; metadata augmentation of a real
recording with our DSP tools (`training/augment.py`) knows only some, and the
unknown ones stay ``None`` so no question is ever asked about them.

Derived classes used in questions are defined here once, with their bounds:

- tempo class: slow below 90 BPM, medium from 90 to 130 BPM, fast above 130 BPM.
  Clips within 4 BPM of a bound are "unclear" and get no tempo-class question,
  because a listener (or a model) could fairly answer either way.
- energy: low / medium / high; a numeric level in [0, 1] maps with bounds 0.4
  and 0.7, a MIDI velocity (1-127) with bounds 60 and 95.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# The tempo classes are defined where the model's measurement sentence uses them; re-exported here.
from model.lm.measurements import TEMPO_CLASS_BOUNDS_BPM, TEMPO_CLASSES, Measurements, tempo_class  # noqa: F401

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PITCH_CLASS_OF = {
    "C": 0, "B#": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "Fb": 4, "E#": 5, "F": 5,
    "F#": 6, "Gb": 6, "G": 7, "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11, "Cb": 11,
}
MODES = ("major", "minor")
METERS = ("3/4", "4/4")
TEMPO_CLASS_MARGIN_BPM = 4.0
ENERGY_LEVELS = ("low", "medium", "high")

# General MIDI instrument classes (program // 8), lower-cased, plus drums.
GM_FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects",
)
DRUMS_FAMILY = "drums"


def pitch_class(name: str) -> int:
    """Pitch class 0-11 of a note name such as 'A', 'Bb' or 'F#'."""
    key = name.strip()
    key = key[:1].upper() + key[1:].replace("♯", "#").replace("♭", "b")
    if key not in _PITCH_CLASS_OF:
        raise ValueError(f"not a note name: {name!r}")
    return _PITCH_CLASS_OF[key]


def tonic_name(pc: int) -> str:
    """Canonical spelling of a pitch class (sharps for C#/F#, flats otherwise)."""
    return PITCH_CLASSES[pc % 12]


def tempo_class_is_clear(bpm: float) -> bool:
    """False within TEMPO_CLASS_MARGIN_BPM of a class bound, where the class is a matter of taste."""
    return all(abs(bpm - bound) > TEMPO_CLASS_MARGIN_BPM for bound in TEMPO_CLASS_BOUNDS_BPM)


def energy_level(value: Any) -> str | None:
    """Map a label ('low'/'soft'/..., a level in [0, 1] or a MIDI velocity) to low/medium/high."""
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        aliases = {"soft": "low", "quiet": "low", "calm": "low", "moderate": "medium", "mid": "medium",
                   "loud": "high", "energetic": "high", "intense": "high"}
        word = aliases.get(word, word)
        return word if word in ENERGY_LEVELS else None
    level = float(value)
    low, high = (0.4, 0.7) if level <= 1.0 else (60.0, 95.0)
    return "low" if level < low else "high" if level >= high else "medium"


# --- chords -----------------------------------------------------------------

_QUALITY_SYMBOL = {
    "maj": "", "min": "m", "7": "7", "maj7": "maj7", "min7": "m7", "dim": "dim", "aug": "aug",
    "sus4": "sus4", "sus2": "sus2", "dim7": "dim7", "hdim7": "m7b5", "maj6": "6", "min6": "m6",
}


def chord_symbol(harte: str) -> str:
    """Lead-sheet symbol of a Harte label: 'A:min' -> 'Am', 'F:maj' -> 'F', 'G:7' -> 'G7'."""
    root, _, quality = harte.partition(":")
    quality = (quality or "maj").split("/")[0]
    return tonic_name(pitch_class(root)) + _QUALITY_SYMBOL.get(quality, quality)


def chord_loop(labels: Iterable[str]) -> tuple[str, ...]:
    """The shortest repeating cycle of a chord sequence, repeats and no-chords removed.

    ['Am', 'F', 'C', 'G', 'Am', 'F'] -> ('Am', 'F', 'C', 'G'); at most 8 chords.
    """
    seq: list[str] = []
    for label in labels:
        if label in ("N", "X", "") or (seq and seq[-1] == label):
            continue
        seq.append(label)
    if not seq:
        return ()
    for period in range(1, len(seq) + 1):
        if all(seq[i] == seq[i % period] for i in range(len(seq))):
            return tuple(seq[: min(period, 8)])
    return tuple(seq[:8])  # pragma: no cover - the loop always returns


def progression_text(loop: Iterable[str]) -> str:
    return " - ".join(loop)


# --- the record ---------------------------------------------------------------


@dataclass(frozen=True)
class ClipLabels:
    """What is known about one clip; ``None`` means unknown (never asked about)."""

    file_name: str
    dataset: str = "synthetic"
    tempo_bpm: float | None = None
    meter: str | None = None  # "3/4" or "4/4"
    key_tonic: str | None = None  # canonical spelling, see PITCH_CLASSES
    mode: str | None = None  # "major" or "minor"
    chords: tuple[str, ...] | None = None  # the chord loop heard, as lead-sheet symbols
    instruments: tuple[str, ...] | None = None  # GM program names, drums excluded
    families: tuple[str, ...] | None = None  # GM families of `instruments`
    lead_instrument: str | None = None
    lead_family: str | None = None
    style: str | None = None  # genre / groove label
    has_drums: bool | None = None
    energy: str | None = None  # low / medium / high

    @property
    def key(self) -> str | None:
        return f"{self.key_tonic} {self.mode}" if self.key_tonic and self.mode else None

    @property
    def tempo_class(self) -> str | None:
        return tempo_class(self.tempo_bpm) if self.tempo_bpm else None

    @property
    def tempo_class_is_clear(self) -> bool:
        return bool(self.tempo_bpm) and tempo_class_is_clear(self.tempo_bpm)

    def measurements(self) -> Measurements:
        """The labels the DSP tools measure, as the measurement sentence states them."""
        return Measurements(tempo_bpm=self.tempo_bpm, meter=self.meter, key=self.key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClipLabels:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("chords", "instruments", "families"):
            if fields.get(name) is not None:
                fields[name] = tuple(fields[name])
        return cls(**fields)

    def with_file_name(self, file_name: str) -> ClipLabels:
        return replace(self, file_name=file_name)

    @classmethod
    def from_metadata(
        cls,
        meta: Mapping[str, Any],
        *,
        file_name: str | None = None,
        dataset: str = "synthetic",
        window_s: float | None = 10.0,
    ) -> ClipLabels:
        """Read labels from a generator's or a tool's metadata dict.

        Accepts the field names of `training/synth.py` and common alternatives
        (tempo/bpm, time_signature, key as 'A minor' or 'A:min', genre/groove,
        instruments as names or dicts with program/family/is_lead). Chords are
        restricted to segments starting inside the first `window_s` seconds,
        because that is all the model hears.
        """
        get = lambda *names: next((meta[n] for n in names if meta.get(n) is not None), None)  # noqa: E731
        name = file_name or get("file_name", "audio", "path", "audio_path") or ""

        tempo = get("tempo_bpm", "tempo", "bpm")
        meter = get("meter", "time_signature")
        if isinstance(meter, int) or (isinstance(meter, str) and meter.isdigit()):
            meter = f"{int(meter)}/4"
        beats_per_bar = get("beats_per_bar")
        if meter is None and beats_per_bar:
            meter = f"{int(beats_per_bar)}/4"

        tonic, mode = _parse_key(get("key", "key_name"), get("key_tonic", "tonic"), get("mode", "key_mode"))
        chords = _parse_chords(get("chords", "chord_segments", "chord_progression"), window_s)
        instruments, families, lead, lead_family, drums_in_list = _parse_instruments(meta)
        has_drums = get("has_drums", "drums")
        if has_drums is None and drums_in_list:
            has_drums = True
        style = get("style", "genre", "groove")
        energy = energy_level(get("energy", "dynamics", "energy_level", "velocity"))
        return cls(
            file_name=str(name),
            dataset=str(get("dataset") or dataset),
            tempo_bpm=float(tempo) if tempo else None,
            meter=str(meter) if meter else None,
            key_tonic=tonic,
            mode=mode,
            chords=chords,
            instruments=instruments,
            families=families,
            lead_instrument=lead,
            lead_family=lead_family,
            style=str(style).strip().lower().replace("_", " ") if style else None,
            has_drums=bool(has_drums) if has_drums is not None else None,
            energy=energy,
        )


def _parse_key(key: Any, tonic: Any, mode: Any) -> tuple[str | None, str | None]:
    if isinstance(key, Mapping):
        tonic, mode = key.get("tonic", tonic), key.get("mode", mode)
    elif isinstance(key, str) and key.strip() and key.strip() != "N":
        match = re.match(r"^\s*([A-Ga-g][#b♯♭]?)\s*[: ]?\s*(maj(?:or)?|min(?:or)?|m)?\s*$", key)
        if match is None:
            raise ValueError(f"cannot read key {key!r}; use e.g. 'A minor' or 'A:min'")
        tonic = match.group(1)
        mode = mode or ("major" if match.group(2) in (None, "maj", "major") else "minor")
    if not tonic:
        return None, None
    mode = str(mode).lower() if mode else None
    mode = {"maj": "major", "min": "minor"}.get(mode, mode)
    return tonic_name(pitch_class(str(tonic))), mode if mode in MODES else None


def _parse_chords(chords: Any, window_s: float | None) -> tuple[str, ...] | None:
    if not chords:
        return None
    labels: list[str] = []
    for chord in chords:
        if isinstance(chord, str):
            label, start = chord, 0.0
        elif isinstance(chord, Mapping):
            label = chord.get("label") or chord.get("chord") or chord.get("name")
            start = float(chord.get("start_s", chord.get("start", 0.0)) or 0.0)
        else:  # (start, end, label)
            start, _, label = chord
        if window_s is not None and float(start) >= window_s:
            continue
        labels.append(label if label in ("N", "X") else chord_symbol(label) if ":" in label else label)
    loop = chord_loop(labels)
    return loop or None


def _gm_family(program: int) -> str:
    return GM_FAMILIES[int(program) // 8]


def _parse_instruments(meta: Mapping[str, Any]):
    """(instruments, families, lead, lead family, drums seen) from the many shapes labels come in."""
    raw = meta.get("instruments")
    names: list[str] = []
    families: list[str] = []
    lead = meta.get("lead_instrument") or meta.get("lead")
    lead_family = meta.get("lead_family")
    drums = False
    for item in raw or []:
        if isinstance(item, Mapping):
            if (item.get("is_drum") or item.get("is_drums") or item.get("role") == "drums"
                    or str(item.get("family", "")).lower() == DRUMS_FAMILY):
                drums = True
                continue
            name = item.get("name") or item.get("program_name")
            family = item.get("family")
            if family is None and item.get("program") is not None:
                family = _gm_family(item["program"])
            if name is None and item.get("program") is not None:
                import pretty_midi  # only needed for numeric programs

                name = pretty_midi.program_to_instrument_name(int(item["program"]))
            if item.get("is_lead") or item.get("role") in ("lead", "melody"):
                lead = lead or name
                lead_family = lead_family or family
        else:
            name, family = str(item), None
        names.append(str(name))
        if family:
            families.append(str(family).lower())
    explicit_families = meta.get("families") or meta.get("instrument_families")
    if explicit_families:
        families = [str(f).lower() for f in explicit_families if str(f).lower() != DRUMS_FAMILY]
        drums = drums or any(str(f).lower() == DRUMS_FAMILY for f in explicit_families)
    if lead and lead_family is None and names and families and len(names) == len(families) and lead in names:
        lead_family = families[names.index(lead)]
    unique = lambda xs: tuple(dict.fromkeys(xs)) or None  # noqa: E731
    return (unique(names), unique(families), str(lead) if lead else None,
            str(lead_family).lower() if lead_family else None, drums)


# --- label files --------------------------------------------------------------

def read_labels(folder: str | Path, split: str) -> list[ClipLabels]:
    """The clips' labels of `folder/labels_<split>.jsonl` (one ClipLabels per line)."""
    path = Path(folder) / f"labels_{split}.jsonl"
    return [ClipLabels.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write_labels(folder: str | Path, split: str, labels: Iterable[ClipLabels]) -> None:
    """Write `folder/labels_<split>.jsonl`, the file `read_labels` reads."""
    with (Path(folder) / f"labels_{split}.jsonl").open("w") as handle:
        for clip in labels:
            handle.write(json.dumps(clip.to_json()) + "\n")
