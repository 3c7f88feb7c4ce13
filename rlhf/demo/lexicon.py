"""The vocabulary of the demo task (movie reviews) and the polarity of its sentiment words.

Everything is lowercase English, one word per entry except a few two-word genres ("horror film"). The lists are
tuples (ordered), never sets, so that the seeded generator draws the same words on every machine.

Polarity is graded from -3 to +3 and is the one documented source of the gold judge's sentiment:

    +1  mild praise        good, nice, solid, decent, enjoyable, ...
    +2  clear praise       great, wonderful, excellent, beautiful, charming, clever, ...
    +3  strong praise      brilliant, superb, masterful, stunning, outstanding, unforgettable, ...
    -1  mild criticism     dull, weak, bland, flat, uneven, ...
    -2  clear criticism    boring, awful, poor, clumsy, lazy, tedious, ...
    -3  strong criticism   terrible, dreadful, painful, unbearable, atrocious, ...

Besides adjectives, a few nouns ("masterpiece", "mess") and verbs ("loved", "hated") carry polarity too.
Neutral adjectives ("long", "quiet", "dark") describe without judging: they are NOT in ``POLARITY`` (the judge takes the
mean over sentiment words only, so a neutral word neither helps nor dilutes). Intensifiers ("very", "truly") multiply
the polarity of the sentiment word right after them (see ``rlhf.demo.judge``).

Openings (the prompts of the task) are built only from the neutral pools here: film nouns, genres, aspects, names,
roles, relations; ``POLARITY`` lets the generator check that no prompt contains a sentiment word.
"""

from __future__ import annotations

FILM_NOUNS: tuple[str, ...] = ("film", "movie", "picture", "feature")

GENRES: tuple[str, ...] = (
    "comedy", "thriller", "drama", "western", "romance", "horror film", "documentary", "musical", "war film",
    "mystery", "biopic", "crime drama", "fantasy", "adventure", "satire", "sequel", "remake", "animated film",
    "spy film", "period piece",
)

# (aspect, is_plural): the grammar needs the verb to agree ("the acting was" / "the characters were").
ASPECTS: tuple[tuple[str, bool], ...] = (
    ("acting", False), ("plot", False), ("script", False), ("cast", False), ("soundtrack", False),
    ("score", False), ("cinematography", False), ("dialogue", False), ("pacing", False), ("ending", False),
    ("characters", True), ("visuals", True), ("direction", False), ("editing", False), ("humour", False),
    ("story", False), ("performances", True), ("camera work", False), ("set design", False), ("costumes", True),
    ("music", False), ("writing", False), ("finale", False), ("premise", False), ("tone", False),
    ("lead performance", False), ("action scenes", True), ("special effects", True),
)

FEMALE_FIRST_NAMES: tuple[str, ...] = (
    "anna", "maria", "emma", "laura", "sarah", "clara", "julia", "grace", "helen", "rose", "alice", "nora", "lucy",
    "irene", "eva",
)
MALE_FIRST_NAMES: tuple[str, ...] = (
    "james", "john", "david", "michael", "peter", "thomas", "daniel", "robert", "samuel", "henry", "victor",
    "oscar", "martin", "frank", "george",
)
FIRST_NAMES: tuple[str, ...] = FEMALE_FIRST_NAMES + MALE_FIRST_NAMES

LAST_NAMES: tuple[str, ...] = (
    "price", "walker", "brooks", "fischer", "moreau", "lindqvist", "carter", "hughes", "romano", "bennett",
    "novak", "doyle", "harper", "kowalski", "lambert", "mendes", "sato", "okafor", "reyes", "hale", "quinn",
    "berger", "nolan", "fontaine", "ward", "ellis", "marsh", "costa", "wilde", "barlow",
)

ROLES: tuple[str, ...] = (
    "detective", "mother", "soldier", "teacher", "nurse", "lawyer", "farmer", "journalist", "priest", "boxer",
    "pilot", "chef", "thief", "widow", "student", "sheriff", "doctor", "painter", "musician", "spy", "father",
    "gambler", "sailor", "writer", "scientist", "dancer", "banker", "judge",
)
# Roles that only go with a first name of one gender ("f" / "m"): "james price plays a mother" is not English.
GENDERED_ROLES: dict[str, str] = {"mother": "f", "widow": "f", "father": "m"}

RELATIONS: tuple[str, ...] = (
    "wife", "husband", "sister", "brother", "kids", "parents", "father", "friends", "girlfriend", "boyfriend",
    "roommate", "grandmother",
)

# Plot events after "a <role> who ...": neutral on purpose (they sit in the completion, next to a verdict).
PLOT_EVENTS: tuple[str, ...] = (
    "returns home after the war", "falls in love with a stranger", "loses everything in one night",
    "moves to a small town", "takes on one last case", "leaves the city forever", "finds an old letter",
    "crosses the country by train", "hides a secret from the family", "goes looking for a missing brother",
)

TIME_PHRASES: tuple[str, ...] = (
    "last night", "last week", "on friday", "this weekend", "on a rainy sunday", "yesterday", "last month",
    "on saturday", "last summer", "over the holidays",
)
MINUTES: tuple[str, ...] = ("five", "ten", "fifteen", "twenty", "thirty", "forty")
SCENE_POSITIONS: tuple[str, ...] = ("final", "first", "last", "closing", "middle", "second")

POSITIVE_ADJECTIVES: dict[str, int] = {
    # +1: mild praise
    "good": 1, "nice": 1, "solid": 1, "decent": 1, "enjoyable": 1, "pleasant": 1, "likeable": 1, "watchable": 1,
    "fun": 1, "competent": 1, "sweet": 1, "funny": 1,
    # +2: clear praise
    "great": 2, "wonderful": 2, "excellent": 2, "beautiful": 2, "charming": 2, "clever": 2, "moving": 2,
    "gripping": 2, "touching": 2, "delightful": 2, "impressive": 2, "engaging": 2, "lovely": 2, "witty": 2,
    "memorable": 2, "powerful": 2, "thoughtful": 2, "elegant": 2,
    # +3: strong praise
    "brilliant": 3, "superb": 3, "masterful": 3, "stunning": 3, "outstanding": 3, "unforgettable": 3,
    "magnificent": 3, "extraordinary": 3, "breathtaking": 3, "flawless": 3, "exceptional": 3, "sublime": 3,
}

NEGATIVE_ADJECTIVES: dict[str, int] = {
    # -1: mild criticism
    "dull": -1, "weak": -1, "bland": -1, "flat": -1, "uneven": -1, "forgettable": -1, "mediocre": -1,
    "messy": -1, "thin": -1, "predictable": -1, "shallow": -1, "generic": -1, "stiff": -1, "underwhelming": -1,
    # -2: clear criticism
    "boring": -2, "awful": -2, "poor": -2, "clumsy": -2, "lazy": -2, "tedious": -2, "silly": -2, "lifeless": -2,
    "confusing": -2, "pointless": -2, "annoying": -2, "wooden": -2, "bad": -2, "disappointing": -2, "sloppy": -2,
    # -3: strong criticism
    "terrible": -3, "dreadful": -3, "painful": -3, "unbearable": -3, "atrocious": -3, "horrible": -3,
    "abysmal": -3, "unwatchable": -3, "embarrassing": -3, "insufferable": -3, "laughable": -3, "dire": -3,
}

# Describe without judging; not sentiment words (absent from POLARITY).
NEUTRAL_ADJECTIVES: tuple[str, ...] = (
    "long", "short", "quiet", "simple", "dark", "familiar", "strange", "slow", "loud", "serious", "unusual",
    "ambitious", "modest", "gentle", "odd", "conventional", "traditional", "brief", "sombre", "colourful",
    "moody", "earnest", "talky", "grim", "violent", "sad", "nostalgic", "restrained", "old", "bright",
)

# Evaluative nouns for "it is a <noun>." (neutral ones keep the sentence usable in neutral slots).
POSITIVE_NOUNS: dict[str, int] = {"treat": 1, "gem": 2, "delight": 2, "masterpiece": 3, "triumph": 3}
NEGATIVE_NOUNS: dict[str, int] = {"letdown": -1, "mess": -2, "failure": -2, "chore": -2, "disaster": -3}
NEUTRAL_NOUNS: tuple[str, ...] = ("curiosity", "oddity", "novelty")

# Evaluative verbs for "i <verb> every minute of it.".
POSITIVE_VERBS: dict[str, int] = {"liked": 1, "enjoyed": 1, "loved": 2, "adored": 3}
NEGATIVE_VERBS: dict[str, int] = {"disliked": -1, "hated": -2, "resented": -2, "endured": -1}
NEUTRAL_VERBS: tuple[str, ...] = ("watched", "sat through")

# A verdict sentence at the end of a review: polarity carried by "recommend" / "skip".
RECOMMEND_WORDS: dict[str, int] = {"recommend": 2, "skip": -2}

INTENSIFIERS: tuple[str, ...] = ("very", "really", "quite", "truly")

# Every sentiment-bearing word with its polarity in -3..+3 (never 0).
POLARITY: dict[str, int] = {
    **POSITIVE_ADJECTIVES, **NEGATIVE_ADJECTIVES, **POSITIVE_NOUNS, **NEGATIVE_NOUNS,
    **POSITIVE_VERBS, **NEGATIVE_VERBS, **RECOMMEND_WORDS,
}

# Short function words that are not "content": the judge's repetition penalty skips them.
FUNCTION_WORDS: tuple[str, ...] = (
    "this", "that", "with", "from", "were", "about", "have", "they", "them", "their", "there", "what", "when",
    "which", "while", "also", "just", "into", "than", "then", "some", "been", "more", "much", "even", "very",
    "really", "quite", "truly", "would", "will", "could", "only", "both", "after", "before", "every", "it's",
)


def all_words() -> list[str]:
    """Every distinct word the lexicon knows (multi-word entries split), sorted."""
    entries: list[str] = [*FILM_NOUNS, *GENRES, *(a for a, _ in ASPECTS), *FIRST_NAMES, *LAST_NAMES, *ROLES,
                          *RELATIONS, *PLOT_EVENTS, *TIME_PHRASES, *MINUTES, *SCENE_POSITIONS, *POLARITY,
                          *NEUTRAL_ADJECTIVES, *NEUTRAL_NOUNS, *NEUTRAL_VERBS, *INTENSIFIERS, *FUNCTION_WORDS]
    return sorted({word for entry in entries for word in entry.split()})
