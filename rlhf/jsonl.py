"""JSON Lines text, standard library only (cheap to import from the ingest CLI)."""
from __future__ import annotations

import json
import math
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


def json_line(obj, sort_keys: bool = False, allow_nan: bool = True) -> str:
    """One JSON Lines record (UTF-8 text kept readable), with U+0085/U+2028/U+2029 escaped so that every reader
    sees exactly one line. ``allow_nan=False``: a NaN or infinity is a ValueError instead of invalid JSON."""
    text = json.dumps(obj, sort_keys=sort_keys, ensure_ascii=False, allow_nan=allow_nan)
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
            except RecursionError:
                yield i, line, None, "invalid JSON: nesting too deep"


# ---- bounds on JSON text and parsed values (the preference ingest's max_depth: a reject, never a RecursionError) --

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def nested_reason(max_depth: int) -> str:
    """The one reject reason of a record nested deeper than ``max_depth``."""
    return f"nested deeper than {max_depth} levels"


def too_deep(text: str, max_depth: int) -> bool:
    """True when the arrays and objects of JSON ``text`` nest deeper than ``max_depth`` (a top-level object is
    level 1). Counts brackets outside strings, without parsing: ``json.loads`` recurses once per level."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def value_too_deep(value: Any, max_depth: int) -> bool:
    """``too_deep`` for parsed data (dicts, lists, tuples), without recursion."""
    stack = [(value, 1)] if isinstance(value, (dict, list, tuple)) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def non_finite(value: Any) -> tuple[str, float] | None:
    """(path, number) of the first NaN or infinity inside parsed data, e.g. ``("meta.scores[1]", nan)``; else None.
    Without recursion."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return path, node
        elif isinstance(node, dict):
            stack.extend((c, f"{path}.{k}" if path else str(k)) for k, c in reversed(node.items()))
        elif isinstance(node, (list, tuple)):
            stack.extend((c, f"{path}[{i}]") for i, c in reversed(list(enumerate(node))))
    return None
