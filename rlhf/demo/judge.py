"""The gold judge of the demo task: a documented, noise-free preference for positive, fluent review completions.

It plays the part of the people whose taste the reward model learns (the simulated annotators of
``rlhf.demo.annotators`` rank by it plus noise) and it is the ground truth that evaluation reports
("gold score") to tell whether PPO improved the policy or only gamed the learned reward model.

Formula (all parts deterministic functions of prompt, response and ended)::

    score = sentiment - 1.5 * (1 - fluency) - repetition - format_penalty - unfinished_penalty

    sentiment          mean polarity of the sentiment words of the response (``lexicon.POLARITY``, -3..+3; an
                       intensifier right before a sentiment word multiplies it by 1.5, capped at +-3), divided by 3,
                       so in [-1, 1]; 0 when the response has no sentiment word. The MEAN, not the sum: stacking
                       adjectives ("superb brilliant stunning") earns nothing over one strong word.
    fluency            share of the token bigrams of (last token of the prompt + response tokens) that occur in the
                       corpus; punctuation is a token of its own ("superb," -> "superb" ","). 0 with no bigram.
                       Word salad and repeated words ("great great") make bigrams the corpus never has.
    repetition         0.5 for every repeated occurrence of a content word (a word of more than 3 letters, not a
                       function word such as "this" or "very") in the response, capped at 1.5.
    format_penalty     0.5 when the response has fewer than 4 words or does not end with ".".
    unfinished_penalty 1.0 when ended is False: the response was cut at the length limit before the end-of-sequence
                       token (lm-human-preferences likewise penalises responses without the truncation token).

So the best responses (score near 1) are fluent, finished, non-repetitive and uniformly strongly positive; scores fall
to about -5.5 at worst. Every term is a function of words and word pairs, which a small reward model can learn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rlhf.demo.lexicon import FUNCTION_WORDS, INTENSIFIERS, POLARITY

FLUENCY_WEIGHT = 1.5
REPEAT_PENALTY = 0.5
REPEAT_CAP = 1.5
FORMAT_PENALTY = 0.5
UNFINISHED_PENALTY = 1.0
INTENSIFIER_FACTOR = 1.5
MIN_WORDS = 4
MAX_POLARITY = 3

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_FUNCTION_WORDS = frozenset(FUNCTION_WORDS)
_INTENSIFIERS = frozenset(INTENSIFIERS)


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens, with every punctuation character as a token of its own."""
    return _TOKEN.findall(text.lower())


def is_content_word(token: str) -> bool:
    """A word of more than 3 letters that is not a function word (repetition counts only these)."""
    return len(token) > 3 and token.isalpha() and token not in _FUNCTION_WORDS


def sentiment(tokens: Sequence[str]) -> float:
    """Mean polarity of the sentiment words (intensified x1.5, capped at 3) divided by 3; 0 without any."""
    values: list[float] = []
    for i, token in enumerate(tokens):
        polarity = POLARITY.get(token)
        if polarity is None:
            continue
        if i > 0 and tokens[i - 1] in _INTENSIFIERS:
            polarity = max(-MAX_POLARITY, min(MAX_POLARITY, INTENSIFIER_FACTOR * polarity))
        values.append(polarity)
    return sum(values) / len(values) / MAX_POLARITY if values else 0.0


def repetition(tokens: Sequence[str]) -> float:
    """0.5 per repeated occurrence of a content word, capped at 1.5."""
    seen: set[str] = set()
    repeats = 0
    for token in tokens:
        if is_content_word(token):
            repeats += token in seen
            seen.add(token)
    return min(REPEAT_CAP, REPEAT_PENALTY * repeats)


@dataclass(frozen=True)
class Judgement:
    """The parts of one gold score (see the module docstring)."""

    sentiment: float
    fluency: float
    repetition: float
    format_penalty: float
    unfinished_penalty: float

    @property
    def score(self) -> float:
        return (self.sentiment - FLUENCY_WEIGHT * (1.0 - self.fluency) - self.repetition
                - self.format_penalty - self.unfinished_penalty)


class GoldJudge:
    """Scores (prompt, response) pairs by positive sentiment and fluency; see the module docstring."""

    def __init__(self, bigrams: Iterable[tuple[str, str]]) -> None:
        self.bigrams: frozenset[tuple[str, str]] = frozenset(bigrams)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "GoldJudge":
        """Learn the fluent bigrams from texts."""
        bigrams: set[tuple[str, str]] = set()
        for text in texts:
            tokens = tokenize(text)
            bigrams.update(zip(tokens, tokens[1:]))
        return cls(bigrams)

    @classmethod
    def from_corpus(cls, corpus_path: str | Path) -> "GoldJudge":
        """Learn the fluent bigrams from a corpus.jsonl (one {"text": ...} object per line)."""
        with open(corpus_path, encoding="utf-8") as handle:
            return cls.from_texts(json.loads(line)["text"] for line in handle if line.strip())

    def fluency(self, prompt: str, response_tokens: Sequence[str]) -> float:
        """Share of bigrams over (last prompt token + response tokens) seen in the corpus."""
        context = tokenize(prompt)[-1:]
        tokens = [*context, *response_tokens]
        pairs = list(zip(tokens, tokens[1:]))
        return sum(pair in self.bigrams for pair in pairs) / len(pairs) if pairs else 0.0

    def judge(self, prompt: str, response: str, ended: bool = True) -> Judgement:
        """All parts of the score of one response."""
        tokens = tokenize(response)
        n_words = sum(token[0].isalnum() for token in tokens)
        malformed = n_words < MIN_WORDS or not response.rstrip().endswith(".")
        return Judgement(
            sentiment=sentiment(tokens),
            fluency=self.fluency(prompt, tokens),
            repetition=repetition(tokens),
            format_penalty=FORMAT_PENALTY if malformed else 0.0,
            unfinished_penalty=0.0 if ended else UNFINISHED_PENALTY,
        )

    def score(self, prompt: str, response: str, ended: bool = True) -> float:
        """The gold score of one response (higher is better)."""
        return self.judge(prompt, response, ended).score

    def score_many(self, prompts: Sequence[str], responses: Sequence[str],
                   ended: Sequence[bool] | None = None) -> list[float]:
        """Scores of aligned lists; ended defaults to all True."""
        if len(prompts) != len(responses) or (ended is not None and len(ended) != len(responses)):
            raise ValueError("prompts, responses and ended must have the same length")
        flags = [True] * len(responses) if ended is None else list(ended)
        return [self.score(p, r, e) for p, r, e in zip(prompts, responses, flags)]

    def rank(self, prompt: str, responses: Sequence[str], ended: bool | Sequence[bool] = True) -> list[int]:
        """Indices of responses to one prompt, best first; ties keep their input order."""
        flags = [ended] * len(responses) if isinstance(ended, bool) else list(ended)
        scores = self.score_many([prompt] * len(responses), responses, flags)
        return sorted(range(len(responses)), key=lambda i: -scores[i])
