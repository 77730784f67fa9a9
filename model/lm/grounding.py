"""Free-form answers that state only what was measured or heard.

Trained on captions that name a genre, a tempo and a key, a 135 M decoder names them in
every caption, measured or not, and is wrong about them about as often as right (round
23's fact check: 59 % of stated facts true). The prompt already carries what the tools
know: the DSP measurement sentence (`model.lm.measurements`) and the genre the clip
classifier hears (`model.lm.prompts.with_heard_genre`). Grounded decoding makes the
words agree with them: while the model writes, the genre, tempo and key words that
contradict what was measured or heard are forbidden (their logits set to -inf), and
where nothing was measured or heard, every word of that kind is, with the lead-ins
("The tempo is around") after which a small decoder finds its own way to a number. Chord
names are forbidden always (the prompt never states chords). The model still
chooses its sentence; it can only state a tempo, key or genre the tools stand behind, so
a free-form fact is as right as the measurement or the classifier behind it. The genre it
may name is the classifier's only where it is sure (`HeardGenre.stated`, probability 0.9;
the hint in front of the prompt starts at 0.4): below that, on real music it was wrong a
third to a half of the time (`training.bench.genre_calibration`).

Two gaps of word-level bans are closed as well. A genre of several tokens (" w|alt|z")
is forbidden from its first token on: forbidding only the whole sequence let the decoder
start the word and swerve at the last token ("walttala", "hipExplore"). And numbers: the only
numbers an answer may write are the measured BPM and the meter's, none where nothing was
measured (`MeasuredNumbersOnly`); the word bans alone let "about 120 BPM" be followed by
"128BPM" or "around 83 BPM", and chord names in digits ("Cmaj7", "E7m") through. A note name
is never followed by a chord quality ("Gm", "Gmaj"), nor the measured tonic by another accidental.

Multiple choice is not affected: options are scored, not written.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch
from transformers import LogitsProcessor, NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor

from model.lm.measurements import Measurements, tempo_class

# Genre nouns the model has learnt or might reach for; each allows the others of its family
# when that family was heard (the coarse level the clip classifier names). With the genre words
# forbidden, a decoder says the genre in other words ("It is a symphony.", "electric dance music"),
# so those are here too (and training.factcheck checks every one of them).
GENRE_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("rock", "metal", "punk", "grunge", "hard rock", "rock and roll"),
    ("orchestral", "classical", "symphonic", "chamber", "baroque", "cinematic", "film score", "orchestra",
     "orchestras", "orchestration", "symphony", "symphonies", "concerto", "opera"),
    ("electronic", "electronica", "techno", "house", "edm", "trance", "dubstep", "synthwave", "chiptune", "electro",
     "dance music", "club music", "rave"),
    ("jazz", "jazzy", "swing", "bebop", "big band"), ("pop",), ("ballad",), ("funk", "disco"), ("march", "marching"),
    ("bossa", "bossa nova", "samba"), ("reggae", "ska"), ("hiphop", "hip hop", "hip-hop", "rap"),
    ("country", "bluegrass"), ("waltz",), ("folk", "celtic"), ("blues",), ("soul", "r&b"), ("latin", "tango", "salsa"),
    ("ambient",),
)
GENRE_WORDS = frozenset(word for family in GENRE_FAMILIES for word in family)
TEMPO_WORDS = {"slow": ("slow", "slower", "largo", "adagio"), "medium": ("medium", "moderate", "mid-tempo", "andante"),
               "fast": ("fast", "faster", "quick", "brisk", "uptempo", "up-tempo", "allegro", "presto")}
# Without a measured tempo no number of beats per minute is stated either, in any spelling: the decoder
# writes "128 BAM" when only "BPM" is forbidden, so standalone numbers go (a meter in digits with them).
# The lead-ins go too: a decoder that has written "The tempo is around" finds a way to a number.
TEMPO_UNITS = ("BPM", "bpm", "beats per minute", "tempo", "pace", "¾", "½", *(f"{digit}" for digit in "0123456789"))
KEY_LEAD_INS = ("key", "keys", "tonality", "relative")
# Chords are never measured in the prompt (the chord tool answers them), so no caption lists any.
CHORD_WORDS = ("chord", "chords", "progression", " -")  # " -": the separator of a chord loop ("C - G - Am")
CHORD_QUALITIES = ("m", "min", "dim", "sus", "aug", "add")  # right after a note name: "Gm", "Gmaj7", "F#min"
MODES = ("major", "minor")
TONIC_LETTERS = "ABCDEFG"
ACCIDENTALS = {"": 0, "#": 1, "♯": 1, " sharp": 1, "b": -1, "♭": -1, " flat": -1}
ACCIDENTAL_TOKENS = ("#", " #", "b", " b", "♯", "♭")  # as written right after a note name
PITCH_OF_LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MEASURED_KEY = re.compile(r"^([A-G])([#b]?) (major|minor)$")


def _family(genre: str) -> tuple[str, ...]:
    return next((family for family in GENRE_FAMILIES if genre in family), (genre,))


def forbidden_phrases(measured: Measurements, heard_genre: str | None) -> list[str]:
    """The phrases that would contradict (or go beyond) the measurements and the heard genre: other
    genres, other tempo classes, other keys and modes, chord names, and where nothing was measured, the
    words that lead to a tempo or key (lower case except for note names; a leading space: only as a word)."""
    allowed_genres = set(_family(heard_genre)) if heard_genre else set()
    phrases = [word for family in GENRE_FAMILIES for word in family if word not in allowed_genres]
    measured_class = tempo_class(measured.tempo_bpm) if measured.tempo_bpm else None
    phrases += [word for name, words in TEMPO_WORDS.items() if name != measured_class for word in words]
    if measured_class is None:
        phrases += TEMPO_UNITS
    phrases += CHORD_WORDS
    key = _MEASURED_KEY.match(measured.key or "")
    letter = key.group(1) if key else None
    # Chord and key names ("in a C#maj7 - F#m") where no key may be named: no capital letter but the
    # measured tonic's stands alone after a space (the article "A" opens a sentence without one).
    phrases += [f" {name}" for name in TONIC_LETTERS if name != letter]
    if key is None:  # no key measured: neither a key nor a mode is stated
        return phrases + list(MODES) + list(KEY_LEAD_INS)
    letter, accidental, mode = key.groups()
    tonic = (PITCH_OF_LETTER[letter] + ACCIDENTALS[accidental]) % 12
    phrases += [m for m in MODES if m != mode]
    phrases += [f"{name}{spelling} {mode}" for name in TONIC_LETTERS for spelling, shift in ACCIDENTALS.items()
                if (PITCH_OF_LETTER[name] + shift) % 12 != tonic]
    return phrases


def _spellings(phrase: str) -> set[str]:
    """The phrase as it may appear in running text: after a space or at the start, lower or title case
    (a number only after a space: digits inside words and chord names such as "Cmaj7" stay)."""
    if phrase.isdigit() or phrase.startswith(" "):
        return {" " + phrase.strip()}
    title = phrase[0].upper() + phrase[1:]
    return {phrase, title, " " + phrase, " " + title}


@lru_cache(maxsize=4096)
def _token_sequences(tokenizer, phrase: str) -> tuple[tuple[int, ...], ...]:
    return tuple(_ids(tokenizer, text) for text in sorted(_spellings(phrase)))


def forbidden_token_sequences(tokenizer, prompt: str, heard_genre: str | None) -> list[list[int]]:
    """Token sequences the answer to `prompt` may not contain, from the measurement sentence in the
    prompt (none: nothing measured) and the heard genre. A forbidden genre of several tokens is
    forbidden from its first token (one that starts a word) on."""
    return _forbidden_sequences(tokenizer, Measurements.from_prompt(prompt), heard_genre)


def _forbidden_sequences(tokenizer, measured: Measurements, heard_genre: str | None) -> list[list[int]]:
    phrases = forbidden_phrases(measured, heard_genre)
    sequences = {seq for phrase in phrases for seq in _token_sequences(tokenizer, phrase)}
    # One word of several tokens only: the first word of "big band" or "dance music" is free on its own.
    sequences |= {seq[:1] for phrase in phrases if phrase in GENRE_WORDS and " " not in phrase
                  for seq in _token_sequences(tokenizer, phrase) if len(seq) > 1 and _starts_a_word(tokenizer.decode(seq[:1]))}
    sequences |= _chord_names(tokenizer)
    key = _MEASURED_KEY.match(measured.key or "")
    if key:  # the measured tonic with another accidental ("C#minor", "C# Major" for C minor)
        letter, accidental = key.group(1), key.group(2)
        sequences |= {_ids(tokenizer, space + letter) + _ids(tokenizer, other) for space in (" ", "")
                      for other in ACCIDENTAL_TOKENS if other.strip() != accidental}
    return [list(seq) for seq in sorted(sequences) if seq]


@lru_cache(maxsize=4)
def _chord_names(tokenizer) -> frozenset[tuple[int, ...]]:
    """A note name followed by a chord quality, as the decoder writes it (" G" "m" "aj" "7"): the measured
    tonic may be named, never as a chord (digits are MeasuredNumbersOnly's)."""
    tonics = [f"{space}{name}{accidental}" for space in (" ", "") for name in TONIC_LETTERS
              for accidental in ("", "b", "#", " #")]
    names = {_ids(tokenizer, tonic) + _ids(tokenizer, quality) for tonic in tonics for quality in CHORD_QUALITIES}
    return frozenset(names | {_ids(tokenizer, "maj"), _ids(tokenizer, " maj")})  # glued to a word ("keymaj"), or alone


def _ids(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False).input_ids)


def _starts_a_word(token: str) -> bool:
    """A token that begins a word after a space, other than a capital letter alone (" G" of " Grunge" is
    also the note G)."""
    letters = token[1:]
    return token.startswith(" ") and bool(letters) and (len(letters) > 1 or letters.islower())


class MeasuredNumbersOnly(LogitsProcessor):
    """Digits only as part of one of `numbers` (e.g. the measured "120" and the meter's "3"), or right after
    a "/" of `after_slash` (the meter's "4"): a digit may start a number only as the first digit of one of
    them, continue it only along one of them, and a number begun is finished ("7" of "70" is followed by
    "0"). A "/" only follows a number, and only where a meter was measured; tokens that mix digits with
    other characters are never written. Applied to one row at a time."""

    def __init__(self, tokenizer, numbers: tuple[str, ...], after_slash: tuple[str, ...] = ()):
        self.numbers, self.after_slash = numbers, after_slash
        self.digit_ids, mixed_ids = _digit_tokens(tokenizer)
        self.mixed_ids = torch.tensor(mixed_ids, dtype=torch.long)  # banned at every step: indexed once
        self.digit_of = {token: digit for digit, token in self.digit_ids.items()}
        self.slash = tokenizer.convert_tokens_to_ids("/")

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        written = input_ids[0].tolist()
        run = ""  # the digits the row has just written
        for token in reversed(written):
            if token not in self.digit_of:
                break
            run = self.digit_of[token] + run
        before = written[-len(run) - 1] if len(written) > len(run) else None
        numbers = self.after_slash if before == self.slash else self.numbers
        allowed = {number[len(run)] for number in numbers if number.startswith(run) and len(number) > len(run)}
        if run and run not in numbers:  # half a number ("7" of "70"): only its next digit may follow
            kept = [self.digit_ids[digit] for digit in allowed]
            limited = torch.full_like(scores, float("-inf"))
            limited[:, kept] = scores[:, kept]
            return limited
        banned = [token for digit, token in self.digit_ids.items() if digit not in allowed]
        if not run or not self.after_slash:  # "/" only in a meter, after its first number
            banned.append(self.slash)
        scores[:, banned] = float("-inf")
        scores[:, self.mixed_ids.to(scores.device)] = float("-inf")
        return scores


@lru_cache(maxsize=4)
def _digit_tokens(tokenizer) -> tuple[dict[str, int], tuple[int, ...]]:
    """The ids of the single-digit tokens, and of every other token that holds a digit."""
    digits, mixed = {}, []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if text in "0123456789" and len(text) == 1:
            digits[text] = token_id
        elif any(c.isdigit() for c in text):
            mixed.append(token_id)
    return digits, tuple(mixed)


def measured_numbers(measured: Measurements) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The numbers an answer may state (the measured BPM as the sentence prints it, the meter's beats per
    bar), and the one it may write after a "/" (the meter's note value: "3/4", never "4/4" then)."""
    numbers = [str(round(measured.tempo_bpm))] if measured.tempo_bpm else []
    beats, _, unit = (measured.meter or "").partition("/")
    return tuple(numbers + ([beats] if beats else [])), (unit,) if unit else ()


def forbidding(sequences: list[list[int]]) -> list[LogitsProcessor]:
    """Processors that keep a row from writing any of `sequences`. A row with forbidden words also never
    repeats a 3-gram: kept from its usual words, a small decoder otherwise loops ("- - - -")."""
    return [NoBadWordsLogitsProcessor(sequences), NoRepeatNGramLogitsProcessor(3)] if sequences else []


def constraints(tokenizer, prompt: str, heard_genre: str | None) -> list[LogitsProcessor]:
    """What grounded decoding applies to the answer to `prompt` (decoding.generate's `constraints`)."""
    measured = Measurements.from_prompt(prompt)
    processors = forbidding(_forbidden_sequences(tokenizer, measured, heard_genre))
    return processors + [MeasuredNumbersOnly(tokenizer, *measured_numbers(measured))]
