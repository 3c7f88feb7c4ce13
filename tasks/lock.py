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

A stage that a Prefect work pool runs (flows/stage_flow.py) is no descendant of the holder: the holder hands the
lock over explicitly (``handover``: its pid, host and the random token it wrote into lock.json), and the stage's
process accepts it (``accept_handover``) only while lock.json still names that token and the lock is still held. The
accepting process holds a second lock, ``.rlhf/lock.delegate``, for as long as the stage runs, and a new holder
refuses to start while that one is held, so a stage left running by a holder that died (or stopped waiting) keeps
the project from a second writer as well.

Same idea as DVC's own repository lock (``.dvc/tmp/lock``, held while ``dvc repro`` runs), one level up: DVC's lock
covers DVC's commands, ours covers the whole run, so a second ``rlhf run`` fails before it starts any work.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from rlhf.tempdirs import atomic_path, pid_alive

LOCK_DIR = ".rlhf"
HOLDER_ENV = "RLHF_LOCK_PID"


class ProjectLocked(RuntimeError):
    """Another process holds the project lock; the message names it."""


_held: set[Path] = set()           # lock files this process holds (or was handed over)
_tokens: dict[Path, str] = {}      # the token this process wrote into lock.json, per lock it took itself


def lock_path(project: str | Path = ".") -> Path:
    return Path(project).resolve() / LOCK_DIR / "lock"


def delegate_path(project: str | Path = ".") -> Path:
    return lock_path(project).with_suffix(".delegate")


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def holder(project: str | Path = ".") -> dict:
    """What ``.rlhf/lock.json`` says about the last process that took the lock ({} when none did)."""
    return _read_json(lock_path(project).with_suffix(".json"))


def delegate(project: str | Path = ".") -> dict:
    """What ``.rlhf/lock.delegate.json`` says about the last process a holder handed the lock to."""
    return _read_json(delegate_path(project).with_suffix(".delegate.json"))


def _file_lock(path: Path):
    from filelock import FileLock
    return FileLock(str(path), timeout=0, thread_local=False, fallback_to_soft=False)


def _is_held_elsewhere(path: Path) -> bool:
    """True when another process holds the OS lock on ``path`` (a non-blocking try to take it fails)."""
    from filelock import Timeout
    if not path.exists():
        return False
    probe = _file_lock(path)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


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
    """True when an ancestor of this process holds the lock (or was handed it: the process a work pool runs a stage
    in, whose launcher started this one) and handed it down through the environment."""
    env = os.environ.get(HOLDER_ENV, "")
    if not env.isdigit():
        return False
    def names(info: dict) -> bool:
        return info.get("pid") == int(env) and info.get("host") == socket.gethostname()
    named = names(holder(project)) or (names(delegate(project)) and _is_held_elsewhere(delegate_path(project)))
    return named and int(env) in _ancestors()


def _alive(info: dict) -> bool:
    """``info`` names a running process (on another host: taken as running, nothing here can tell)."""
    pid = info.get("pid")
    return isinstance(pid, int) and (info.get("host") != socket.gethostname() or pid_alive(pid))


def _live_holder(project: str | Path, wait_s: float = 2.0) -> dict:
    """The holder lock.json names, for a process that just failed to take the lock. The holder takes the OS lock
    first and writes lock.json after, so a process that tries in between would read no holder or the previous one
    (gone): wait up to ``wait_s`` for lock.json to name a running process; {} if it never does."""
    deadline = time.monotonic() + wait_s
    while True:
        info = holder(project)
        if _alive(info) and info.get("pid") != os.getpid():
            return info
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.02)


def _describe(info: dict, path: Path) -> str:
    if not info:
        return f"another process holds {path}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    command, doing = info.get("command", "?"), info.get("doing", "")
    what = command if doing in command else f"{command} ({doing})"
    return f"pid {info.get('pid')} on {info.get('host')} holds it: `{what}`, since {since} ({path})"


def _busy(project: Path, path: Path, info: dict, what: str) -> ProjectLocked:
    return ProjectLocked(f"project {project} is busy: {_describe(info, path)}; wait for it to finish or stop it, "
                         f"then run `{what}` again")


@contextlib.contextmanager
def project_lock(what: str, project: str | Path = ".") -> Iterator[None]:
    """Hold the project's exclusive lock for the block; fail at once with ``ProjectLocked`` when another process
    holds it. ``what`` says what this process is doing (it appears in the other side's error)."""
    from filelock import Timeout

    from rlhf.distributed import is_main_process
    path = lock_path(project)
    if path in _held or not is_main_process() or _covered_by_ancestor(path.parent.parent):
        # Held already: by this process (the flow, then its stages and promotion), by rank 0, or by an ancestor.
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _file_lock(path)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(path.parent.parent, path, _live_holder(project), what) from None
    token = secrets.token_hex(16)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(
        [Path(sys.argv[0]).name, *sys.argv[1:]]) or what, "doing": what, "since": time.time(), "token": token}
    with atomic_path(path.with_suffix(".json")) as tmp:       # whole or not at all: a reader never sees half of it
        tmp.write_text(json.dumps(info) + "\n")
    # After the new token is written (so a late accept_handover of the previous holder's token fails): a stage
    # handed over by an earlier holder that still runs keeps the project busy.
    if _is_held_elsewhere(delegate_path(project)):
        lock.release()
        raise _busy(path.parent.parent, delegate_path(project), delegate(project), what)
    with _holding(path, lock.release, token):
        yield


@contextlib.contextmanager
def _holding(path: Path, release, token: str | None = None) -> Iterator[None]:
    """This process holds ``path`` for the block (the lock itself or a handed-over one): its own nested calls pass,
    its children are covered through RLHF_LOCK_PID; ``release`` frees what was taken, at the end."""
    _held.add(path)
    if token:
        _tokens[path] = token
    previous = os.environ.get(HOLDER_ENV)
    os.environ[HOLDER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        _held.discard(path)
        _tokens.pop(path, None)
        if previous is None:
            os.environ.pop(HOLDER_ENV, None)
        else:
            os.environ[HOLDER_ENV] = previous
        release()


def handover(project: str | Path = ".") -> dict:
    """What another process needs to run one step of this holder's work under its lock (``accept_handover``): the
    holder's pid, host and the token it wrote into lock.json. Only the process that took the lock can hand it over."""
    path = lock_path(project)
    if path not in _tokens:
        raise ProjectLocked(f"this process does not hold {path}: it has no lock to hand over")
    return {"pid": os.getpid(), "host": socket.gethostname(), "token": _tokens[path]}


@contextlib.contextmanager
def accept_handover(grant: dict, what: str, project: str | Path = ".") -> Iterator[None]:
    """Run the block under the lock that ``grant`` (``handover`` of the holder) hands to this process: accepted only
    while lock.json names the grant's token and its holder still holds the lock; meanwhile this process holds
    ``.rlhf/lock.delegate`` (so no new holder starts, even if the one that handed it over dies) and covers its own
    children (a launcher's ranks) through ``RLHF_LOCK_PID``. Otherwise ``ProjectLocked``, before any work."""
    from filelock import Timeout
    path = lock_path(project)
    if path in _held:                          # the holder itself (a stage flow run in the holder's process)
        yield
        return
    project_dir, dpath = path.parent.parent, delegate_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    dlock = _file_lock(dpath)
    try:
        dlock.acquire()
    except Timeout:
        raise _busy(project_dir, dpath, delegate(project), what) from None
    try:
        info, who = holder(project), f"pid {grant.get('pid')} on {grant.get('host')}"
        if not grant.get("token") or any(info.get(k) != grant.get(k) for k in ("token", "pid", "host")):
            raise ProjectLocked(f"project {project_dir}: the run that handed `{what}` over ({who}) no longer holds "
                                f"its lock ({path.with_suffix('.json')} names pid {info.get('pid')}); nothing was run")
        if not _is_held_elsewhere(path):
            raise ProjectLocked(f"project {project_dir}: the run that handed `{what}` over ({who}) has ended (its lock "
                                f"{path} is free); nothing was run")
        dpath.with_suffix(".delegate.json").write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": what, "doing": f"handed over by {who}",
            "since": time.time()}) + "\n")
    except BaseException:
        dlock.release()
        raise
    with _holding(path, dlock.release):
        yield
