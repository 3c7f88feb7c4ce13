"""Reader for K-wise ranking JSONL.

Schema (one JSON object per line; optional ``id``, ``annotator``; other fields go to meta)::

    {"prompt": "...", "responses": ["r0", "r1", "r2", "r3"], "ranking": [2, 0, 3, 1]}
        ranking = response indices, best first;
    {"prompt": "...", "responses": [...], "ranking": [[2], [0, 3], [1]]}
        tie groups, best first (0 and 3 tie);
    {"prompt": "...", "responses": [...], "ranks": [1, 2, 0, 1]}
        a non-negative rank per response, lower = better, equal = tie (made dense).

The prompt may be messages (``[{"role", "content"}, ...]``): it is kept as messages (``conversation``).
"""
from __future__ import annotations

from typing import Any

from .conversation import prompt_value
from .schema import (
    Ranking,
    RecordContext,
    RecordError,
    annotator_of,
    build_ranking,
    check_text_list,
    dense_ranks,
    expect,
    extra_fields,
    get_field,
    groups_to_ranks,
    is_int,
    item_id_of,
    order_to_ranks,
)

_USED = ("prompt", "responses", "ranking", "ranks", "id", "annotator")


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One K-wise record -> Ranking (raises RecordError)."""
    expect(obj, "object", "record")
    prompt = prompt_value(get_field(obj, "prompt"), "prompt", ctx)
    responses = check_text_list(get_field(obj, "responses"), "responses", ctx.cfg)
    if "ranking" in obj:
        ranks = ranking_to_ranks(obj["ranking"], len(responses))
    elif "ranks" in obj:
        ranks = rank_values(obj["ranks"], len(responses))
    else:
        raise RecordError("missing field 'ranking'")
    return build_ranking(
        prompt, responses, ranks, ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx),
        meta=extra_fields(obj, _USED),
    )


def ranking_to_ranks(ranking: Any, k: int) -> tuple[int, ...]:
    """Ranks from a best-first index list or a best-first list of tie groups."""
    expect(ranking, "array", "ranking")
    if all(is_int(v) for v in ranking):
        return order_to_ranks(ranking, k, "ranking")
    if all(isinstance(g, list) and all(is_int(v) for v in g) for g in ranking):
        return groups_to_ranks(ranking, k, "ranking")
    raise RecordError("wrong type for 'ranking': expected array of integers or array of arrays of integers")


def rank_values(ranks: Any, k: int) -> tuple[int, ...]:
    """Dense ranks from one non-negative integer rank per response."""
    expect(ranks, "array", "ranks")
    for i, value in enumerate(ranks):
        expect(value, "integer", f"ranks[{i}]")
        if value < 0:
            raise RecordError(f"invalid ranks: negative rank {value} at ranks[{i}]")
    if len(ranks) != k:
        raise RecordError(f"invalid ranks: {len(ranks)} ranks for {k} responses")
    return dense_ranks(ranks)
