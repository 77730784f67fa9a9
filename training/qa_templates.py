"""Wording of the generated questions and answers: many paraphrases per question type.

Pure data. `{v}` is the value asked about or answered, `{truth}` the true value
in a "no" answer, `{noun}` one of NOUNS. Every question type has several
paraphrases, drawn at random, so a model cannot learn answers from wording;
the answer-from-wording baseline in `training/wording_baseline.py` checks it.
"""

NOUNS = ("clip", "piece", "track", "recording", "excerpt", "song", "tune")

CAPTION_PROMPTS = (
    "Describe this music.",
    "Write a caption for this {noun}.",
    "Give a short description of the {noun}.",
    "What does this {noun} sound like? Describe it.",
    "Describe the music in this {noun} in a few sentences.",
    "Caption this audio.",
    "Summarise what you hear in this {noun}.",
    "Write a brief description of this music, covering style, instruments and feel.",
    "How would you describe this {noun} to someone who cannot hear it?",
    "Provide a description of the audio.",
)

# Open questions: attribute -> (questions, answers); answers use {v}.
OPEN = {
    "lead_instrument": (
        ("Which instrument plays the melody?", "What instrument carries the lead line in this {noun}?",
         "Which instrument has the main melody?", "What is the lead instrument here?",
         "Name the instrument playing the tune.", "Which instrument stands out as the lead?"),
        ("The {v}.", "The melody is played by the {v}.", "It is the {v}.", "The lead is the {v}.",
         "A {v} carries the melody."),
    ),
    "lead_family": (
        ("What family does the lead instrument belong to?", "Which instrument family plays the melody?",
         "Is the lead a string, brass, reed, keyboard or other kind of instrument?",
         "What type of instrument carries the tune?", "To which group of instruments does the melody instrument belong?"),
        ("The melody comes from the {v} family.", "It is a {v} instrument.", "The lead belongs to the {v} family.",
         "{V}."),
    ),
    "instrument_families": (
        ("Which instrument families can you hear?", "What kinds of instruments are in this {noun}?",
         "List the instrument families present.", "What instrument groups play in this {noun}?",
         "Which families of instruments does the arrangement use?"),
        ("I can hear {v}.", "The arrangement uses {v}.", "Instrument families: {v}.", "There are {v}."),
    ),
    "instruments": (
        ("Which instruments are playing?", "What instruments can you hear in this {noun}?",
         "List the instruments in the arrangement.", "Name the instruments in this {noun}.",
         "What is the instrumentation?"),
        ("The instruments are {v}.", "I hear {v}.", "It features {v}.", "The arrangement has {v}."),
    ),
    "style": (
        ("What genre is this {noun}?", "What style of music is this?", "Which genre best describes this {noun}?",
         "How would you classify the style of this music?", "What kind of groove is this?",
         "Which musical style does this {noun} belong to?"),
        ("It is {v}.", "This is a {v} {noun}.", "The style is {v}.", "{V}.", "It sounds like {v}."),
    ),
    "key": (
        ("What key is this {noun} in?", "Which key is the music in?", "What is the tonal centre and mode of this {noun}?",
         "In what key is this played?", "Name the key of this {noun}."),
        ("It is in {v}.", "The key is {v}.", "{V}.", "The {noun} is in {v}."),
    ),
    "mode": (
        ("Is this {noun} in a major or a minor key?", "What is the mode of this music, major or minor?",
         "Does the music sound major or minor?", "Which mode is the {noun} in?",
         "Is the tonality of this {noun} major or minor?"),
        ("It is in a {v} key.", "{V}.", "The mode is {v}.", "The {noun} is in {v}."),
    ),
    "meter": (
        ("What is the time signature?", "What meter is this {noun} in?", "Is this in 3/4 or 4/4 time?",
         "How many beats are there per bar?", "What is the metre of the music?"),
        ("It is in {v} time.", "{V}.", "The meter is {v}.", "The {noun} is in {v}."),
    ),
    "tempo": (
        ("What is the tempo in BPM?", "How fast is this {noun}, in beats per minute?", "Estimate the tempo.",
         "At what tempo is this played?", "What is the BPM of this {noun}?"),
        ("About {v} BPM.", "The tempo is around {v} beats per minute.", "Roughly {v} BPM.", "It is played at about {v} BPM."),
    ),
    "tempo_class": (
        ("Is this {noun} slow, medium or fast?", "How would you describe the tempo: slow, moderate or fast?",
         "Is the pace of the music slow or fast?", "What is the tempo like?", "How fast does this {noun} feel?"),
        ("The tempo is {v}.", "It is {v}.", "{V}.", "It has a {v} tempo."),
    ),
    "drums": (
        ("Are there drums in this {noun}?", "Does this {noun} have a drum kit?", "Is there any percussion?",
         "Can you hear drums?", "Is a drummer playing?"),
        ("{V}.",),
    ),
    "energy": (
        ("How energetic is this {noun}?", "What is the energy level of the music?", "Is this {noun} calm or intense?",
         "How loud and intense does the performance sound?", "Describe the dynamics of this {noun}."),
        ("The energy is {v}.", "{V}.", "It is {v}.", "The performance is {v}."),
    ),
    "chords": (
        ("What chords are played?", "What is the chord progression?", "Which chords does the {noun} cycle through?",
         "Name the chords you hear.", "Transcribe the harmony of this {noun}."),
        ("The progression is {v}.", "The chords are {v}.", "{V}.", "It cycles through {v}."),
    ),
}

# Multiple-choice question stems per attribute (options are appended by the formatter).
CHOICE = {
    "lead_instrument": ("Which instrument plays the melody?", "Which instrument carries the lead line?",
                        "What is the lead instrument in this {noun}?", "Which of these instruments has the tune?",
                        "Which instrument is playing the main melody?"),
    "lead_family": ("Which instrument family plays the melody?", "What family does the lead instrument belong to?",
                    "The melody of this {noun} is played by which kind of instrument?",
                    "Which group of instruments carries the tune?"),
    "instrument_families": ("Which of these instrument families can be heard in this {noun}?",
                            "Which instrument family is present in the arrangement?",
                            "One of these kinds of instrument plays in this {noun}. Which one?",
                            "Which family of instruments do you hear?"),
    "style": ("What genre is this {noun}?", "Which style best describes this music?", "What kind of music is this?",
              "This {noun} is an example of which style?", "Which genre label fits this {noun}?"),
    "key": ("What key is this {noun} in?", "Which key is the music in?", "Identify the key of this {noun}.",
            "In which key is this played?"),
    "tempo": ("What is the tempo of this {noun}?", "How fast is this played?", "Which tempo matches this {noun}?",
              "Estimate the tempo of the music."),
    "chords": ("Which chord progression is played?", "What chords does this {noun} cycle through?",
               "Which sequence of chords do you hear?", "Identify the chord loop of this {noun}."),
    "profile": ("Which description fits this {noun} best?", "Which of these best describes the {noun}?",
                "How would you characterise this music?", "Which statement about this {noun} is accurate?",
                "Pick the description that matches the audio."),
}

# Yes/no questions per attribute; {v} is the value asked about.
BINARY = {
    "lead_instrument": ("Is the melody played by a {v}?", "Is the {v} the lead instrument?", "Does a {v} carry the tune?",
                        "Is the main melody on the {v}?"),
    "lead_family": ("Does the melody come from a {v} instrument?", "Is the lead instrument from the {v} family?",
                    "Is the tune played on a {v} instrument?"),
    "instrument_families": ("Is there a {v} instrument in this {noun}?", "Can you hear any {v} instruments?",
                            "Does the arrangement include the {v} family?", "Is a {v} instrument playing?"),
    "style": ("Is this a {v} {noun}?", "Would you call this music {v}?", "Is the style of this {noun} {v}?",
              "Does this sound like {v}?"),
    "key": ("Is this {noun} in {v}?", "Is the key {v}?", "Is the music played in {v}?"),
    "mode": ("Is this {noun} in a {v} key?", "Is the mode {v}?", "Does the music sound {v}?",
             "Is the tonality {v}?"),
    "meter": ("Is this {noun} in {v} time?", "Is the time signature {v}?", "Is the meter {v}?",
              "Does the music move in {v}?"),
    "tempo_class": ("Is the tempo {v}?", "Is this a {v} {noun}?", "Would you describe the pace as {v}?",
                    "Does the music feel {v}?"),
    "drums": ("Is this {noun} played {v}?", "Is the arrangement {v}?", "Would you say the music is {v}?"),
    "energy": ("Is the energy of this {noun} {v}?", "Would you call the performance {v}?", "Does the music sound {v}?"),
}
YES = ("Yes.", "Yes, it is.", "Yes, that's right.", "Yes, definitely.")
NO = ("No.", "No, it is not.", "No, that's not right.", "No, not at all.")

# Phrases of values as they appear in answers.
MODE_WORDS = {"major": "major", "minor": "minor"}
DRUMS_WORDS = {True: "with drums", False: "without drums"}
DRUMS_OPEN_ANSWERS = {True: ("Yes, there are drums.", "Yes, a drum kit plays."),
                      False: ("No, there are no drums.", "No, there is no percussion.")}
ENERGY_WORDS = {"low": "soft and calm", "medium": "moderately energetic", "high": "loud and energetic"}
TEMPO_WORDS = {"slow": "slow", "medium": "medium", "fast": "fast"}

# Composite ("profile") option parts: adjectives go before the noun, phrases after it.
PROFILE_ADJECTIVE = {
    "tempo_class": {"slow": "slow", "medium": "medium-tempo", "fast": "fast"},
    "energy": {"low": "soft, calm", "medium": "moderately energetic", "high": "loud, energetic"},
}
PROFILE_PHRASE = {
    "mode": {"major": "in a major key", "minor": "in a minor key"},
    "meter": {"3/4": "in 3/4 time", "4/4": "in 4/4 time"},
    "drums": {True: "with drums", False: "without drums"},
}

# Caption sentences; each uses only the fields it names, and a clause is left out when its field is unknown.
CAPTION_OPENINGS = (
    "A {energy} {style} {noun} in {key}.",
    "This is a {energy} {style} {noun} in {key}.",
    "{Energy} {style} music in {key}.",
    "A {style} {noun} in {key} with a {energy} feel.",
)
CAPTION_TEMPO = (
    "The tempo is {tempo_class}, about {bpm} BPM, in {meter} time.",
    "It moves at a {tempo_class} {bpm} BPM in {meter}.",
    "At around {bpm} BPM in {meter} time, the pace is {tempo_class}.",
)
CAPTION_LEAD = (
    "The {lead} plays the melody over {others}.",
    "A {lead} carries the tune, accompanied by {others}.",
    "{Others} accompany a {lead} melody.",
)
CAPTION_DRUMS = {True: ("A drum kit keeps the beat.", "Drums drive the groove.", "There are drums."),
                 False: ("There are no drums.", "No percussion plays.", "It is played without drums.")}
CAPTION_CHORDS = (
    "The chords cycle through {chords}.",
    "The harmony loops {chords}.",
    "The progression is {chords}.",
)

# Styles a listener might confuse: used for "incorrect but related" distractors.
STYLE_GROUPS = (
    {"rock", "punk", "pop", "country"},
    {"funk", "house", "hiphop", "reggae"},
    {"waltz", "jazz waltz", "folk waltz"},
    {"ballad", "chamber"},
    {"bossa", "jazz waltz", "funk"},
    {"march", "waltz"},
)
# Instrument families a listener might confuse.
FAMILY_GROUPS = (
    {"piano", "chromatic percussion", "organ"},
    {"guitar", "bass", "ethnic"},
    {"strings", "ensemble"},
    {"brass", "reed", "pipe"},
    {"synth lead", "synth pad", "synth effects", "organ"},
)

# Said after an answer about tempo, key or meter when no measurement of it was given: the model's
# ear alone is wrong on those often enough that it should say so (and the caller can ask the DSP).
UNSURE = ("I could not measure this, so I may be wrong.", "That is my guess; it was not measured.",
          "I am not sure of this without a measurement.", "This is only what it sounds like to me.")
# Said after a genre answer when the model's clip classifier was not sure enough to hint one
# (training.train.add_heard_genre): the words of doubt that do not speak of a measurement.
UNSURE_GENRE = UNSURE[3:]

# LLark's filters: generated or imported text containing these is dropped.
BANNED_PHRASES = ("metadata", "based on the provided", "cannot determine", "it is difficult to determine",
                  "not possible to determine", "as an ai", "i'm sorry", "i am sorry")
BANNED_QUESTION_TOPICS = ("composer", "composed by", "artist", "album", "title", "name of the song",
                          "duration", "how long is", "release", "record label")
