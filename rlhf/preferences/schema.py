"""Canonical records of the preference ingest, its errors, and the validation helpers all readers share.

Canonical record (every reader yields these, or a ``Reject``):

``Ranking(prompt, responses, ranks, annotator, item_id, source, line, meta)``
    One annotator's judgement of K >= 2 responses to one prompt (text, or a list of ``{"role", "content"}``
    messages for a conversational record: ``conversation``). ``ranks[i]`` is the rank of
    ``responses[i]``: 0 = best, equal ranks = tie, always dense (0, 1, 2, ... with no gaps).
    A pairwise comparison is a Ranking of 2; a rating item is a Ranking derived from the ratings
    (higher rating = better rank) with the raw ratings in ``meta["ratings"]``.
    ``source``/``line`` say where the record starts; ``item_id`` is the source's own id when it has one.

``Reject(source, line, reason, record)``
    One input record that was not accepted. ``reason`` is a precise message whose part before the first
    ':' (with list indices removed) is its ``kind``, used to count rejects by reason; ``record`` is the raw
    record text, at most ``MAX_RECORD_TEXT`` characters.

Readers raise ``RecordError(reason)`` while validating one record; the dispatcher turns it into a Reject.
``IngestError`` is for inputs that cannot be read at all; its message starts with ``<file>`` or
``<file>:<line>``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from rlhf.config import PreferencesConfig

MAX_RECORD_TEXT = 2000
MAX_DEPTH_LIMIT = 256   # json recurses once per level: a max_depth well below Python's recursion limit (1000)
_DEFAULTS = PreferencesConfig()   # the one source of the defaults (params.yaml's preferences: section)
_SURROGATE = re.compile("[\ud800-\udfff]")
_INDEX = re.compile(r"\[\d+\]")


class IngestError(Exception):
    """Input that cannot be ingested at all. The message names the file (and the line where there is one)."""


class RejectLimitExceeded(IngestError):
    """More records were rejected than ``max_reject_share`` allows (raised after all outputs are written)."""


class RecordError(Exception):
    """One record is invalid; ``str(exc)`` is the reject reason."""


@dataclass(frozen=True)
class Ranking:
    """One annotation: ``ranks[i]`` is the dense rank of ``responses[i]`` (0 = best, equal = tie)."""

    prompt: str | list[dict]
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    annotator: str | None
    item_id: str
    source: str
    line: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.responses) != len(self.ranks):
            raise ValueError(f"{len(self.responses)} responses but {len(self.ranks)} ranks")


@dataclass(frozen=True)
class Reject:
    """One rejected input record with where it was and why."""

    source: str
    line: int
    reason: str
    record: str

    @property
    def kind(self) -> str:
        """The reason without its details, e.g. ``invalid JSON`` or ``missing field 'prompt'``."""
        return _INDEX.sub("[]", self.reason.split(":", 1)[0]).strip() or self.reason

    def to_dict(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason, "record": self.record}


@dataclass(frozen=True)
class ReaderConfig:
    """Validation settings shared by all readers (defaults: ``PreferencesConfig``'s).

    max_field_chars: the longest prompt / response / text field accepted.
    rating_scale: inclusive (low, high) range of scalar ratings.
    ranker_key: the key of ``value.ranker`` holding the order (a Bucket name); None = the first key
        other than Label Studio's internal ``_`` column.
    max_responses: the most responses one record may rank (pairs per record <= K(K-1)/2).
    max_depth: the deepest nesting of arrays and objects in one record (a top-level object is level 1).
    max_record_bytes: the longest JSON Lines line / JSON array element, in bytes.
    refs_dir: the one folder Label Studio file references are read from; None or "" = references are refused
        (``refs``).
    """

    max_field_chars: int = _DEFAULTS.max_field_chars
    rating_scale: tuple[float, float] = tuple(_DEFAULTS.rating_scale)
    ranker_key: str | None = _DEFAULTS.ranker_key
    max_responses: int = _DEFAULTS.max_responses
    max_depth: int = _DEFAULTS.max_depth
    max_record_bytes: int = _DEFAULTS.max_record_bytes
    refs_dir: str | None = _DEFAULTS.refs_dir or None

    def __post_init__(self) -> None:
        for name, low, high in (("max_field_chars", 1, None), ("max_responses", 2, None),
                                ("max_depth", 2, MAX_DEPTH_LIMIT), ("max_record_bytes", 1, None)):
            value = getattr(self, name)
            if not low <= value <= (high or value):
                raise ValueError(f"{name} must be {f'in [{low}, {high}]' if high else f'>= {low}'}, got {value}")
        low, high = self.rating_scale
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"rating_scale must be (low, high) with low < high, got {self.rating_scale}")


@dataclass(frozen=True)
class RecordContext:
    """Where the record being parsed came from: file name, start line, raw text, settings."""

    source: str
    line: int
    text: str
    cfg: ReaderConfig

    def reject(self, reason: str, record: str | None = None) -> Reject:
        raw = self.text if record is None else record
        return Reject(self.source, self.line, reason, raw[:MAX_RECORD_TEXT])


def type_name(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_int(value: Any) -> bool:
    """True for JSON integers (not booleans)."""
    return isinstance(value, int) and not isinstance(value, bool)


def get_field(obj: dict, name: str, where: str = "") -> Any:
    """``obj[name]``, or RecordError "missing field '<where><name>'"."""
    if name not in obj:
        raise RecordError(f"missing field '{where}{name}'")
    return obj[name]


def expect(value: Any, expected: str, where: str) -> Any:
    """Check a value's JSON type; ``expected`` is e.g. "object" or "string or integer"."""
    if type_name(value) not in expected.split(" or "):
        raise RecordError(f"wrong type for '{where}': expected {expected}, got {type_name(value)}")
    return value


def check_text(value: Any, where: str, cfg: ReaderConfig) -> str:
    """A non-empty string of at most ``cfg.max_field_chars`` characters (no lone surrogates)."""
    if type(value) is not str:
        expect(value, "string", where)
    if not value.strip():
        raise RecordError(f"empty text in '{where}'")
    if len(value) > cfg.max_field_chars:
        raise RecordError(
            f"field too long: '{where}' has {len(value)} chars (max_field_chars={cfg.max_field_chars})"
        )
    if _SURROGATE.search(value):
        raise RecordError(f"invalid text in '{where}': unpaired surrogate")
    return value


def check_response_count(n: int, cfg: ReaderConfig) -> None:
    """At most ``cfg.max_responses`` responses in one record: all-pairs conversion is quadratic in K."""
    if n > cfg.max_responses:
        raise RecordError(f"too many responses: {n} (max_responses={cfg.max_responses})")


def check_text_list(value: Any, where: str, cfg: ReaderConfig) -> list[str]:
    """An array of valid texts (see ``check_text``)."""
    expect(value, "array", where)
    return [check_text(v, f"{where}[{i}]", cfg) for i, v in enumerate(value)]


def annotator_of(value: Any, where: str) -> str | None:
    """Normalise an annotator id: string or integer -> str; Label Studio user object -> email or id."""
    if value is None:
        return None
    if isinstance(value, dict):
        for key in ("email", "id"):
            if isinstance(value.get(key), str) or is_int(value.get(key)):
                return str(value[key])
        raise RecordError(f"wrong type for '{where}': object without 'email' or 'id'")
    expect(value, "string or integer", where)
    return str(value)


def item_id_of(obj: dict, ctx: RecordContext, key: str = "id") -> str:
    """The record's own id (string or integer) or ``<source>:<line>``."""
    value = obj.get(key)
    if isinstance(value, str) or is_int(value):
        return str(value)
    return f"{ctx.source}:{ctx.line}"


def dense_ranks(keys: Sequence[Any]) -> tuple[int, ...]:
    """Dense ranks of sortable keys, smallest key = rank 0, equal keys share a rank."""
    order = {k: r for r, k in enumerate(sorted(set(keys)))}
    return tuple(order[k] for k in keys)


def order_to_ranks(order: Sequence[int], k: int, where: str) -> tuple[int, ...]:
    """Ranks from a best-first permutation of ``range(k)``."""
    return groups_to_ranks([[i] for i in order], k, where)


def groups_to_ranks(groups: Sequence[Sequence[int]], k: int, where: str) -> tuple[int, ...]:
    """Ranks from best-first tie groups of indices, e.g. ``[[2], [0, 3], [1]]`` -> (1, 2, 0, 1)."""
    ranks: list[int | None] = [None] * k
    for rank, group in enumerate(groups):
        if not group:
            raise RecordError(f"ranking is not a permutation: empty tie group in '{where}'")
        for idx in group:
            if not 0 <= idx < k:
                raise RecordError(f"ranking is not a permutation: index {idx} out of range for {k} responses")
            if ranks[idx] is not None:
                raise RecordError(f"ranking is not a permutation: index {idx} appears twice")
            ranks[idx] = rank
    missing = [i for i, r in enumerate(ranks) if r is None]
    if missing:
        raise RecordError(f"ranking is not a permutation: indices {missing} missing")
    return dense_ranks(ranks)


def ids_to_ranks(order: Iterable[Any], ids: Sequence[str], where: str) -> tuple[int, ...]:
    """Ranks from a best-first list of response ids (compared as strings)."""
    position = {rid: i for i, rid in enumerate(ids)}
    indices = []
    for j, rid in enumerate(order):
        if not (isinstance(rid, str) or is_int(rid)):
            raise RecordError(f"wrong type for '{where}[{j}]': expected string or integer, got {type_name(rid)}")
        if str(rid) not in position:
            raise RecordError(f"unknown response id in ranking: {str(rid)!r}")
        indices.append(position[str(rid)])
    return order_to_ranks(indices, len(ids), where)


def unique_ids(ids: Sequence[Any], where: str) -> list[str]:
    """Response ids as strings, rejecting duplicates."""
    seen: set[str] = set()
    for j, rid in enumerate(ids):
        if not (isinstance(rid, str) or is_int(rid)):
            raise RecordError(f"wrong type for '{where}[{j}]': expected string or integer, got {type_name(rid)}")
        if str(rid) in seen:
            raise RecordError(f"duplicate response id: {str(rid)!r}")
        seen.add(str(rid))
    return [str(r) for r in ids]


def build_ranking(
    prompt: str | list[dict],
    responses: Sequence[str],
    ranks: Sequence[int],
    ctx: RecordContext,
    *,
    annotator: str | None = None,
    item_id: str | None = None,
    meta: dict | None = None,
) -> Ranking:
    """Final checks shared by all formats: >= 2 responses, distinct texts, dense ranks."""
    if len(responses) < 2:
        raise RecordError(f"too few responses: {len(responses)} (need at least 2)")
    check_response_count(len(responses), ctx.cfg)
    first: dict[str, int] = {}
    for i, text in enumerate(responses):
        if text in first:
            raise RecordError(f"duplicate response text: responses {first[text]} and {i} are identical")
        first[text] = i
    return Ranking(
        prompt=prompt,
        responses=tuple(responses),
        ranks=dense_ranks(list(ranks)),
        annotator=annotator,
        item_id=item_id if item_id is not None else f"{ctx.source}:{ctx.line}",
        source=ctx.source,
        line=ctx.line,
        meta=meta or {},
    )


def extra_fields(obj: dict, used: Iterable[str]) -> dict:
    """The record's fields not consumed by the reader (kept in ``meta``)."""
    used = set(used)
    return {k: v for k, v in obj.items() if k not in used}
