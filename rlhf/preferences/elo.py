"""Elo ratings per response from rankings (seed step 2: "a fixed rule (for example Elo rating) turns the
ranking into a score per response").

Rule. Each item (same prompt + same response set, see ``convert.item_key``) is its own pool: every
response starts at ``initial`` (default 1000) and every annotation of the item contributes one game per
response pair i < j, with score S_i = 1 for the better rank, 0 for the worse, 0.5 each for a tie. The
expected score is the standard Elo logistic E_i = 1 / (1 + 10 ** ((R_j - R_i) / 400)).

Order independence. Ratings are NOT updated game by game in file order (that makes the result depend on
the order of the records). Instead all games of a round are scored against the ratings at the start of
the round and applied together (a simultaneous, "rating period" update):

    R_i <- R_i + K * sum over i's games of (S_i - E_i)          with K = ``k_factor`` (default 32)

repeated ``n_rounds`` times (default 1: one rating period from the initial ratings, which for one
annotation of A > B > C gives 1032, 1000, 968). Sums use ``math.fsum`` (exactly rounded), so shuffling the
input gives bit-identical ratings. The count of rounds is fixed rather than "until convergence" because
the fixed point does not exist for an unbeaten response (its Bradley-Terry rating is infinite): more
rounds only keep pushing it up.

Output per response: ``elo`` and the normalised ``score = (elo - initial) / 400``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .convert import group_by_item
from .schema import Ranking


@dataclass(frozen=True)
class EloScore:
    """The ``elo.jsonl`` line: {"group", "prompt", "response", "elo", "score"}."""

    group: str
    prompt: str | list[dict]
    response: str
    elo: float
    score: float

    def to_dict(self) -> dict:
        return {"group": self.group, "prompt": self.prompt, "response": self.response, "elo": self.elo,
                "score": self.score}


def expected_score(rating: float, opponent: float) -> float:
    """Standard Elo expected score of ``rating`` against ``opponent`` (400-point logistic scale)."""
    return 1.0 / (1.0 + 10.0 ** ((opponent - rating) / 400.0))


def games(rankings: Iterable[Ranking]) -> list[tuple[str, str, float]]:
    """(response a, response b, score of a) for every response pair of every ranking."""
    out = []
    for ranking in rankings:
        resp, ranks = ranking.responses, ranking.ranks
        for i in range(len(resp)):
            for j in range(i + 1, len(resp)):
                score = 1.0 if ranks[i] < ranks[j] else 0.0 if ranks[i] > ranks[j] else 0.5
                if resp[i] <= resp[j]:  # canonical orientation: the same game whatever the response order
                    out.append((resp[i], resp[j], score))
                else:
                    out.append((resp[j], resp[i], 1.0 - score))
    return out


def elo_pool(game_list: list[tuple[str, str, float]], k_factor: float, initial: float, n_rounds: int) -> dict[str, float]:
    """Ratings of one pool after ``n_rounds`` simultaneous updates over all its games."""
    ratings = {p: initial for a, b, _ in game_list for p in (a, b)}
    for _ in range(n_rounds):
        terms: dict[str, list[float]] = {p: [] for p in ratings}
        for a, b, score in game_list:
            e_a = expected_score(ratings[a], ratings[b])
            terms[a].append(score - e_a)
            terms[b].append((1.0 - score) - (1.0 - e_a))
        ratings = {p: ratings[p] + k_factor * math.fsum(terms[p]) for p in ratings}
    return ratings


def elo_scores(
    rankings: Iterable[Ranking], k_factor: float = 32.0, initial: float = 1000.0, n_rounds: int = 1
) -> list[EloScore]:
    """Elo rating and normalised score of every response of every item (rule in the module docstring).

    Items appear in order of first appearance, responses in the order of the item's first ranking;
    the values themselves do not depend on the input order.
    """
    return elo_from_groups(group_by_item(rankings), k_factor, initial, n_rounds)


def elo_from_groups(
    groups: dict[str, list[Ranking]], k_factor: float = 32.0, initial: float = 1000.0, n_rounds: int = 1
) -> list[EloScore]:
    """``elo_scores`` for rankings already grouped by item (``convert.group_by_item``)."""
    if n_rounds < 1:
        raise ValueError(f"n_rounds must be >= 1, got {n_rounds}")
    out = []
    for group, members in groups.items():
        ratings = elo_pool(games(members), k_factor, initial, n_rounds)
        first = members[0]
        for response in first.responses:
            elo = ratings[response]
            out.append(EloScore(group, first.prompt, response, elo, (elo - initial) / 400.0))
    return out
