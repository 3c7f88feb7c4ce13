"""Reader for Label Studio's full JSON export (``[task, ...]``): one Ranking per annotation.

Schema of a task (fields used; everything else is ignored or kept in meta)::

    {"id": 17,
     "data": {"prompt": "...", "candidates": [{"id": "a", "title": "...", "body": "..."}, ...]},
     "annotations": [{"id": 5, "completed_by": 2, "was_cancelled": false, "lead_time": 12.5,
                      "result": [{"id": "...", "type": "ranker", "from_name": "rank",
                                  "to_name": "candidates", "value": {"ranker": {"rank": ["b", "a"]}}}]}],
     "predictions": [...], "meta": {...}, "inner_id": 1, "total_annotations": 1, ...}

or, for the pairwise template, ``data: {"prompt", "answer1", "answer2"}`` with a ``choices`` or
``pairwise`` result (see ``lscommon``). Each annotation is one record: cancelled ones are rejected
"cancelled"; a task without annotations is one record rejected "no annotations". Predictions (model
pre-labels) and drafts are not human judgements and are not read. ``annotator`` = ``completed_by``.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from .lscommon import TaskContent, find_result, result_ranks, task_content
from .schema import (
    Ranking,
    RecordContext,
    RecordError,
    Reject,
    annotator_of,
    build_ranking,
    expect,
    get_field,
    item_id_of,
)

_ANNOTATION_META = ("lead_time", "created_at", "updated_at", "ground_truth")


def records(task: Any, ctx: RecordContext) -> Iterator[Ranking | Reject]:
    """Yield one Ranking or Reject per annotation of a task (one Reject for an unusable task)."""
    try:
        expect(task, "object", "task")
        annotations = expect(get_field(task, "annotations"), "array", "annotations")
    except RecordError as exc:
        yield ctx.reject(str(exc))
        return
    if not annotations:
        yield ctx.reject("no annotations")
        return
    content, data_error = _content(task, ctx)
    for j, annotation in enumerate(annotations):
        try:
            yield _annotation(task, annotation, j, content, data_error, ctx)
        except RecordError as exc:
            record = ctx.text if str(exc) == data_error else _annotation_text(task, annotation)
            yield ctx.reject(str(exc), record)


def _content(task: dict, ctx: RecordContext) -> tuple[TaskContent | None, str | None]:
    try:
        data = expect(get_field(task, "data"), "object", "data")
        return task_content(data, "data.", ctx), None
    except RecordError as exc:
        return None, str(exc)


def _annotation(
    task: dict, annotation: Any, j: int, content: TaskContent | None, data_error: str | None, ctx: RecordContext
) -> Ranking:
    where = f"annotations[{j}]"
    expect(annotation, "object", where)
    if annotation.get("was_cancelled") is True:
        raise RecordError("cancelled")
    if content is None:
        raise RecordError(data_error or "invalid task data")
    result = expect(get_field(annotation, "result", f"{where}."), "array", f"{where}.result")
    found = find_result(result, content, f"{where}.result")
    if found is None:
        raise RecordError("no ranking in annotation")
    kind, payload, at = found
    ranks = result_ranks(kind, payload, content, at, ctx.cfg)
    annotator = annotator_of(annotation.get("completed_by"), f"{where}.completed_by")
    return build_ranking(
        content.prompt, content.responses, ranks, ctx,
        annotator=annotator, item_id=item_id_of(task, ctx), meta=_meta(task, annotation, content),
    )


def _meta(task: dict, annotation: dict, content: TaskContent) -> dict:
    meta: dict = {"task_id": task.get("id"), "annotation_id": annotation.get("id")}
    meta.update({k: annotation[k] for k in _ANNOTATION_META if k in annotation})
    if content.candidate_meta:
        meta["candidates"] = content.candidate_meta
    data_extra = {k: v for k, v in task["data"].items() if k != "prompt" and k != "candidates"
                  and k not in content.answer_keys}
    if data_extra:
        meta["data"] = data_extra
    if task.get("meta"):
        meta["task_meta"] = task["meta"]
    return meta


def _annotation_text(task: dict, annotation: Any) -> str:
    """The rejected annotation with its task id, as JSON text."""
    try:
        return json.dumps({"task_id": task.get("id"), "annotation": annotation}, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(annotation)
