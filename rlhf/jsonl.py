"""JSON Lines text, standard library only (cheap to import from the ingest CLI)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

@dataclass(frozen=True)
class RawRecord:
    """One input record as read: ``value`` (None when ``error`` is set), 1-based start ``line`` (a JSON file) or row
    number (a table), raw ``text``."""
    value: Any
    line: int
    text: str
    error: str | None = None


# Characters Python's str.splitlines() (and some JSON Lines readers) break a line at, though JSON allows them raw.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_LINE_BREAK_RE = re.compile("[\x85\u2028\u2029]")


def json_line(obj, sort_keys: bool = False) -> str:
    """One JSON Lines record (UTF-8 text kept readable), with U+0085/U+2028/U+2029 escaped so that every reader
    sees exactly one line."""
    text = json.dumps(obj, sort_keys=sort_keys, ensure_ascii=False)
    return _LINE_BREAK_RE.sub(lambda m: _LINE_BREAKS[m.group(0)], text)


def iter_lines(path) -> "Iterator[tuple[int, str, object, str | None]]":
    """(line number, line, value, error) for each non-blank line of a JSON Lines file; a line that is not JSON
    gives value None and error ``invalid JSON: <reason>`` (the caller rejects it or stops)."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, line, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, line, None, f"invalid JSON: {e.msg}"
