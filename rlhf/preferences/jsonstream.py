"""Reading raw records from a file without loading it whole: a top-level JSON array, or JSON Lines.

Both yield ``RawRecord(value, line, text, error)``: the parsed value and the 1-based line where the record
starts, its raw text (at most ``MAX_RECORD_TEXT`` characters), or ``error`` (a reject reason) when the
record is not valid JSON, or is over a bound:

* ``max_record_bytes``: a longer line (JSON Lines) or array element is one reject, "line too long: line N has
  L bytes (...)" or "record too large: ...". A long line is never held whole: at most ``max_record_bytes`` of it
  are read, the rest is skipped in chunks; a long element is scanned with its head kept and the rest dropped.
* ``max_depth``: a record whose arrays and objects nest deeper is one reject "nested deeper than N levels",
  found by counting brackets before it is parsed (``json`` recurses once per level).
* numbers: ``NaN``/``Infinity`` are invalid JSON (as in the standard); a number too large for a float
  (``1e999``) is rejected "number out of range", never read as infinity.

The array parser (``iter_json_array``) keeps a sliding text buffer filled in chunks and decodes one element
at a time with ``json.JSONDecoder.raw_decode``; memory stays at about one chunk plus the largest element,
whatever the file size. When an element does not decode, a small string-aware bracket scanner finds where
it ends (the next ``,`` or ``]`` at depth 0) so that the bad element becomes one reject and reading goes
on. A truncated file ends with one reject for its broken tail.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from rlhf.jsonl import RawRecord  # noqa: F401  (the record type of every reader; defined with the line reader)
from rlhf.jsonl import nested_reason, too_deep
from rlhf.sources import LINE_SUFFIXES

from .schema import MAX_RECORD_TEXT, ReaderConfig

CHUNK_CHARS = 1 << 16
CHUNK_BYTES = 1 << 16
_DEFAULTS = ReaderConfig()
_WS = re.compile(r"[ \t\n\r]*")
_STRUCT = re.compile(r'["{}\[\],]')
_STR_SPECIAL = re.compile(r'["\\]')
_SURROGATE_ESCAPE = re.compile("[\udc80-\udcff]")
TRUNCATED = "invalid JSON: unexpected end of file (truncated record)"


@dataclass(frozen=True)
class Limits:
    """The bounds on one record (module docstring); defaults: ``ReaderConfig``'s."""
    max_record_bytes: int = _DEFAULTS.max_record_bytes
    max_depth: int = _DEFAULTS.max_depth


class NonFiniteNumber(ValueError):
    """A number that is valid JSON text but not a finite float (``1e999``); ``str()`` is the reject reason."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"number out of range: {text} is not a finite number")
    return value


DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and 1e999; raises ValueError or RecursionError on bad input."""
    value, end = DECODER.raw_decode(text, _WS.match(text).end())
    if _WS.match(text, end).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _decode_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "invalid JSON: nesting too deep"
    if isinstance(exc, NonFiniteNumber):
        return str(exc)
    return f"invalid JSON: {exc}"


def _too_large(line: int, size: int, limits: Limits) -> str:
    return f"record too large: the element at line {line} has {size} bytes (max_record_bytes={limits.max_record_bytes})"


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))




def sniff_container(path: Path) -> str:
    """``"lines"`` for a .jsonl/.ndjson file or when the first non-space character is not '[', else ``"array"``.

    Raises ValueError("empty file") when the file holds only whitespace.
    """
    lines_by_name = Path(path).suffix.lower() in LINE_SUFFIXES
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                raise ValueError("empty file")
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:].lstrip(b" \t\r\n")
            if stripped:
                return "array" if stripped[:1] == b"[" and not lines_by_name else "lines"


def iter_jsonl(path: Path, limits: Limits = Limits()) -> Iterator[RawRecord]:
    """One record per non-blank line; a bad line (too long, not UTF-8, not JSON, too deep) is one error record."""
    with open(path, "rb") as fh:
        number = 0
        while True:
            raw = fh.readline(limits.max_record_bytes + 1)   # never more than the bound (+1 to see it is over)
            if not raw:
                return
            number += 1
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if len(body) > limits.max_record_bytes:
                length = len(body) + _skip_line(fh)
                yield RawRecord(None, number, body[:MAX_RECORD_TEXT].decode("utf-8", "replace"),
                                f"line too long: line {number} has {length} bytes "
                                f"(max_record_bytes={limits.max_record_bytes})")
                continue
            record = _line_record(raw, number, limits)
            if record is not None:
                yield record


def _skip_line(fh: IO[bytes]) -> int:
    """Read past the rest of the current line in chunks; its length in bytes (without the line break)."""
    skipped = 0
    while True:
        chunk = fh.readline(CHUNK_BYTES)
        if not chunk:
            return skipped
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)


def _line_record(raw: bytes, number: int, limits: Limits) -> RawRecord | None:
    """The record of one line within the size bound; None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", "replace").strip()
        return RawRecord(None, number, shown[:MAX_RECORD_TEXT], f"invalid UTF-8: {exc}")
    if number == 1:
        text = text.lstrip("\ufeff")
    text = text.strip()
    if not text:
        return None
    if too_deep(text, limits.max_depth):
        return RawRecord(None, number, text[:MAX_RECORD_TEXT], nested_reason(limits.max_depth))
    try:
        value = loads(text)
    except (ValueError, RecursionError) as exc:
        return RawRecord(None, number, text[:MAX_RECORD_TEXT], _decode_error(exc))
    return RawRecord(value, number, text[:MAX_RECORD_TEXT])


class _Buffer:
    """A text window over a file: ``buf[pos:]`` is unread; line numbers are tracked incrementally; ``limits``
    bound each element."""

    def __init__(self, fh: IO[str], chunk_chars: int, limits: Limits) -> None:
        self.fh, self.chunk_chars, self.limits = fh, chunk_chars, limits
        self.buf, self.pos, self.eof = "", 0, False
        self._line, self._line_pos = 1, 0

    def fill(self) -> bool:
        """Append one chunk (dropping the consumed prefix first); False at end of file."""
        if self.eof:
            return False
        data = self.fh.read(self.chunk_chars)
        if not data:
            self.eof = True
            return False
        self.drop(self.pos)
        self.buf += data
        return True

    def drop(self, upto: int) -> None:
        """Forget ``buf[:upto]`` (it must not be needed again)."""
        if upto <= 0:
            return
        self.line_at(upto)
        self.buf = self.buf[upto:]
        self.pos -= upto
        self._line_pos -= upto

    def line_at(self, index: int) -> int:
        """1-based line number of ``buf[index]`` (indices must not go backwards)."""
        self._line += self.buf.count("\n", self._line_pos, index)
        self._line_pos = index
        return self._line

    def skip_ws(self) -> bool:
        """Advance past whitespace; False when the file ends first."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return True
            if not self.fill():
                return False


def iter_json_array(source: str | Path | IO[str], chunk_chars: int = CHUNK_CHARS,
                    limits: Limits = Limits()) -> Iterator[RawRecord]:
    """Yield each element of a top-level JSON array with the line where it starts.

    Raises ValueError when the content does not start with '['.
    """
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            yield from iter_json_array(fh, chunk_chars, limits)
        return
    buf = _Buffer(source, chunk_chars, limits)
    if buf.skip_ws() and buf.buf.startswith("\ufeff", buf.pos):
        buf.pos += 1
    if not buf.skip_ws() or buf.buf[buf.pos] != "[":
        raise ValueError("not a JSON array (does not start with '[')")
    buf.pos += 1
    while True:
        if not buf.skip_ws():
            yield RawRecord(None, buf.line_at(len(buf.buf)), "", "invalid JSON: unexpected end of file (array not closed)")
            return
        char = buf.buf[buf.pos]
        if char == ",":
            buf.pos += 1
            continue
        if char == "]":
            buf.pos += 1
            yield from _trailing(buf)
            return
        record = _element(buf)
        yield record
        if record.error == TRUNCATED:
            return


def _trailing(buf: _Buffer) -> Iterator[RawRecord]:
    """Anything but whitespace after the closing ']' is one error record."""
    if buf.skip_ws():
        line = buf.line_at(buf.pos)
        while len(buf.buf) - buf.pos < MAX_RECORD_TEXT and buf.fill():
            pass
        text = buf.buf[buf.pos : buf.pos + MAX_RECORD_TEXT]
        yield RawRecord(None, line, text, "invalid JSON: extra data after the closing ']'")


def _element(buf: _Buffer) -> RawRecord:
    """Decode the element at ``buf.pos`` (fast path: json's recursion is caught, then the bounds are checked on its
    text), else find its extent and report it."""
    start = buf.pos
    line = buf.line_at(start)
    try:
        value, end = DECODER.raw_decode(buf.buf, start)
        after = _WS.match(buf.buf, end).end()
        if buf.buf[after : after + 1] in (",", "]") if after < len(buf.buf) else buf.eof:
            buf.pos = end
            return _checked(value, line, buf.buf[start:end], buf.limits)
    except (ValueError, RecursionError):
        pass
    return _slow_element(buf, line)


def _checked(value: Any, line: int, text: str, limits: Limits) -> RawRecord:
    """Reject an element over a bound, or whose text carried bytes that are not UTF-8 (read as surrogate escapes)."""
    size = _utf8_size(text)
    if size > limits.max_record_bytes:
        return RawRecord(None, line, text[:MAX_RECORD_TEXT], _too_large(line, size, limits))
    if too_deep(text, limits.max_depth):
        return RawRecord(None, line, text[:MAX_RECORD_TEXT], nested_reason(limits.max_depth))
    if _SURROGATE_ESCAPE.search(text):
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return RawRecord(None, line, shown[:MAX_RECORD_TEXT], "invalid UTF-8 in record")
    return RawRecord(value, line, text[:MAX_RECORD_TEXT])


def _slow_element(buf: _Buffer, line: int) -> RawRecord:
    """Scan to the element's end (filling the buffer; past ``max_record_bytes`` characters only its head is kept
    and its size counted), then check the bounds and decode exactly that slice."""
    limits = buf.limits
    buf.drop(buf.pos)  # the element now starts at 0, so filling shifts no index
    scan, i, head, dropped = _Scanner(limits.max_depth + 1), 0, None, 0
    while True:
        end, i = scan.run(buf.buf, i)
        if end is not None:
            break
        if head is None and i > limits.max_record_bytes:
            head = buf.buf[:MAX_RECORD_TEXT]
        if head is not None:  # too large to keep: count and forget what was scanned
            dropped += _utf8_size(buf.buf[:i])
            buf.pos = i
            buf.drop(i)
            i = 0
        if not buf.fill():
            return _at_eof(buf, line, head)
    buf.pos = end
    text = buf.buf[:end].strip()
    if head is not None:
        return RawRecord(None, line, head, _too_large(line, dropped + _utf8_size(text), limits))
    if scan.deepest > limits.max_depth:
        return RawRecord(None, line, text[:MAX_RECORD_TEXT], nested_reason(limits.max_depth))
    try:
        value = loads(text)
    except (ValueError, RecursionError) as exc:
        return RawRecord(None, line, text[:MAX_RECORD_TEXT], _decode_error(exc))
    return _checked(value, line, text, limits)


def _at_eof(buf: _Buffer, line: int, head: str | None) -> RawRecord:
    """The file ended inside an element: keep it if it is complete (only ']' is missing)."""
    text = head if head is not None else buf.buf
    buf.pos = len(buf.buf)
    if head is None and not too_deep(text, buf.limits.max_depth):
        try:
            return _checked(loads(text), line, text.strip(), buf.limits)
        except (ValueError, RecursionError):
            pass
    return RawRecord(None, line, text.strip()[:MAX_RECORD_TEXT], TRUNCATED)


class _Scanner:
    """Finds the end of one array element: the first ',' or ']' at depth 0 outside strings. Resumable.

    Openers are kept on a stack; a closer that does not match the top closes every container up to its
    matching opener (so ``{"a": [1}`` ends at its '}'), and a closer with no opener is ignored. Past ``cap``
    levels only a count is kept (memory stays bounded; such an element is rejected as too deep anyway);
    ``deepest`` is the deepest level seen.
    """

    def __init__(self, cap: int) -> None:
        self.stack, self.in_string = "", False
        self.cap, self.overflow, self.deepest = cap, 0, 0

    def run(self, text: str, i: int) -> tuple[int | None, int]:
        """Scan ``text`` from ``i``; returns (end index or None, index to resume from)."""
        while True:
            if self.in_string:
                m = _STR_SPECIAL.search(text, i)
                if m is None:
                    return None, len(text)
                j = m.start()
                if text[j] == "\\":
                    if j + 1 >= len(text):
                        return None, j
                    i = j + 2
                    continue
                self.in_string, i = False, j + 1
                continue
            m = _STRUCT.search(text, i)
            if m is None:
                return None, len(text)
            j, char = m.start(), text[m.start()]
            i = j + 1
            if char == '"':
                self.in_string = True
            elif char in "{[":
                if len(self.stack) < self.cap:
                    self.stack += char
                else:
                    self.overflow += 1
                self.deepest = max(self.deepest, len(self.stack) + self.overflow)
            elif char in "}]" and self.overflow:
                self.overflow -= 1
            elif char in "}]":
                opener = "{" if char == "}" else "["
                if not self.stack and char == "]":
                    return j, j
                cut = self.stack.rfind(opener)
                if cut >= 0:
                    self.stack = self.stack[:cut]
            elif not self.stack:  # ','
                return j, j
