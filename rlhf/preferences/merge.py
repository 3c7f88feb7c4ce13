"""Merging several annotators' rankings of one item, and inter-annotator agreement.

An item is a prompt with a set of responses (``convert.item_key``: same prompt + same responses in any
order). Merge rule (Borda by mean rank): each annotation's ranks are turned into fractional ranks
(number of responses ranked better + half the number tied with it), averaged over the annotations, and
the merged ranking is the dense ranking of that mean (equal means stay tied). One annotation merges to
itself. Responses keep the order of the item's first annotation.

Agreement is measured over pairs of annotations of the same item made by different annotators (two
anonymous annotations count as different; an annotator repeating an item is not compared with itself).
Items with one annotation are excluded.

* ``pairwise``: share of response pairs on which both annotations agree (same winner, or both tie),
  pooled over all compared annotation pairs. Two annotators agreeing on 5 of 6 pairs -> 5/6.
* ``kendall_tau``: mean over annotation pairs of Kendall's tau-b (C - D) / sqrt((P - T_x)(P - T_y));
  pairs where either ranking is all ties (tau-b undefined) are left out.

Both are None when no item has two comparable annotations.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from .convert import group_by_item
from .schema import Ranking, dense_ranks


@dataclass(frozen=True)
class Agreement:
    """Inter-annotator agreement; ``items`` = items with at least one compared annotation pair."""

    pairwise: float | None
    kendall_tau: float | None
    items: int
    annotator_pairs: int
    comparisons: int

    def to_dict(self) -> dict:
        return asdict(self)


def aligned_ranks(ranking: Ranking, order: Sequence[str]) -> list[int]:
    """The ranking's ranks re-expressed in the response order ``order``."""
    if ranking.responses == tuple(order):
        return list(ranking.ranks)
    rank_of = dict(zip(ranking.responses, ranking.ranks))
    return [rank_of[r] for r in order]


def twice_fractional_ranks(ranks: Sequence[int]) -> list[int]:
    """2 x (number ranked better + half the number tied with it): integers, so ties compare exactly."""
    count = Counter(ranks)
    better, twice = 0, {}
    for r in sorted(count):
        twice[r] = 2 * better + count[r] - 1
        better += count[r]
    return [twice[r] for r in ranks]


def merge_item(key: str, members: list[Ranking]) -> Ranking:
    """One merged Ranking for an item (``item_id`` = its content key); provenance in ``meta``."""
    first = members[0]
    order = list(first.responses)
    aligned = [aligned_ranks(m, order) for m in members]
    totals = [sum(col) for col in zip(*(twice_fractional_ranks(a) for a in aligned))]
    annotators = sorted({m.annotator for m in members if m.annotator is not None})
    meta = {
        "mean_rank": [t / (2 * len(members)) for t in totals],
        "annotators": annotators,
        "annotations": [
            {"source": m.source, "line": m.line, "item_id": m.item_id, "annotator": m.annotator,
             "ranks": a, "meta": m.meta}
            for m, a in zip(members, aligned)
        ],
    }
    return Ranking(
        prompt=first.prompt, responses=tuple(order), ranks=dense_ranks(totals),
        annotator=annotators[0] if len(annotators) == 1 else None,
        item_id=key, source=first.source, line=first.line, meta=meta,
    )


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def compare(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, float | None]:
    """(agreeing pairs, total pairs, Kendall tau-b or None) of two rankings in the same response order."""
    agree = concordant = discordant = ties_a = ties_b = total = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            sa, sb = _sign(a[i] - a[j]), _sign(b[i] - b[j])
            total += 1
            agree += sa == sb
            ties_a += sa == 0
            ties_b += sb == 0
            concordant += sa * sb > 0
            discordant += sa * sb < 0
    denom = math.sqrt((total - ties_a) * (total - ties_b))
    return agree, total, (concordant - discordant) / denom if denom else None


def agreement(groups: dict[str, list[Ranking]]) -> Agreement:
    """Pairwise agreement and mean Kendall tau-b over annotation pairs (rules in the module docstring)."""
    agree = total = pairs = 0
    taus: list[float] = []
    items = 0
    for members in groups.values():
        order = list(members[0].responses)
        aligned = [aligned_ranks(m, order) for m in members]
        counted = False
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                ax, ay = members[x].annotator, members[y].annotator
                if ax is not None and ax == ay:
                    continue
                a, t, tau = compare(aligned[x], aligned[y])
                agree, total, pairs, counted = agree + a, total + t, pairs + 1, True
                if tau is not None:
                    taus.append(tau)
        items += counted
    return Agreement(
        pairwise=agree / total if total else None,
        kendall_tau=math.fsum(taus) / len(taus) if taus else None,
        items=items, annotator_pairs=pairs, comparisons=total,
    )


def merge_annotations(rankings: Iterable[Ranking]) -> tuple[list[Ranking], Agreement]:
    """Merge annotations per item by mean rank (Borda); also report inter-annotator agreement."""
    groups = group_by_item(rankings)
    merged = [merge_item(key, members) for key, members in groups.items()]
    return merged, agreement(groups)
