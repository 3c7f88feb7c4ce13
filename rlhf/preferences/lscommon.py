"""What the two Label Studio readers share: a task's content (prompt + responses) and its results.

Two labelling set-ups are understood:

* LLM ranker: data ``{"prompt": str, "candidates": [{"id", "title", "body", ...}, ...]}`` shown as a
  ``List`` with a ``Ranker``. The result value is ``{"ranker": {<key>: [candidate ids, best first]}}``;
  the key is the Ranker's name, or with Buckets the bucket names (the first bucket other than the
  internal ``_`` column is the order, or the key named by ``ReaderConfig.ranker_key``). A candidate's
  ``body`` is the response text; its other fields (title, ended, ...) go to ``meta["candidates"]``.
* Pairwise choice (HumanSignal's RLHF template): data ``{"prompt", "answer1", "answer2"}``; the result is
  either a ``choices`` value ``{"choices": ["answer1"]}`` or a ``pairwise`` value
  ``{"selected": "left"|"right"}`` (left = answer1). The chosen answer ranks 0, the other(s) 1.

Every text value goes through ``refs.resolve_text`` (no network; files only from ``refs_dir``, when set).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .refs import resolve_text
from .schema import (
    ReaderConfig,
    RecordContext,
    RecordError,
    check_response_count,
    check_text,
    expect,
    get_field,
    ids_to_ranks,
    unique_ids,
)

_ANSWER_KEY = re.compile(r"^answer(\d+)$")
_SIDES = {"left": 0, "right": 1}


@dataclass(frozen=True)
class TaskContent:
    """A task's prompt and responses; ``ids`` for ranker tasks, ``answer_keys`` for choice tasks."""

    prompt: str
    responses: tuple[str, ...]
    ids: tuple[str, ...] = ()
    answer_keys: tuple[str, ...] = ()
    candidate_meta: list = field(default_factory=list)


def data_text(value: Any, where: str, ctx: RecordContext) -> str:
    """A text data value, with a file reference resolved safely, then validated."""
    expect(value, "string", where)
    text = resolve_text(value, where, ctx.cfg.refs_dir, ctx.cfg.max_field_chars)
    return check_text(text, where, ctx.cfg)


def task_content(data: dict, where: str, ctx: RecordContext) -> TaskContent:
    """Read prompt and responses from a task's data fields (``where`` is e.g. "data.")."""
    prompt = data_text(get_field(data, "prompt", where), f"{where}prompt", ctx)
    if "candidates" in data:
        return _ranker_content(prompt, data["candidates"], f"{where}candidates", ctx)
    keys = sorted((k for k in data if _ANSWER_KEY.match(k)), key=lambda k: int(k[6:]))
    if not keys:
        raise RecordError(f"missing field '{where}candidates'")
    check_response_count(len(keys), ctx.cfg)
    responses = tuple(data_text(data[k], f"{where}{k}", ctx) for k in keys)
    return TaskContent(prompt, responses, answer_keys=tuple(keys))


def _ranker_content(prompt: str, candidates: Any, where: str, ctx: RecordContext) -> TaskContent:
    expect(candidates, "array", where)
    check_response_count(len(candidates), ctx.cfg)        # before any candidate's file reference is read
    ids, bodies, extra = [], [], []
    for j, cand in enumerate(candidates):
        expect(cand, "object", f"{where}[{j}]")
        ids.append(get_field(cand, "id", f"{where}[{j}]."))
        bodies.append(data_text(get_field(cand, "body", f"{where}[{j}]."), f"{where}[{j}].body", ctx))
        extra.append({k: v for k, v in cand.items() if k != "body"})
    str_ids = unique_ids(ids, where)
    return TaskContent(prompt, tuple(bodies), ids=tuple(str_ids), candidate_meta=extra)


def find_result(items: list, content: TaskContent, where: str) -> tuple[str, Any, str] | None:
    """The first result item that ranks this task: (kind, payload, where) or None."""
    wanted = ("ranker",) if content.ids else ("choices", "selected")
    for j, item in enumerate(items):
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            continue
        for key in wanted:
            if key in value:
                return key, value[key], f"{where}[{j}].value.{key}"
    return None


def result_ranks(kind: str, payload: Any, content: TaskContent, where: str, cfg: ReaderConfig) -> tuple[int, ...]:
    """Ranks (in ``content.responses`` order) from a ranker / choices / pairwise payload."""
    if kind == "ranker":
        return ids_to_ranks(ranker_order(payload, where, cfg), content.ids, where)
    if kind == "choices":
        expect(payload, "array", where)
        if len(payload) != 1:
            raise RecordError(f"invalid choice: expected exactly one of {list(content.answer_keys)}, got {payload!r}")
        payload = payload[0]
    return _choice_ranks(payload, content, where)


def ranker_order(ranker: Any, where: str, cfg: ReaderConfig) -> list:
    """The best-first id list inside a ``ranker`` value (see module docstring for the key rule)."""
    expect(ranker, "object", where)
    if cfg.ranker_key is not None:
        key = cfg.ranker_key
    else:
        keys = [k for k in ranker if k != "_"] or list(ranker)
        if not keys:
            raise RecordError(f"missing field '{where}.<ranker name>'")
        key = keys[0]
    order = get_field(ranker, key, f"{where}.")
    return expect(order, "array", f"{where}.{key}")


def _choice_ranks(choice: Any, content: TaskContent, where: str) -> tuple[int, ...]:
    expect(choice, "string", where)
    keys = list(content.answer_keys)
    if choice in keys:
        best = keys.index(choice)
    elif choice in _SIDES and len(keys) == 2:
        best = _SIDES[choice]
    else:
        raise RecordError(f"invalid choice: {choice!r} is not one of {keys}")
    return tuple(0 if i == best else 1 for i in range(len(keys)))
