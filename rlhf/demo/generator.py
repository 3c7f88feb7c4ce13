"""Seeded generator of the demo data: short movie reviews, SFT demonstrations and prompts.

The demo task is the sentiment task of OpenAI's lm-human-preferences: continue the opening of a movie review; PPO then
makes the continuations more positive while staying fluent. Everything here is produced from one ``random.Random(seed)``
(never the global generator, never the iteration order of a set), so the files are byte-identical on any machine.

Grammar
-------
A review is ``OPENING + " " + COMPLETION``::

    review     := opening continuation follow_up{0,2}
    opening    := one of OPENINGS[i][0]            3-7 words, neutral, ends mid-sentence ("i watched this thriller and")
    continuation := one of OPENINGS[i][1]          finishes the opening's sentence ("found it superb.")
    follow_up  := one of FOLLOW_UPS                a whole sentence ("the soundtrack is dull.")

Templates are plain strings with slots in braces:

    {genre} {a_genre} {film} {role} {relation} {name} {plot} {time} {minutes} {scene}
                        neutral fillers from ``rlhf.demo.lexicon``. A review keeps one genre (a second {genre}
                        says "film"); a {role} agrees with a gendered {name}; {a_genre} adds the article
    {aspect}            an aspect ("acting", "characters"); sets the number used by the next {is} / {was}
    {is} {was}          "is"/"are", "was"/"were", agreeing with the last {aspect}
    {NADJ} {A_NADJ}     a neutral adjective (with its article for A_NADJ)
    {ADJ} {A_ADJ}       an EVALUATIVE adjective (with its article for A_ADJ), sometimes after an intensifier
    {NOUN} {VERB} {REC} an evaluative noun ("a masterpiece"), verb ("loved"), verdict ("recommend" / "skip")
    {CONJ}              "but" between evaluative slots of opposite sign, else "and"

Each review draws a sentiment class (positive 40%, negative 40%, mixed 20%). The class fixes the sign of every
evaluative slot before rendering: positive -> +, or neutral with probability 0.15 (at least one +); negative
likewise; mixed -> both signs occur. The strength (1..3) is that of the adjective drawn uniformly from the lexicon.
A drawn review is kept only if it is well formed: opening of 3-7 words without a sentiment word, completion of 6-20
words ending with ".", 10-28 words in all, no content word (see ``rlhf.demo.judge``) twice. Otherwise it is redrawn.

Files (UTF-8 JSON lines, sorted keys, ``\\n`` endings)
------------------------------------------------------
    corpus.jsonl   {"id": "c000001", "text": ...}                             distinct reviews (pretraining)
    sft.jsonl      {"id": "s000001", "prompt": ..., "completion": ...}        demonstrations, mixed sentiment,
                                                                              texts distinct from the corpus
    prompts.jsonl  {"id": "p000001", "prompt": ..., "split": ...}             distinct openings absent from sft.jsonl;
                                                                              split annotate/ppo/eval = 50/30/20 %
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rlhf.demo import lexicon as lx
from rlhf.demo.judge import is_content_word

SENTIMENTS: tuple[tuple[str, float], ...] = (("positive", 0.4), ("negative", 0.4), ("mixed", 0.2))
SPLITS: tuple[tuple[str, int], ...] = (("annotate", 50), ("ppo", 30), ("eval", 20))
OPENING_WORDS = (3, 7)
COMPLETION_WORDS = (6, 20)
REVIEW_WORDS = (10, 28)
FOLLOW_UP_WEIGHTS = (0.25, 0.5, 0.25)   # probability of 0, 1, 2 follow-up sentences
NEUTRAL_SLOT_RATE = 0.15                # share of evaluative slots left neutral in a positive/negative review
INTENSIFIER_RATE = 0.15
MAX_TRIES = 1000

# (opening, continuations): the opening never holds an evaluative slot, so prompts carry no sentiment.
OPENINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("i watched this {NADJ} {genre} and", ("found it {ADJ}.", "thought it was {ADJ}.",
                                           "the {aspect} {was} {ADJ}.")),
    ("the {aspect} in this {genre}", ("{was} {ADJ}.", "{was} {ADJ} {CONJ} {ADJ}.",
                                      "{was} {ADJ}, {CONJ} the {aspect} {was} {ADJ}.")),
    ("as a fan of {name},", ("i found this {genre} {ADJ}.", "i thought the {film} was {ADJ}.",
                             "i have to say the {aspect} {is} {ADJ}.")),
    ("{name} plays a {role}", ("in this {ADJ} {genre}.", "and the performance is {ADJ}.",
                               "who {plot}, and the result is {ADJ}.")),
    ("this {genre} about a {role}", ("is {ADJ}.", "is {ADJ} from start to finish.",
                                     "is {ADJ}, {CONJ} the {aspect} {is} {ADJ}.")),
    ("i saw this {genre} with my {relation}", ("and we both thought it was {ADJ}.",
                                               "and the {aspect} {was} {ADJ}.")),
    ("the new {genre} from {name}", ("is {ADJ}.", "is {A_ADJ} {film}.", "is {ADJ}, {CONJ} the {aspect} {is} {ADJ}.")),
    ("{name} stars as a {role}", ("in this {ADJ} {genre}.", "and the whole {film} is {ADJ}.")),
    ("from the opening scene, this {NADJ} {genre}", ("is {ADJ}.", "feels {ADJ}.", "is {ADJ} {CONJ} {ADJ}.")),
    ("the {aspect} of this {NADJ} {film}", ("{is} {ADJ}.", "{was} {ADJ} {CONJ} {ADJ}.")),
    ("the story follows {A_NADJ} {role} who", ("{plot}, and the result is {ADJ}.", "{plot}, and it is {ADJ}.")),
    ("i rented this {genre} {time}", ("and found it {ADJ}.", "and the {aspect} {was} {ADJ}.")),
    ("{name} directed this {genre}, and", ("the result is {ADJ}.", "the {aspect} {is} {ADJ}.",
                                          "it is {A_ADJ} piece of work.")),
    ("my {relation} and i watched this {genre}", ("{time}, and it was {ADJ}.", "and found it {ADJ}.")),
    ("{minutes} minutes into this {NADJ} {genre},", ("i knew it would be {ADJ}.",
                                                     "it was clear the {aspect} {was} {ADJ}.")),
    ("in this {genre}, {name}", ("gives {A_ADJ} performance as a {role}.",
                                 "plays a {role}, and the result is {ADJ}.")),
    ("the first hour of this {NADJ} {genre}", ("is {ADJ}, {CONJ} the rest of it is {ADJ}.",
                                               "is {ADJ} {CONJ} {ADJ}.")),
    ("on paper, this {genre} about a {role}", ("sounds {NADJ}, but the result is {ADJ}.",)),
    ("{name} is the {role} in", ("this {ADJ} {genre}.", "this {genre}, and the performance is {ADJ}.")),
    ("the {scene} scene of this {NADJ} {genre}", ("is {ADJ}, {CONJ} the {aspect} {is} {ADJ}.",
                                                  "is {ADJ} {CONJ} {ADJ}.", "is {ADJ}.")),
    ("i caught this {NADJ} {genre} on television", ("and it was {ADJ}.", "and thought it was {ADJ}.")),
    ("my {relation} told me about this {genre},", ("and it turned out to be {ADJ}.",
                                                   "and the {aspect} {is} {ADJ}.")),
)

FOLLOW_UPS: tuple[str, ...] = (
    "the {aspect} {is} {ADJ}.",
    "the {aspect} {was} {ADJ}, {CONJ} the {aspect} {was} {ADJ}.",
    "{name} is {ADJ} as the {role}.",
    "overall, it is {A_ADJ} {genre}.",
    "in the end, it is {NOUN}.",
    "i {VERB} every minute of it.",
    "i would {REC} it.",
    "even the {aspect} {is} {ADJ}.",
    "{name} gives {A_ADJ} performance.",
    "the {film} is {ADJ} from start to finish.",
    "as {a_genre}, it is {ADJ}.",
    "the scenes with the {role} are {ADJ}.",
    "the {aspect} {is} {ADJ} {CONJ} {ADJ}.",
    "it is {A_ADJ} way to spend an evening.",
    "by the end, the {aspect} {was} {ADJ}.",
    "fans of {name} will find it {ADJ}.",
    "the {aspect} {was} {NADJ} and {ADJ}.",
)

EVALUATIVE_SLOTS = frozenset({"ADJ", "A_ADJ", "NOUN", "VERB", "REC"})
_SLOT = re.compile(r"\{([A-Za-z_]+)\}")


@dataclass(frozen=True)
class Review:
    """One generated review: ``text == opening + " " + completion``."""

    opening: str
    completion: str
    sentiment: str

    @property
    def text(self) -> str:
        return f"{self.opening} {self.completion}"


@dataclass(frozen=True)
class DemoData:
    """Everything ``generate_demo_data`` writes, before serialisation (keeps the sentiment class for analysis)."""

    corpus: list[Review]
    sft: list[Review]
    prompts: list[tuple[str, str]]   # (opening, split)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Filler:
    """Renders templates for one review, left to right, consuming a plan of evaluative signs (+1, 0, -1)."""

    def __init__(self, rng: random.Random, signs: Sequence[int]) -> None:
        self.rng = rng
        self.signs = list(signs)
        self.next_slot = 0
        self.used: set[str] = set()   # membership only, never iterated (determinism)
        self.plural = False
        self.gender: str | None = None   # of the last {name}: keeps "a mother" away from "james"
        self.genre: str | None = None    # the review's genre: a second {genre} slot says "film" instead

    def pick(self, pool: Sequence[str]) -> str:
        """A word from pool not used yet in this review (falls back to the whole pool)."""
        fresh = [w for w in pool if w not in self.used]
        word = self.rng.choice(fresh or list(pool))
        self.used.add(word)
        return word

    def _sign(self) -> int:
        sign = self.signs[self.next_slot]
        self.next_slot += 1
        return sign

    def _adjective(self, sign: int) -> str:
        if sign == 0:
            return self.pick(lx.NEUTRAL_ADJECTIVES)
        pool = lx.POSITIVE_ADJECTIVES if sign > 0 else lx.NEGATIVE_ADJECTIVES
        word = self.pick(list(pool))
        if self.rng.random() < INTENSIFIER_RATE:
            # "very superb" is not English; only "truly" goes with the strongest words.
            word = ("truly" if abs(pool[word]) == 3 else self.rng.choice(lx.INTENSIFIERS)) + " " + word
        return word

    def _evaluative(self, kind: str) -> str:
        sign = self._sign()
        if kind == "ADJ":
            return self._adjective(sign)
        if kind == "A_ADJ":
            adjective = self._adjective(sign)
            return f"{_article(adjective)} {adjective}"
        if kind == "NOUN":
            pool = lx.NEUTRAL_NOUNS if sign == 0 else list(lx.POSITIVE_NOUNS if sign > 0 else lx.NEGATIVE_NOUNS)
            noun = self.pick(pool)
            return f"{_article(noun)} {noun}"
        if kind == "VERB":
            return self.pick(lx.NEUTRAL_VERBS if sign == 0 else list(lx.POSITIVE_VERBS if sign > 0
                                                                       else lx.NEGATIVE_VERBS))
        return "recommend" if sign >= 0 else "skip"   # REC: the plan never leaves it neutral

    def _conjunction(self) -> str:
        before, after = self.signs[self.next_slot - 1], self.signs[self.next_slot]
        return "but" if before * after < 0 else "and"

    def _neutral(self, kind: str) -> str:
        if kind == "aspect":
            aspect, self.plural = self.rng.choice([a for a in lx.ASPECTS if a[0] not in self.used] or lx.ASPECTS)
            self.used.add(aspect)
            return aspect
        if kind in ("is", "was"):
            return {"is": ("is", "are"), "was": ("was", "were")}[kind][self.plural]
        if kind == "name":
            first = self.rng.choice(lx.FIRST_NAMES)
            self.gender = "f" if first in lx.FEMALE_FIRST_NAMES else "m"
            return f"{first} {self.rng.choice(lx.LAST_NAMES)}"
        if kind == "role":
            return self.pick([r for r in lx.ROLES
                              if self.gender is None or lx.GENDERED_ROLES.get(r, self.gender) == self.gender])
        if kind in ("genre", "a_genre"):
            if self.genre is None:
                self.genre = noun = self.pick(lx.GENRES)
            else:
                noun = self.pick(lx.FILM_NOUNS)
            return noun if kind == "genre" else f"{_article(noun)} {noun}"
        if kind == "A_NADJ":
            adjective = self.pick(lx.NEUTRAL_ADJECTIVES)
            return f"{_article(adjective)} {adjective}"
        pools = {"film": lx.FILM_NOUNS, "relation": lx.RELATIONS, "minutes": lx.MINUTES, "scene": lx.SCENE_POSITIONS,
                 "plot": lx.PLOT_EVENTS, "time": lx.TIME_PHRASES, "NADJ": lx.NEUTRAL_ADJECTIVES}
        return self.pick(pools[kind])

    def render(self, template: str) -> str:
        """Fill every slot of one template."""
        def fill(match: re.Match[str]) -> str:
            kind = match.group(1)
            if kind in EVALUATIVE_SLOTS:
                return self._evaluative(kind)
            if kind == "CONJ":
                return self._conjunction()
            return self._neutral(kind)
        return _SLOT.sub(fill, template)


def _evaluative_kinds(templates: Iterable[str]) -> list[str]:
    return [k for t in templates for k in _SLOT.findall(t) if k in EVALUATIVE_SLOTS]


def _plan_signs(rng: random.Random, sentiment: str, kinds: Sequence[str]) -> list[int] | None:
    """The sign of each evaluative slot for a review of this class (None: the templates cannot express it)."""
    n = len(kinds)
    if sentiment == "mixed":
        if n < 2:
            return None
        signs = [rng.choice((1, -1)) if rng.random() >= 0.1 else 0 for _ in range(n)]
        if 1 not in signs or -1 not in signs:
            first, second = rng.sample(range(n), 2)
            signs[first] = rng.choice((1, -1))
            signs[second] = -signs[first]
    else:
        sign = 1 if sentiment == "positive" else -1
        signs = [sign if rng.random() >= NEUTRAL_SLOT_RATE else 0 for _ in range(n)]
        if sign not in signs:
            signs[rng.randrange(n)] = sign
    for i, kind in enumerate(kinds):
        if kind == "REC" and signs[i] == 0:   # a verdict ("recommend" / "skip") has no neutral form
            signs[i] = rng.choice((1, -1)) if sentiment == "mixed" else (1 if sentiment == "positive" else -1)
    return signs


def _words(text: str) -> list[str]:
    return [w.strip(".,") for w in text.split()]


def is_well_formed(review: Review) -> bool:
    """The grammar's constraints on lengths, the neutral opening and repetition (see the module docstring)."""
    opening, completion = review.opening.split(), review.completion.split()
    content = [w for w in _words(review.text) if is_content_word(w)]
    return (OPENING_WORDS[0] <= len(opening) <= OPENING_WORDS[1]
            and COMPLETION_WORDS[0] <= len(completion) <= COMPLETION_WORDS[1]
            and REVIEW_WORDS[0] <= len(opening) + len(completion) <= REVIEW_WORDS[1]
            and not review.opening.endswith(".") and review.completion.endswith(".")
            and not any(w in lx.POLARITY for w in _words(review.opening))
            and len(content) == len(set(content)))


def _draw_sentiment(rng: random.Random) -> str:
    return rng.choices([s for s, _ in SENTIMENTS], weights=[w for _, w in SENTIMENTS])[0]


def sample_review(rng: random.Random) -> Review:
    """Draw one well-formed review (class drawn first, then templates until the constraints hold)."""
    sentiment = _draw_sentiment(rng)
    for _ in range(MAX_TRIES):
        opening_template, continuations = rng.choice(OPENINGS)
        n_follow = rng.choices(range(len(FOLLOW_UP_WEIGHTS)), weights=FOLLOW_UP_WEIGHTS)[0]
        templates = [rng.choice(continuations), *rng.sample(FOLLOW_UPS, n_follow)]
        signs = _plan_signs(rng, sentiment, _evaluative_kinds(templates))
        if signs is None:
            continue
        filler = _Filler(rng, signs)
        opening = filler.render(opening_template)
        review = Review(opening, " ".join(filler.render(t) for t in templates), sentiment)
        if is_well_formed(review):
            return review
    raise RuntimeError("the grammar failed to produce a well-formed review")   # pragma: no cover


def sample_opening(rng: random.Random) -> str:
    """Draw one opening (a prompt) of 3-7 words."""
    for _ in range(MAX_TRIES):
        opening = _Filler(rng, []).render(rng.choice(OPENINGS)[0])
        if OPENING_WORDS[0] <= len(opening.split()) <= OPENING_WORDS[1]:
            return opening
    raise RuntimeError("the grammar failed to produce an opening")   # pragma: no cover


def _distinct_reviews(rng: random.Random, n: int, exclude: set[str]) -> list[Review]:
    """n reviews whose texts are pairwise distinct and not in exclude (exclude is updated)."""
    reviews: list[Review] = []
    while len(reviews) < n:
        review = sample_review(rng)
        if review.text not in exclude:
            exclude.add(review.text)
            reviews.append(review)
    return reviews


def _split_labels(rng: random.Random, n: int) -> list[str]:
    counts = [n * share // 100 for _, share in SPLITS[:-1]]
    labels = [name for (name, _), count in zip(SPLITS, counts) for _ in range(count)]
    labels += [SPLITS[-1][0]] * (n - len(labels))
    rng.shuffle(labels)
    return labels


def build_demo_data(seed: int = 0, n_corpus: int = 6000, n_sft: int = 1500, n_prompts: int = 1600) -> DemoData:
    """Draw corpus, SFT demonstrations and prompts, in that order, from one ``random.Random(seed)``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    corpus = _distinct_reviews(rng, n_corpus, seen)
    sft = _distinct_reviews(rng, n_sft, seen)
    taken = {review.opening for review in sft}
    openings: list[str] = []
    while len(openings) < n_prompts:
        opening = sample_opening(rng)
        if opening not in taken:
            taken.add(opening)
            openings.append(opening)
    return DemoData(corpus, sft, list(zip(openings, _split_labels(rng, n_prompts))))


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows]
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)
    return len(lines)


def generate_demo_data(out_dir: str | Path, seed: int = 0, n_corpus: int = 6000, n_sft: int = 1500,
                       n_prompts: int = 1600) -> dict[str, int]:
    """Write corpus.jsonl, sft.jsonl and prompts.jsonl into out_dir; return the number of records per file stem."""
    data = build_demo_data(seed, n_corpus, n_sft, n_prompts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "corpus": _write_jsonl(out / "corpus.jsonl",
                               ({"id": f"c{i:06d}", "text": r.text} for i, r in enumerate(data.corpus, 1))),
        "sft": _write_jsonl(out / "sft.jsonl", ({"id": f"s{i:06d}", "prompt": r.opening, "completion": r.completion}
                                                for i, r in enumerate(data.sft, 1))),
        "prompts": _write_jsonl(out / "prompts.jsonl", ({"id": f"p{i:06d}", "prompt": p, "split": s}
                                                        for i, (p, s) in enumerate(data.prompts, 1))),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rlhf.demo.generator OUT_DIR [--seed N] [--n-corpus N] [--n-sft N] [--n-prompts N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-corpus", type=int, default=6000)
    parser.add_argument("--n-sft", type=int, default=1500)
    parser.add_argument("--n-prompts", type=int, default=1600)
    args = parser.parse_args(argv)
    counts = generate_demo_data(args.out_dir, args.seed, args.n_corpus, args.n_sft, args.n_prompts)
    print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
    main()
