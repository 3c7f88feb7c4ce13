"""Reader for UltraFeedback-style records: one prompt, K completions, a score for each.

Schema (one object per record; optional ``id``, ``annotator``; other fields go to meta)::

    {"prompt": "..." | [messages],
     "completions": [{"response": "...", "overall_score": 8.5}, {"text": "...", "score": 3}, ...]}

A completion's text is its ``response`` or ``text`` field; its score is the first of ``overall_score``, ``score``,
``rating`` that it has: any finite number (UltraFeedback's overall scores run 1-10, its fine-grained ratings 1-5,
so ``rating_scale`` does not apply). The ranking is the ratings reader's: higher score = better rank, equal scores
tie (made dense); the scores are kept in ``meta["scores"]``. Other fields of a completion (model, critique,
annotations) are not kept. UltraFeedback itself calls the prompt ``instruction``: map it with ``columns``.
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
    check_text,
    dense_ranks,
    expect,
    extra_fields,
    get_field,
    item_id_of,
)

TEXT_KEYS = ("response", "text")
SCORE_KEYS = ("overall_score", "score", "rating")
_USED = ("prompt", "completions", "id", "annotator")


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One prompt + scored completions -> Ranking (raises RecordError)."""
    expect(obj, "object", "record")
    prompt = prompt_value(get_field(obj, "prompt"), "prompt", ctx)
    completions = expect(get_field(obj, "completions"), "array", "completions")
    responses, scores = [], []
    for i, c in enumerate(completions):
        text, score = completion(c, f"completions[{i}]", ctx)
        responses.append(text)
        scores.append(score)
    meta = extra_fields(obj, _USED)
    meta["scores"] = scores
    return build_ranking(
        prompt, responses, dense_ranks([-s for s in scores]), ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx), meta=meta,
    )


def completion(value: Any, where: str, ctx: RecordContext) -> tuple[str, float]:
    """(text, score) of one completion object."""
    expect(value, "object", where)
    text_key = next((k for k in TEXT_KEYS if k in value), None)
    if text_key is None:
        raise RecordError(f"missing field '{where}.response'")
    score_key = next((k for k in SCORE_KEYS if k in value), None)
    if score_key is None:
        raise RecordError(f"missing field '{where}.overall_score'")
    score = expect(value[score_key], "integer or number", f"{where}.{score_key}")
    if not math.isfinite(score):
        raise RecordError(f"score out of range: {score} at {where}.{score_key} is not a finite number")
    return check_text(value[text_key], f"{where}.{text_key}", ctx.cfg), score
