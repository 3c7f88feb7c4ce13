"""Reader for Anthropic HH-RLHF style JSONL: two full transcripts that differ in the last answer.

Schema (one JSON object per line; optional ``id``, ``annotator``; other fields go to meta)::

    {"chosen":   "\\n\\nHuman: How do I boil an egg?\\n\\nAssistant: Put it in boiling water for 8 minutes.",
     "rejected": "\\n\\nHuman: How do I boil an egg?\\n\\nAssistant: Eggs are laid by hens."}

The prompt is the shared prefix of both strings up to and including its last "\\n\\nAssistant:"; the
responses are the remainders (kept verbatim, usually with their leading space). A pair without such a
shared prefix is rejected "no shared prompt". The result is a Ranking of 2 (chosen rank 0).
"""
from __future__ import annotations

import os
from typing import Any

from .schema import (
    Ranking,
    RecordContext,
    RecordError,
    annotator_of,
    build_ranking,
    check_text,
    expect,
    extra_fields,
    get_field,
    item_id_of,
)

ASSISTANT_MARK = "\n\nAssistant:"
_USED = ("chosen", "rejected", "id", "annotator")


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One HH record -> Ranking of 2 (raises RecordError)."""
    expect(obj, "object", "record")
    chosen = check_text(get_field(obj, "chosen"), "chosen", ctx.cfg)
    rejected = check_text(get_field(obj, "rejected"), "rejected", ctx.cfg)
    prompt, responses = split_transcripts(chosen, rejected)
    for name, text in zip(("chosen", "rejected"), responses):
        if not text.strip():
            raise RecordError(f"empty text in '{name}': nothing after the shared prompt")
    return build_ranking(
        prompt, responses, (0, 1), ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx),
        meta=extra_fields(obj, _USED),
    )


def split_transcripts(chosen: str, rejected: str) -> tuple[str, list[str]]:
    """(prompt, [chosen answer, rejected answer]) split at the last shared "\\n\\nAssistant:"."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_MARK)
    if cut < 0:
        raise RecordError("no shared prompt: 'chosen' and 'rejected' share no prefix ending in '\\n\\nAssistant:'")
    cut += len(ASSISTANT_MARK)
    return chosen[:cut], [chosen[cut:], rejected[cut:]]
