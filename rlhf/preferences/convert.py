"""Pure conversions of canonical rankings: item identity and ranking -> pairwise comparisons.

``Pair(prompt, chosen, rejected, margin, group)``: one InstructGPT-style comparison for the pairwise loss
-log sigmoid(r(x, y_chosen) - r(x, y_rejected)) (seed step 2). ``margin`` is the rank difference (>= 1);
``group`` is the item id, so that all K(K-1)/2 pairs of one ranking can be kept in one batch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from .schema import Ranking


@dataclass(frozen=True)
class Pair:
    """One comparison: ``chosen`` ranked better than ``rejected`` by ``margin`` ranks."""

    prompt: str | list[dict]            # text, or the messages of a conversational record
    chosen: str
    rejected: str
    margin: int
    group: str

    def to_dict(self) -> dict:
        """The ``pairs.jsonl`` line: {"group", "prompt", "chosen", "rejected", "margin"}."""
        return {"group": self.group, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                "margin": self.margin}


def item_key(prompt: str | list[dict], responses: Sequence[str]) -> str:
    """Content id of an item: same prompt and same response set (any order) -> same 16-hex-digit key."""
    payload = json.dumps([prompt, sorted(responses)], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def fingerprint(ranking: Ranking) -> bytes:
    """Identity of one judgement: prompt, responses with their ranks (any order), annotator.

    Two records with the same fingerprint are duplicates (the second is rejected "duplicate").
    """
    canon = json.dumps([ranking.prompt, sorted(zip(ranking.responses, ranking.ranks)), ranking.annotator],
                       ensure_ascii=False)
    return hashlib.sha1(canon.encode("utf-8", "surrogatepass")).digest()


def group_by_item(rankings: Iterable[Ranking]) -> dict[str, list[Ranking]]:
    """Rankings grouped by ``item_key``, groups in order of first appearance."""
    groups: dict[str, list[Ranking]] = {}
    for ranking in rankings:
        groups.setdefault(item_key(ranking.prompt, ranking.responses), []).append(ranking)
    return groups


def ranking_to_pairs(ranking: Ranking) -> list[Pair]:
    """All K(K-1)/2 pairs of a ranking, the better-ranked response as ``chosen``; ties give no pair.

    Pairs are listed in response order (i < j); margin = |rank_i - rank_j|; group = ``ranking.item_id``.
    """
    pairs = []
    resp, ranks = ranking.responses, ranking.ranks
    for i in range(len(resp)):
        for j in range(i + 1, len(resp)):
            if ranks[i] == ranks[j]:
                continue
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            pairs.append(Pair(ranking.prompt, resp[better], resp[worse], abs(ranks[i] - ranks[j]), ranking.item_id))
    return pairs
