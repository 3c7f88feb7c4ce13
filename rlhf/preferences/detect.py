"""Reading one input file into canonical records: container, format detection, per-record dispatch.

The container is found from the first character: '[' = one JSON array (read incrementally, see
``jsonstream``), anything else = JSON Lines. A ``.csv``, ``.parquet``/``.pq`` or ``.arrow`` file, a folder written
by ``save_to_disk`` or a ``DataSource`` (a hub dataset) is read through ``datasets`` (rlhf/sources.py), one record
per row (``line`` = row number, from 1). ``columns`` renames fields (their -> ours) before detection. The record format is ``format`` when given, else detected
from content: the first record that matches a known schema decides the format for the whole file
(records seen before it are held, at most ``MAX_PENDING``, then parsed with that format so their rejects
name the precise problem). Detection rules, in order, on an object's keys:

    "annotations" or an object "data"        -> labelstudio       (full export task)
    "responses" and "ratings"                -> ratings
    "responses" and ("ranking" or "ranks")   -> kwise
    "chosen" and "rejected", with "prompt"   -> pairwise          (TRL, standard or conversational)
    "chosen" and "rejected" both arrays      -> pairwise          (TRL, implicit prompt)
    "chosen" and "rejected" otherwise        -> hh                (Anthropic HH-RLHF)
    "prompt" and "completions"               -> ultrafeedback     (completions with scores)
    "prompt" and ("candidates" or "answer1") -> labelstudio_min   (JSON-MIN export)

When no record matches, every record is rejected "unrecognised record". Every yielded item is one
input record: a Ranking (accepted so far) or a Reject.

Bounds (``ReaderConfig``): a JSON record over ``max_record_bytes`` or nested deeper than ``max_depth`` is rejected
by ``jsonstream`` before it is parsed, a table row nested deeper by ``rlhf.sources``; an accepted record whose
prompt or kept fields (``meta``) hold a NaN or an infinity (a table's float column) is rejected "number out of
range", so nothing non-finite is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from rlhf.config import DataSource
from rlhf.jsonl import non_finite
from rlhf.sources import TABULAR_SUFFIXES, Keys, SourceError, describe, iter_records, renamed

from . import read_hh, read_jsonmin, read_kwise, read_labelstudio, read_pairwise, read_ratings, read_scored
from .convert import fingerprint
from .jsonstream import Limits, RawRecord, iter_json_array, iter_jsonl, sniff_container
from .schema import MAX_RECORD_TEXT, IngestError, Ranking, ReaderConfig, RecordContext, RecordError, Reject, type_name

MAX_PENDING = 1000
_SINGLE: dict[str, Callable[[Any, RecordContext], Ranking]] = {
    "labelstudio_min": read_jsonmin.parse,
    "pairwise": read_pairwise.parse,
    "hh": read_hh.parse,
    "kwise": read_kwise.parse,
    "ratings": read_ratings.parse,
    "ultrafeedback": read_scored.parse,
}
FORMATS = ("labelstudio", *_SINGLE)
ALIASES = {"json_min": "labelstudio_min", "jsonmin": "labelstudio_min", "label_studio": "labelstudio",
           "trl": "pairwise", "anthropic_hh": "hh", "ranking": "kwise", "rankings": "kwise",
           "scored": "ultrafeedback", "completions": "ultrafeedback"}
INPUT_KEYS = Keys(path="preferences.inputs", name="preferences.dataset.name", split="preferences.dataset.split",
                  columns="preferences.columns")


def normalise_format(name: str) -> str:
    """``auto`` or one of FORMATS (aliases accepted); ValueError otherwise."""
    name = ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise ValueError(f"unknown format {name!r}: use 'auto' or one of {', '.join(FORMATS)}")
    return name


def classify(value: Any) -> str | None:
    """The format a parsed record looks like, or None (rules in the module docstring)."""
    if not isinstance(value, dict):
        return None
    keys = value.keys()
    if "annotations" in keys or isinstance(value.get("data"), dict):
        return "labelstudio"
    if "responses" in keys and "ratings" in keys:
        return "ratings"
    if "responses" in keys and ("ranking" in keys or "ranks" in keys):
        return "kwise"
    if "chosen" in keys and "rejected" in keys:
        if "prompt" in keys or (isinstance(value["chosen"], list) and isinstance(value["rejected"], list)):
            return "pairwise"
        return "hh"
    if "prompt" in keys and "completions" in keys:
        return "ultrafeedback"
    if "prompt" in keys and ("candidates" in keys or "answer1" in keys):
        return "labelstudio_min"
    return None


class FileReader:
    """Iterate one file's records as Ranking | Reject; ``format`` holds the detected format afterwards."""

    def __init__(self, path: str | Path, cfg: ReaderConfig, format: str = "auto", seen: set | None = None,
                 columns: dict[str, str] | None = None, source: DataSource | None = None,
                 keys: Keys = INPUT_KEYS) -> None:
        """``seen``: fingerprints of judgements read so far (shared across files); repeats become
        "duplicate" rejects. None = no duplicate check. ``columns``: renames (their -> ours). ``source``: read
        this DataSource (a hub dataset, a folder's split) instead of ``path``; ``keys``: the params keys that
        errors name."""
        self.path = Path(path)
        self.seen = seen
        self.data_source = source
        self.source = describe(source) if source is not None else str(path)
        self.cfg = cfg
        self.columns = dict(columns or {})
        self.keys = keys
        self.format: str | None = None if normalise_format(format) == "auto" else normalise_format(format)
        self.limits = Limits(max_record_bytes=cfg.max_record_bytes, max_depth=cfg.max_depth)

    def __iter__(self) -> Iterator[Ranking | Reject]:
        raws = self._raw_records()
        pending: list[RawRecord] = []
        for raw in raws:
            if raw.error is not None:
                yield Reject(self.source, raw.line, raw.error, raw.text[:MAX_RECORD_TEXT])
                continue
            if self.format is None:
                self.format = classify(raw.value)
                if self.format is None:
                    pending.append(raw)
                    if len(pending) >= MAX_PENDING:
                        yield from self._unrecognised(pending)
                        pending = []
                    continue
                for held in pending:
                    yield from self._parse(held)
                pending = []
            yield from self._parse(raw)
        yield from self._unrecognised(pending)

    def _raw_records(self) -> Iterator[RawRecord]:
        """Stream raw records: JSON files here (a dataset's too), anything else through rlhf/sources.py (IngestError
        if unreadable)."""
        hub = self.data_source is not None and bool(self.data_source.name)
        if hub or self.path.is_dir() or self.path.suffix.lower() in TABULAR_SUFFIXES:
            source = self.data_source or DataSource(path=str(self.path))
            try:
                yield from iter_records(source, self.keys, self.columns, max_depth=self.cfg.max_depth)
            except SourceError as exc:
                raise IngestError(str(exc)) from None
            return
        try:
            yield from renamed(self._json_records(), self.columns, self.keys.columns, self.source)
        except SourceError as exc:
            raise IngestError(str(exc)) from None

    def _json_records(self) -> Iterator[RawRecord]:
        """Open the JSON file (IngestError if it cannot be read at all) and stream raw records."""
        try:
            container = sniff_container(self.path)
        except ValueError as exc:
            raise IngestError(f"{self.source}: {exc}: no records") from None
        except OSError as exc:
            raise IngestError(f"{self.source}: cannot read: {exc.strerror or exc}") from None
        try:
            if container == "array":
                yield from iter_json_array(self.path, limits=self.limits)
            else:
                yield from iter_jsonl(self.path, self.limits)
        except OSError as exc:
            raise IngestError(f"{self.source}: read error: {exc.strerror or exc}") from None

    def _parse(self, raw: RawRecord) -> Iterator[Ranking | Reject]:
        ctx = RecordContext(self.source, raw.line, raw.text, self.cfg)
        if self.format == "labelstudio":
            items = read_labelstudio.records(raw.value, ctx)
        else:
            try:
                items = [_SINGLE[self.format](raw.value, ctx)]
            except RecordError as exc:
                items = [ctx.reject(str(exc))]
        for item in items:
            yield self._finish(item, ctx)

    def _finish(self, item: Ranking | Reject, ctx: RecordContext) -> Ranking | Reject:
        """The last checks of an accepted ranking: finite numbers only (its prompt and meta are written as they
        are), and not a judgement seen before."""
        if isinstance(item, Reject):
            return item
        found = non_finite(item.meta)      # written as is: standard JSON only (the prompt is text or text messages)
        if found is not None:
            return ctx.reject(f"number out of range: {found[1]!r} in '{found[0]}'")
        if self.seen is None:
            return item
        key = fingerprint(item)
        if key in self.seen:
            return ctx.reject("duplicate")
        self.seen.add(key)
        return item

    def _unrecognised(self, pending: list[RawRecord]) -> Iterator[Reject]:
        for raw in pending:
            if isinstance(raw.value, dict):
                detail = f"object with keys {[k[:40] for k in sorted(raw.value)[:8]]}"
            else:
                detail = f"a JSON {type_name(raw.value)}"
            yield Reject(self.source, raw.line, f"unrecognised record: {detail} matches no known format",
                         raw.text[:MAX_RECORD_TEXT])
