"""Reading one input file into canonical records: container, format detection, per-record dispatch.

The container is found from the first character: '[' = one JSON array (read incrementally, see
``jsonstream``), anything else = JSON Lines. The record format is ``format`` when given, else detected
from content: the first record that matches a known schema decides the format for the whole file
(records seen before it are held, at most ``MAX_PENDING``, then parsed with that format so their rejects
name the precise problem). Detection rules, in order, on an object's keys:

    "annotations" or an object "data"        -> labelstudio       (full export task)
    "responses" and "ratings"                -> ratings
    "responses" and ("ranking" or "ranks")   -> kwise
    "chosen" and "rejected", with "prompt"   -> pairwise          (TRL, standard or conversational)
    "chosen" and "rejected" both arrays      -> pairwise          (TRL, implicit prompt)
    "chosen" and "rejected" otherwise        -> hh                (Anthropic HH-RLHF)
    "prompt" and ("candidates" or "answer1") -> labelstudio_min   (JSON-MIN export)

When no record matches, every record is rejected "unrecognised record". Every yielded item is one
input record: a Ranking (accepted so far) or a Reject.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from . import read_hh, read_jsonmin, read_kwise, read_labelstudio, read_pairwise, read_ratings
from .convert import fingerprint
from .jsonstream import RawRecord, iter_json_array, iter_jsonl, sniff_container
from .schema import IngestError, Ranking, ReaderConfig, RecordContext, RecordError, Reject, type_name

MAX_PENDING = 1000
_SINGLE: dict[str, Callable[[Any, RecordContext], Ranking]] = {
    "labelstudio_min": read_jsonmin.parse,
    "pairwise": read_pairwise.parse,
    "hh": read_hh.parse,
    "kwise": read_kwise.parse,
    "ratings": read_ratings.parse,
}
FORMATS = ("labelstudio", *_SINGLE)
ALIASES = {"json_min": "labelstudio_min", "jsonmin": "labelstudio_min", "label_studio": "labelstudio",
           "trl": "pairwise", "anthropic_hh": "hh", "ranking": "kwise", "rankings": "kwise"}


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
    if "prompt" in keys and ("candidates" in keys or "answer1" in keys):
        return "labelstudio_min"
    return None


class FileReader:
    """Iterate one file's records as Ranking | Reject; ``format`` holds the detected format afterwards."""

    def __init__(self, path: str | Path, cfg: ReaderConfig, format: str = "auto", seen: set | None = None) -> None:
        """``seen``: fingerprints of judgements read so far (shared across files); repeats become
        "duplicate" rejects. None = no duplicate check."""
        self.path = Path(path)
        self.seen = seen
        self.source = str(path)
        self.cfg = cfg
        self.format: str | None = None if normalise_format(format) == "auto" else normalise_format(format)
        self._base_dir = self.path.parent

    def __iter__(self) -> Iterator[Ranking | Reject]:
        raws = self._raw_records()
        pending: list[RawRecord] = []
        for raw in raws:
            if raw.error is not None:
                yield Reject(self.source, raw.line, raw.error, raw.text)
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
        """Open the file (IngestError if it cannot be read at all) and stream raw records."""
        try:
            container = sniff_container(self.path)
        except ValueError as exc:
            raise IngestError(f"{self.source}: {exc}: no records") from None
        except OSError as exc:
            raise IngestError(f"{self.source}: cannot read: {exc.strerror or exc}") from None
        try:
            if container == "array":
                yield from iter_json_array(self.path)
            else:
                yield from iter_jsonl(self.path)
        except OSError as exc:
            raise IngestError(f"{self.source}: read error: {exc.strerror or exc}") from None

    def _parse(self, raw: RawRecord) -> Iterator[Ranking | Reject]:
        ctx = RecordContext(self.source, raw.line, raw.text, self.cfg, self._base_dir)
        if self.format == "labelstudio":
            items = read_labelstudio.records(raw.value, ctx)
        else:
            try:
                items = [_SINGLE[self.format](raw.value, ctx)]
            except RecordError as exc:
                items = [ctx.reject(str(exc))]
        for item in items:
            yield self._dedupe(item, ctx)

    def _dedupe(self, item: Ranking | Reject, ctx: RecordContext) -> Ranking | Reject:
        if self.seen is None or isinstance(item, Reject):
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
            yield Reject(self.source, raw.line, f"unrecognised record: {detail} matches no known format", raw.text)
