"""File references inside a Label Studio export's ``data`` values, handled without trusting them.

A data value is treated as a reference only when it is one token (no whitespace) that looks like one:

* a URL (``scheme://...``, ``//host/...``) or a Label Studio server path (``/data/upload/...``,
  ``/data/local-files/...``, ``/storage-data/...``): rejected "remote reference not allowed". Nothing is
  ever fetched from the network.
* a local path (``./x``, ``../x``, ``~/x``, a drive path, or a token with at least two path separators or
  with one separator and a file extension, e.g. ``texts/p1.txt`` or ``/etc/passwd``). Local files are opt-in:
  with no ``refs_dir`` (``preferences.refs_dir: ""``, the default) such a value is rejected "file reference
  not allowed" (never kept as literal text: a file name is not a response). With ``refs_dir`` set, the token is
  a path relative to that folder (not to the export's folder) and is read as UTF-8 text only if it is relative,
  has no ``..`` part, and resolves (symlinks followed) to a regular file strictly inside ``refs_dir``; else it is
  rejected "path escapes refs_dir". A dot-file, or a file inside a dot-folder (``.dvc/config.local``, ``.env``,
  ``.git/...``), is never read, also not through a symlink: "hidden file not read". A missing or unreadable
  file is "unreadable reference".

Anything else is the text itself. Prose such as "and/or" or "1/2" stays text.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

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


def resolve_text(value: str, where: str, refs_dir: str | Path | None, max_chars: int) -> str:
    """The text a data value stands for: the value itself, or the content of a safe file inside ``refs_dir``."""
    kind = reference_kind(value)
    if kind is None:
        return value
    token = value.strip()
    if kind == "remote":
        raise RecordError(f"remote reference not allowed: '{where}' = {token!r}")
    if not refs_dir:
        raise RecordError(f"file reference not allowed: '{where}' = {token!r} (file references are off: "
                          f"set preferences.refs_dir to read them from one folder)")
    rel = PurePosixPath(token.replace("\\", "/"))
    if rel.is_absolute() or token.startswith("~") or _DRIVE.match(token) or ".." in rel.parts:
        raise RecordError(f"path escapes refs_dir: '{where}' = {token!r}")
    if _hidden(rel.parts):
        raise RecordError(f"hidden file not read: '{where}' = {token!r}")
    base = Path(refs_dir).resolve()
    target = (base / rel).resolve()
    if target == base or not target.is_relative_to(base):
        raise RecordError(f"path escapes refs_dir: '{where}' = {token!r}")
    if _hidden(target.relative_to(base).parts):          # a link inside refs_dir to a hidden file
        raise RecordError(f"hidden file not read: '{where}' = {token!r}")
    return _read_inside(target, token, where, max_chars)


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _read_inside(target: Path, token: str, where: str, max_chars: int) -> str:
    """Read a referenced file that is known to lie inside ``refs_dir``."""
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
