"""Route a music question to the backend that answers it best.

madmom measures tempo, key, chords and beats/meter precisely; TinyMU answers
everything a measurement cannot (instruments, timbre, genre, mood, free
description). `route(question)` reads the question's wording and returns a
`RouteDecision`: which backends to call, why, and the words that decided it.

How it reads a question, in three small steps:

1. Split it into lowercase word tokens and spell-correct each token against
   the cue vocabulary (optimal string alignment distance: one edit for words
   of 4-7 letters, two for longer ones, letter swaps only for 3-letter
   words), so "tmepo", "chrods" and "signiture" still count. Common English
   words that sit one edit away from a cue ("show" / "slow") are protected.
2. Match multi-word phrases first ("beats per minute", "time signature",
   "key signature", "sound like"), then single cue words with light stemming
   (chords, chordal; downbeat, downbeats), then patterns such as "3/4" or
   "I-IV-V".
3. DSP cues pick their DSP backends. Content cues (instruments, genre, mood,
   timbre, vocals) add the model. A question with no cue at all goes to the
   model, which is the generalist. "major"/"minor" are weak key cues: in
   "major or minor chords?" they describe chords, not the key.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field
from rapidfuzz.distance import OSA

from model.dsp.capabilities import CAPABILITIES

Backend = Literal["tempo", "key", "chords", "beats", "model"]
DSP_BACKENDS: tuple[Backend, ...] = ("tempo", "key", "chords", "beats")

# Why each backend is the right one; quoted in the routed answer.
BACKEND_REASONS: dict[Backend, str] = {
    **{kind: CAPABILITIES[kind].how for kind in DSP_BACKENDS},
    "model": "timbre, instruments, genre, mood and free description need TinyMU, the music-language model",
}

# Cue words per backend. Keep entries as base forms: stemming adds s/es/ed/ing/al.
WORD_CUES: dict[Backend, set[str]] = {
    "tempo": {
        "tempo", "bpm", "speed", "fast", "slow", "quick", "quickly", "pace", "paced", "brisk",
        "sluggish", "uptempo", "downtempo", "allegro", "andante", "adagio", "presto", "largo",
        "moderato", "metronome", "faster", "slower", "rapid", "accelerate", "ritardando",
    },
    "key": {
        "key", "scale", "mode", "tonic", "tonality", "tonal", "modulate", "modulation",
        "dorian", "aeolian", "mixolydian", "lydian", "phrygian", "ionian", "pentatonic", "capo",
    },
    "chords": {
        "chord", "harmony", "harmonies", "harmonic", "progression", "triad", "cadence",
        "turnaround", "arpeggio", "diminished", "augmented", "seventh", "voicing",
    },
    "beats": {
        "beat", "downbeat", "meter", "metre", "bar", "measure", "waltz", "pulse", "duple",
        "triple", "compound", "signature", "count", "counted", "counting",
    },
    "model": {
        # what is playing
        "instrument", "instrumentation", "instrumental", "timbre", "vocal", "vocalist", "voice",
        "singer", "singing", "sung", "lyrics", "speech", "choir", "orchestra", "orchestral",
        "acoustic", "electric", "electronic", "synth", "synthesizer", "production", "produced",
        "recording", "studio", "distortion", "reverb", "texture", "autotune",
        # what it is
        "genre", "style", "caption", "era", "decade", "rock", "pop", "jazz", "blues", "classical",
        "hiphop", "rap", "edm", "techno", "metal", "folk", "country", "reggae", "funk", "soul",
        "disco", "ambient", "punk", "soundtrack", "lofi", "ballad", "cinematic",
        # how it feels
        "mood", "vibe", "emotion", "emotional", "feeling", "atmosphere", "happy", "sad", "dark",
        "bright", "melancholic", "melancholy", "energetic", "energy", "calm", "chill", "relaxing",
        "relaxed", "aggressive", "upbeat", "angry", "romantic", "nostalgic", "dreamy", "eerie",
        "spooky", "epic", "peaceful", "joyful", "uplifting", "moody", "gloomy", "cheerful", "tense",
        "mellow", "intense", "somber", "sombre", "scary", "creepy", "danceable",
    },
}

# Phrases are matched before single words and consume their tokens, so the
# "beats" of "beats per minute" does not also ask for beat positions.
PHRASE_CUES: list[tuple[tuple[str, ...], Backend]] = [
    (("beats", "per", "minute"), "tempo"),
    (("beats", "per", "min"), "tempo"),
    (("beats", "a", "minute"), "tempo"),
    (("how", "fast"), "tempo"),
    (("how", "quick"), "tempo"),
    (("speed", "up"), "tempo"),
    (("slow", "down"), "tempo"),
    (("key", "signature"), "key"),
    (("tonal", "center"), "key"),
    (("tonal", "centre"), "key"),
    (("time", "signature"), "beats"),
    (("time", "sig"), "beats"),
    (("common", "time"), "beats"),
    (("four", "on", "the", "floor"), "beats"),
    (("the", "one"), "beats"),
    (("chord", "changes"), "chords"),
    (("sound", "like"), "model"),
    (("sounds", "like"), "model"),
    (("kind", "of", "music"), "model"),
    (("kind", "of", "song"), "model"),
    (("sort", "of", "music"), "model"),
    (("type", "of", "music"), "model"),
    (("rhythm", "section"), "model"),
    (("hip", "hop"), "model"),
    (("what's", "playing"), "model"),
    (("what", "is", "playing"), "model"),
    (("who", "is", "singing"), "model"),
    (("who's", "singing"), "model"),
    (("lo", "fi"), "model"),
]

# Instruments are content only when the question asks whether they are there
# ("is there a piano", "with strings"); in "which chords does the guitar play"
# the guitar is just the subject of a chord question.
INSTRUMENTS = (
    "piano|keys|keyboards?|guitars?|drums?|drum kit|bass|violins?|strings|brass|horns?|sax|saxophones?|"
    "flutes?|trumpets?|cellos?|organ|synths?|synthesizers?|choir|vocals?|percussion|harp|banjo|"
    "ukulele|clarinet|trombone|accordion|harmonica|mandolin|bells|pads?"
)
INSTRUMENT_QUESTION = re.compile(
    r"\b(?:is there|are there|there's|any|with|hear|hearing|featuring|features?|includes?|has|have|"
    r"playing|plays|what|which)\s+(?:an?\s+|the\s+|some\s+|any\s+)?(?:" + INSTRUMENTS + r")\b"
)
PATTERN_CUES: list[tuple[re.Pattern[str], Backend]] = [
    (re.compile(r"\b\d{1,2}\s*/\s*(?:2|4|8|16)\b"), "beats"),  # 3/4, 6/8, 7/8
    (re.compile(r"\b\d{2,3}\s*bpm\b|\bbpm\b"), "tempo"),
    (re.compile(r"\b[iv]{1,3}\s*-\s*[iv]{1,3}(?:\s*-\s*[iv]{1,3})*\b"), "chords"),  # I-IV-V, ii-V-I
    (re.compile(r"\b[a-g](?:\s*(?:flat|sharp|#|b))?\s+(?:major|minor)\b"), "key"),  # "D minor", "E flat major"
    (INSTRUMENT_QUESTION, "model"),
]

# "major"/"minor" name the key unless they describe chords in the same question.
WEAK_KEY_CUES = {"major", "minor", "maj", "min"}

# Everyday words one edit from a cue; never "correct" them.
PROTECTED_WORDS = {
    "show", "shows", "more", "made", "node", "move", "code", "mood", "moods", "last", "past",
    "best", "bear", "beam", "heat", "meat", "seat", "sale", "stale", "scare", "scared",
    "temp", "term", "keen", "keep", "kept", "spend", "seed", "sped", "chore", "cords",
    "mater", "later", "water", "mister", "letter", "better", "bitter", "sound",
    "sounds", "round", "found", "beta", "counter", "place", "space",
    "peace", "choice", "model", "words", "world", "hour", "harm", "scales", "mile",
    "modes", "mean", "meant", "means", "rack", "track", "tracks", "trick", "still",
    "shill", "feel", "feels", "fall", "falls", "base", "case", "phase", "these", "those",
    "there", "where", "here", "their", "then", "than", "that", "this", "song", "songs",
    "long", "along", "sing", "sang", "being", "bring", "thing", "things", "tell", "sell",
    "well", "about", "minute", "minutes", "mine", "mind", "kind", "find", "bass",
    "fat", "bet", "bat", "bit", "sat", "set", "sit", "mark", "call", "calls",
}

TOKEN = re.compile(r"[a-z0-9']+")
SUFFIXES = ("ings", "ing", "es", "ed", "al", "s", "'s")


class RouteDecision(BaseModel):
    """Which backends answer a question, why, and the words that decided it."""

    backends: list[Backend] = Field(description="Backends to call, DSP measurements first, then the model.")
    reason: str = Field(description="One sentence per backend saying why it was chosen.")
    cues: list[str] = Field(description="Words or phrases in the question that triggered each backend, as 'backend:cue'.")

    @property
    def dsp(self) -> list[Backend]:
        """The DSP measurements to make; names match the fields of `model.dsp.ClipAnalysis`."""
        return [b for b in self.backends if b != "model"]

    @property
    def uses_model(self) -> bool:
        return "model" in self.backends


def _cue_vocabulary() -> dict[str, Backend]:
    vocab: dict[str, Backend] = {}
    for backend, words in WORD_CUES.items():
        for word in words:
            vocab[word] = backend
    return vocab


CUE_VOCABULARY = _cue_vocabulary()
# Every word the spell-corrector may map a token onto: cues, phrase words, weak key cues.
CORRECTION_TARGETS = sorted(
    set(CUE_VOCABULARY)
    | {w for phrase, _ in PHRASE_CUES for w in phrase if len(w) >= 4}
    | {"major", "minor", "chords", "beats", "downbeats", "instruments", "progression"}
)


def _stem(token: str) -> str | None:
    """Return the cue word this token inflects, if any (chords -> chord)."""
    if token in CUE_VOCABULARY or token in WEAK_KEY_CUES:
        return token
    for suffix in SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            base = token[: -len(suffix)]
            if base in CUE_VOCABULARY:
                return base
            if base + "e" in CUE_VOCABULARY:  # "measured" -> "measure"
                return base + "e"
    return None


def _allowed_edits(token: str, target: str) -> int:
    """How many edits may separate a token from a cue word and still count as a typo of it.

    Short words have many real neighbours ("call"/"calm", "mark"/"dark"), so
    words of up to four letters only forgive swapped letters ("fsat", "bmp")
    or, for three-letter tokens, one dropped letter ("fst" for "fast").
    """
    if len(token) <= 4 or len(target) <= 4:
        swapped = len(token) == len(target) and sorted(token) == sorted(target) and token[0] == target[0]
        dropped = len(token) == 3 and len(target) == 4 and token[0] == target[0] and _is_subsequence(token, target)
        return 1 if swapped or dropped else 0
    return 2 if len(target) >= 8 else 1


def _is_subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(ch in letters for ch in short)


def _correct(token: str) -> str:
    """Spell-correct one token towards the cue vocabulary, or return it unchanged."""
    if token in PROTECTED_WORDS or _stem(token) is not None or not token.isalpha():
        return token
    best, best_distance = token, 99
    for target in CORRECTION_TARGETS:
        if abs(len(target) - len(token)) > 2:
            continue
        distance = OSA.distance(token, target)
        if distance <= _allowed_edits(token, target) and distance < best_distance:
            best, best_distance = target, distance
    return best


def tokenize(question: str) -> list[str]:
    """Lowercase word tokens, each spell-corrected towards the cue vocabulary."""
    text = question.lower().replace("’", "'")
    return [_correct(token) for token in TOKEN.findall(text)]


def route(question: str) -> RouteDecision:
    """Decide which backends answer `question`: DSP tools for what they measure, the model for the rest."""
    tokens = tokenize(question)
    # Patterns read the raw text ("3/4", "ii-V-I") plus the corrected words.
    text = question.lower() + " || " + " ".join(tokens)
    found: dict[Backend, list[str]] = {}

    def add(backend: Backend, cue: str) -> None:
        found.setdefault(backend, [])
        if cue not in found[backend]:
            found[backend].append(cue)

    used = [False] * len(tokens)
    for phrase, backend in PHRASE_CUES:
        n = len(phrase)
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i : i + n]) == phrase and not any(used[i : i + n]):
                add(backend, " ".join(phrase))
                used[i : i + n] = [True] * n

    weak_key: list[str] = []
    for i, token in enumerate(tokens):
        if used[i]:
            continue
        base = _stem(token)
        if base in WEAK_KEY_CUES:
            weak_key.append(base)
        elif base is not None:
            add(CUE_VOCABULARY[base], base)

    for pattern, backend in PATTERN_CUES:
        match = pattern.search(text)
        if match:
            add(backend, match.group(0).strip())

    if weak_key and not ("chords" in found and "key" not in found):
        for cue in weak_key:
            add("key", cue)

    if not found:
        return RouteDecision(
            backends=["model"],
            reason="No measurable quantity (tempo, key, chords, beats) was asked for, so "
            + BACKEND_REASONS["model"] + ".",
            cues=[],
        )
    backends: list[Backend] = [b for b in (*DSP_BACKENDS, "model") if b in found]
    reason = " ".join(
        f"{b}: {BACKEND_REASONS[b]} (asked via {', '.join(repr(c) for c in found[b])})." for b in backends
    )
    cues = [f"{b}:{c}" for b in backends for c in found[b]]
    return RouteDecision(backends=backends, reason=reason, cues=cues)
