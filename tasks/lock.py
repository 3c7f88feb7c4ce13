"""One writer at a time per project: the exclusive lock that `rlhf run`, `rlhf stage` (what `dvc repro` runs),
promotion and rollback hold while they change the project's outputs, checkpoints, dvc.lock or the registry aliases.

The lock is an OS file lock (``filelock``, i.e. ``fcntl.flock`` on POSIX) on ``.rlhf/lock`` in the project folder:
the kernel drops it when its holder exits, however it exits (SIGKILL, OOM, power-off of a container), so no crash
ever leaves a stale lock behind and nothing has to be cleaned by hand. Who holds it is written beside it
(``.rlhf/lock.json``: pid, host, command, start time) and named in the one-line error a second process gets at once.

The lock is re-entrant within a process (the flow takes it, then each stage and the promotion take it again), and a
process started by the holder (a torchrun rank, a subprocess) is covered by its ancestor's lock: ``RLHF_LOCK_PID``
names the holder in the environment it inherits. Ranks other than 0 of a distributed launch never take it (rank 0
does, for them all).

Same idea as DVC's own repository lock (``.dvc/tmp/lock``, held while ``dvc repro`` runs), one level up: DVC's lock
covers DVC's commands, ours covers the whole run, so a second ``rlhf run`` fails before it starts any work.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_DIR = ".rlhf"
HOLDER_ENV = "RLHF_LOCK_PID"


class ProjectLocked(RuntimeError):
    """Another process holds the project lock; the message names it."""


_held: set[Path] = set()           # lock files this process holds


def lock_path(project: str | Path = ".") -> Path:
    return Path(project).resolve() / LOCK_DIR / "lock"


def holder(project: str | Path = ".") -> dict:
    """What ``.rlhf/lock.json`` says about the last process that took the lock ({} when none did)."""
    p = lock_path(project).with_suffix(".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _ancestors() -> set[int]:
    """The pids of this process's parents, up to init (Linux /proc; elsewhere only the direct parent)."""
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])      # field 4 (ppid), after the parenthesised command name
    return pids


def _covered_by_ancestor(project: Path) -> bool:
    """True when an ancestor of this process holds the lock and handed it down through the environment."""
    env = os.environ.get(HOLDER_ENV, "")
    info = holder(project)
    return env.isdigit() and info.get("pid") == int(env) and info.get("host") == socket.gethostname() \
        and int(env) in _ancestors()


def _describe(info: dict, path: Path) -> str:
    if not info:
        return f"another process holds {path}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    command, doing = info.get("command", "?"), info.get("doing", "")
    what = command if doing in command else f"{command} ({doing})"
    return f"pid {info.get('pid')} on {info.get('host')} holds it: `{what}`, since {since} ({path})"


@contextlib.contextmanager
def project_lock(what: str, project: str | Path = ".") -> Iterator[None]:
    """Hold the project's exclusive lock for the block; fail at once with ``ProjectLocked`` when another process
    holds it. ``what`` says what this process is doing (it appears in the other side's error)."""
    from filelock import FileLock, Timeout

    from rlhf.distributed import is_main_process
    path = lock_path(project)
    if path in _held or not is_main_process() or _covered_by_ancestor(path.parent.parent):
        # Held already: by this process (the flow, then its stages and promotion), by rank 0, or by an ancestor.
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectLocked(f"project {path.parent.parent} is busy: {_describe(holder(project), path)}; wait for it "
                            f"to finish or stop it, then run `{what}` again") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(
        [Path(sys.argv[0]).name, *sys.argv[1:]]) or what, "doing": what, "since": time.time()}
    path.with_suffix(".json").write_text(json.dumps(info) + "\n")
    _held.add(path)
    previous = os.environ.get(HOLDER_ENV)
    os.environ[HOLDER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        _held.discard(path)
        if previous is None:
            os.environ.pop(HOLDER_ENV, None)
        else:
            os.environ[HOLDER_ENV] = previous
        lock.release()
