"""Reader for Label Studio's JSON-MIN export: one flat object per annotation.

Schema (data fields at top level, each control tag's result under the tag's name)::

    {"id": 17, "prompt": "...", "candidates": [{"id": "a", "title": "...", "body": "..."}, ...],
     "rank": [{"ranker": {"rank": ["b", "a"]}}],
     "annotator": 2, "annotation_id": 5, "created_at": "...", "updated_at": "...", "lead_time": 12.5}

The pairwise template gives ``{"prompt", "answer1", "answer2", "<tag>": "answer1"}`` (a single choice is
flattened to its string), or ``"<tag>": {"choices": [...]}`` / ``{"selected": "left"}``, possibly wrapped
in a one-element list. A record with no result at all is "no annotations" (a task nobody labelled) when it
has no annotator/annotation id, else "no ranking in annotation".
"""
from __future__ import annotations

from typing import Any

from .lscommon import TaskContent, result_ranks, task_content
from .schema import (
    Ranking,
    RecordContext,
    RecordError,
    annotator_of,
    build_ranking,
    expect,
    item_id_of,
)

_META_KEYS = frozenset({"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
                        "was_cancelled", "prompt", "candidates"})


def parse(obj: Any, ctx: RecordContext) -> Ranking:
    """One JSON-MIN record -> Ranking (raises RecordError)."""
    expect(obj, "object", "record")
    if obj.get("was_cancelled") is True:
        raise RecordError("cancelled")
    content = task_content(obj, "", ctx)
    found = _find_result(obj, content)
    if found is None:
        labelled = "annotation_id" in obj or "annotator" in obj
        raise RecordError("no ranking in annotation" if labelled else "no annotations")
    kind, payload, at = found
    ranks = result_ranks(kind, payload, content, at, ctx.cfg)
    meta: dict = {"task_id": obj.get("id"), "annotation_id": obj.get("annotation_id")}
    meta.update({k: obj[k] for k in ("created_at", "updated_at", "lead_time") if k in obj})
    if content.candidate_meta:
        meta["candidates"] = content.candidate_meta
    return build_ranking(
        content.prompt, content.responses, ranks, ctx,
        annotator=annotator_of(obj.get("annotator"), "annotator"), item_id=item_id_of(obj, ctx), meta=meta,
    )


def _find_result(obj: dict, content: TaskContent) -> tuple[str, Any, str] | None:
    """(kind, payload, where) of the first tag value that ranks this task."""
    wanted = ("ranker",) if content.ids else ("choices", "selected")
    for key, value in obj.items():
        if key in _META_KEYS or key in content.answer_keys:
            continue
        wrapped = isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
        payload, where = (value[0], f"{key}[0]") if wrapped else (value, key)
        if isinstance(payload, dict):
            for kind in wanted:
                if kind in payload:
                    return kind, payload[kind], f"{where}.{kind}"
        elif content.answer_keys and _is_choice(value, content):
            return "choices", value if isinstance(value, list) else [value], key
    return None


def _is_choice(value: Any, content: TaskContent) -> bool:
    names = set(content.answer_keys) | {"left", "right"}
    if isinstance(value, str):
        return value in names
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v in names for v in value)
