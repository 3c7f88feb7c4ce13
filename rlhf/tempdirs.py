"""Temporary files and folders that name their owner, the rule for removing the ones a crash left behind, and
atomic outputs (``atomic_output_dir`` for a stage's folder, ``atomic_path`` for one file).

A writer (a checkpoint, a stage output, a JSON marker) works in ``.tmp-<name>-<host>-<pid>`` next to its target and
renames it into place when done. Another process must not delete that folder while its owner is still writing (two
runs sharing a project, a stage next to a flow, ranks on a shared file system), so a leftover is removed only when
its owner is known to be gone:

- owner on this host and its pid no longer exists (``os.kill(pid, 0)`` raises ProcessLookupError; PermissionError
  means the process exists under another user: alive);
- owner on another host (a shared file system), or a name without a recognisable owner (the old ``.tmp-<name>-<pid>``
  form): left alone until it is ``STALE_AFTER_S`` (one day) old, by its modification time. No write takes a day, so
  by then the owner is gone (or its pid was reused by an unrelated process).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 24 * 3600


def host() -> str:
    """This machine's name as it appears in temporary names (letters, digits, dots and underscores only)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "localhost"


def owned_name(name: str, pid: int | None = None) -> str:
    """``.tmp-<name>-<host>-<pid>``: a temporary name that says which process on which host writes it."""
    return f"{TMP_PREFIX}{name}-{host()}-{os.getpid() if pid is None else pid}"


def local_owner(name: str) -> int | None:
    """The pid owning a temporary ``name`` when the owner is on this host; None when it is elsewhere or unknown."""
    m = re.fullmatch(rf"{re.escape(TMP_PREFIX)}.*-{re.escape(host())}-(\d+)", name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                        # exists, owned by another user
    except OSError:
        return True                        # cannot tell: keep its files
    return True


def is_abandoned(path: Path, now: float | None = None) -> bool:
    """A temporary file or folder whose writer is gone (see the module docstring for the rule)."""
    pid = local_owner(path.name)
    if pid is not None and not pid_alive(pid):
        return True
    if pid == os.getpid():
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False                       # already gone
    return age > STALE_AFTER_S


def remove_abandoned(folder: Path, glob: str = f"{TMP_PREFIX}*") -> list[Path]:
    """Remove the abandoned temporaries in ``folder`` matching ``glob`` (live writers' stay); returns the removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(glob):
        if not p.name.startswith(TMP_PREFIX) or not is_abandoned(p):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                continue
        removed.append(p)
    return removed


# -- durable writes -------------------------------------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write a stage output into; on success it replaces ``out_dir``.

    A crash while writing leaves ``out_dir`` as it was (old or absent) plus a ``.tmp-<name>-<host>-<pid>`` folder that
    a later write removes once that process is gone (one still writing keeps its folder); readers never see a
    half-written model folder."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out.parent, f"{TMP_PREFIX}{out.name}-*")
    tmp = out.with_name(owned_name(out.name))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    old = None
    if out.exists():
        # os.replace cannot replace a non-empty directory: move the old one aside first, then swap.
        old = out.with_name(owned_name(f"{out.name}-old"))
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path in the target's folder; on success it replaces ``path`` atomically (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
