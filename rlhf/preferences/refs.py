"""File references inside a Label Studio export's ``data`` values, handled without trusting them.

A data value is treated as a reference only when it is one token (no whitespace) that looks like one:

* a URL (``scheme://...``, ``//host/...``) or a Label Studio server path (``/data/upload/...``,
  ``/data/local-files/...``, ``/storage-data/...``): rejected "remote reference not allowed". Nothing is
  ever fetched from the network.
* a local path (``./x``, ``../x``, ``~/x``, a drive path, or a token with at least two path separators or
  with one separator and a file extension, e.g. ``texts/p1.txt`` or ``/etc/passwd``): read as UTF-8 text
  only if it resolves (symlinks followed) to a regular file strictly inside the export's own folder; else
  rejected "path escapes export folder". A missing or unreadable file is "unreadable reference".

Anything else is the text itself. Prose such as "and/or" or "1/2" stays text.
"""
from __future__ import annotations

import re
from pathlib import Path

from .schema import RecordError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SERVER_PATHS = ("/data/upload/", "/data/local-files/", "/storage-data/")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")
_MAX_TOKEN = 4096


def reference_kind(value: str) -> str | None:
    """``"remote"``, ``"path"`` or None (plain text), by the rules in the module docstring."""
    token = value.strip()
    if not token or len(token) > _MAX_TOKEN or any(ch.isspace() for ch in token):
        return None
    if _URL.match(token) or token.startswith("//") or token.startswith(_SERVER_PATHS):
        return "remote"
    if token.startswith(("./", "../", "~/", ".\\", "..\\")) or _DRIVE.match(token):
        return "path"
    separators = token.count("/") + token.count("\\")
    if separators >= 2 or (separators == 1 and _EXTENSION.search(token)):
        return "path"
    return None


def resolve_text(value: str, where: str, base_dir: Path | None, max_chars: int) -> str:
    """The text a data value stands for: the value itself, or the content of a safe local file."""
    kind = reference_kind(value)
    if kind is None:
        return value
    token = value.strip()
    if kind == "remote":
        raise RecordError(f"remote reference not allowed: '{where}' = {token!r}")
    if base_dir is None:
        raise RecordError(f"path escapes export folder: '{where}' = {token!r} (no export folder)")
    base = base_dir.resolve()
    target = (base / token.replace("\\", "/")).resolve()
    if target == base or not target.is_relative_to(base):
        raise RecordError(f"path escapes export folder: '{where}' = {token!r}")
    return _read_inside(target, token, where, max_chars)


def _read_inside(target: Path, token: str, where: str, max_chars: int) -> str:
    """Read a referenced file that is known to lie inside the export folder."""
    if not target.is_file():
        raise RecordError(f"unreadable reference: '{where}' = {token!r}: no such file")
    try:
        if target.stat().st_size > 4 * max_chars + 4:
            raise RecordError(
                f"field too long: '{where}' file {token!r} is larger than max_field_chars={max_chars}"
            )
        return target.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"unreadable reference: '{where}' = {token!r}: not UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise RecordError(f"unreadable reference: '{where}' = {token!r}: {exc.strerror or exc}") from None
