"""Reader for per-response scalar ratings JSONL.

Schema (one JSON object per line; optional ``id``, ``annotator``; other fields go to meta)::

    {"prompt": "...", "responses": ["r0", "r1", "r2"], "ratings": [5, 2, 7]}

The prompt may be messages (``[{"role", "content"}, ...]``): it is kept as messages (``conversation``).

Ratings are numbers within ``ReaderConfig.rating_scale`` (inclusive, default 1-7). The ranking: higher
rating = better rank, equal ratings tie; the raw ratings are kept in ``meta["ratings"]``.
"""
from __future__ import annotations

import math
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
    item_id_of,
)

_USED = ("prompt", "responses", "ratings", "id", "annotator")


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One ratings record -> Ranking (raises RecordError)."""
    expect(obj, "object", "record")
    prompt = prompt_value(get_field(obj, "prompt"), "prompt", ctx)
    responses = check_text_list(get_field(obj, "responses"), "responses", ctx.cfg)
    ratings = check_ratings(get_field(obj, "ratings"), len(responses), ctx.cfg.rating_scale)
    meta = extra_fields(obj, _USED)
    meta["ratings"] = ratings
    return build_ranking(
        prompt, responses, dense_ranks([-r for r in ratings]), ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx), meta=meta,
    )


def check_ratings(ratings: Any, k: int, scale: tuple[float, float]) -> list[float]:
    """One finite number per response, each within ``scale``."""
    expect(ratings, "array", "ratings")
    low, high = scale
    for i, value in enumerate(ratings):
        expect(value, "integer or number", f"ratings[{i}]")
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise RecordError(f"rating out of range: {value} at ratings[{i}] not in [{low:g}, {high:g}]")
    if len(ratings) != k:
        raise RecordError(f"invalid ratings: {len(ratings)} ratings for {k} responses")
    return list(ratings)
