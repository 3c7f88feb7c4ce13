"""Reading raw records from a file without loading it whole: a top-level JSON array, or JSON Lines.

Both yield ``RawRecord(value, line, text, error)``: the parsed value and the 1-based line where the record
starts, its raw text (at most ``MAX_RECORD_TEXT`` characters), or ``error`` (a reject reason) when the
record is not valid JSON.

The array parser (``iter_json_array``) keeps a sliding text buffer filled in chunks and decodes one element
at a time with ``json.JSONDecoder.raw_decode``; memory stays at about one chunk plus the largest element,
whatever the file size. When an element does not decode, a small string-aware bracket scanner finds where
it ends (the next ``,`` or ``]`` at depth 0) so that the bad element becomes one reject and reading goes
on. A truncated file ends with one reject for its broken tail. Non-standard constants (NaN, Infinity) are
invalid JSON here, as in the standard.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Any, Iterator

from rlhf.jsonl import RawRecord  # noqa: F401  (the record type of every reader; defined with the line reader)

from .schema import MAX_RECORD_TEXT

CHUNK_CHARS = 1 << 16
MAX_ELEMENT_CHARS = 64 << 20
_WS = re.compile(r"[ \t\n\r]*")
_STRUCT = re.compile(r'["{}\[\],]')
_STR_SPECIAL = re.compile(r'["\\]')
_SURROGATE_ESCAPE = re.compile("[\udc80-\udcff]")
TRUNCATED = "invalid JSON: unexpected end of file (truncated record)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity; raises ValueError or RecursionError on bad input."""
    value, end = DECODER.raw_decode(text, _WS.match(text).end())
    if _WS.match(text, end).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _decode_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "invalid JSON: nesting too deep"
    return f"invalid JSON: {exc}"


LINE_SUFFIXES = (".jsonl", ".ndjson")


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


def iter_jsonl(path: Path) -> Iterator[RawRecord]:
    """One record per non-blank line; a bad line (not UTF-8, not JSON) is one error record."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                shown = raw.decode("utf-8", "replace").strip()
                yield RawRecord(None, number, shown[:MAX_RECORD_TEXT], f"invalid UTF-8: {exc}")
                continue
            if number == 1:
                text = text.lstrip("\ufeff")
            text = text.strip()
            if not text:
                continue
            try:
                value = loads(text)
            except (ValueError, RecursionError) as exc:
                yield RawRecord(None, number, text[:MAX_RECORD_TEXT], _decode_error(exc))
                continue
            yield RawRecord(value, number, text[:MAX_RECORD_TEXT])


class _Buffer:
    """A text window over a file: ``buf[pos:]`` is unread; line numbers are tracked incrementally."""

    def __init__(self, fh: IO[str], chunk_chars: int) -> None:
        self.fh, self.chunk_chars = fh, chunk_chars
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


def iter_json_array(source: str | Path | IO[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[RawRecord]:
    """Yield each element of a top-level JSON array with the line where it starts.

    Raises ValueError when the content does not start with '['.
    """
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            yield from iter_json_array(fh, chunk_chars)
        return
    buf = _Buffer(source, chunk_chars)
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
    """Decode the element at ``buf.pos`` (fast path), else find its extent and report it."""
    start = buf.pos
    line = buf.line_at(start)
    try:
        value, end = DECODER.raw_decode(buf.buf, start)
        after = _WS.match(buf.buf, end).end()
        if buf.buf[after : after + 1] in (",", "]") if after < len(buf.buf) else buf.eof:
            buf.pos = end
            return _checked(value, line, buf.buf[start:end])
    except (ValueError, RecursionError):
        pass
    return _slow_element(buf, line)


def _checked(value: Any, line: int, text: str) -> RawRecord:
    """Reject an element whose text carried bytes that are not UTF-8 (read as surrogate escapes)."""
    if _SURROGATE_ESCAPE.search(text):
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return RawRecord(None, line, shown[:MAX_RECORD_TEXT], "invalid UTF-8 in record")
    return RawRecord(value, line, text[:MAX_RECORD_TEXT])


def _slow_element(buf: _Buffer, line: int) -> RawRecord:
    """Scan to the element's end (filling the buffer), then decode exactly that slice."""
    buf.drop(buf.pos)  # the element now starts at 0, so filling shifts no index
    scan, i, head = _Scanner(), 0, None
    while True:
        end, i = scan.run(buf.buf, i)
        if end is not None:
            break
        if head is None and i > MAX_ELEMENT_CHARS:
            head = buf.buf[:MAX_RECORD_TEXT]
        if head is not None:  # too large to keep: forget what was scanned
            buf.pos = i
            buf.drop(i)
            i = 0
        if not buf.fill():
            return _at_eof(buf, line, head)
    buf.pos = end
    if head is not None:
        return RawRecord(None, line, head, f"record too large: more than {MAX_ELEMENT_CHARS} characters")
    text = buf.buf[:end]
    try:
        value = loads(text)
    except (ValueError, RecursionError) as exc:
        return RawRecord(None, line, text.strip()[:MAX_RECORD_TEXT], _decode_error(exc))
    return _checked(value, line, text.strip())


def _at_eof(buf: _Buffer, line: int, head: str | None) -> RawRecord:
    """The file ended inside an element: keep it if it is complete (only ']' is missing)."""
    text = head if head is not None else buf.buf
    buf.pos = len(buf.buf)
    if head is None:
        try:
            return _checked(loads(text), line, text.strip())
        except (ValueError, RecursionError):
            pass
    return RawRecord(None, line, text.strip()[:MAX_RECORD_TEXT], TRUNCATED)


class _Scanner:
    """Finds the end of one array element: the first ',' or ']' at depth 0 outside strings. Resumable.

    Openers are kept on a stack; a closer that does not match the top closes every container up to its
    matching opener (so ``{"a": [1}`` ends at its '}'), and a closer with no opener is ignored.
    """

    def __init__(self) -> None:
        self.stack, self.in_string = "", False

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
                self.stack += char
            elif char in "}]":
                opener = "{" if char == "}" else "["
                if not self.stack and char == "]":
                    return j, j
                cut = self.stack.rfind(opener)
                if cut >= 0:
                    self.stack = self.stack[:cut]
            elif not self.stack:  # ','
                return j, j
