"""Stopping `rlhf run` cleanly: SIGTERM (what a scheduler, a container runtime or `kill` sends) and SIGINT (Ctrl-C)
end the run within a bounded time and leave no process behind.

- The first signal raises in the main thread, and again at the next safe point (``check``) should that raise be lost (SIGTERM: ``SystemExit(143)``; SIGINT: ``KeyboardInterrupt``), so the
  flow run is marked crashed, the MLflow run ends, the project lock is released and the temporary Prefect server
  is stopped by its exit handler, as on any other error. Inside a flow run Prefect first turns SIGTERM into its own
  ``TerminationSignal``, reports the crash, then re-delivers the signal to the handler installed before it (this
  one): the same path.
- A watchdog armed by that first signal ends the process after ``grace`` seconds whatever it is doing (a long
  kernel, a retrying HTTP client): it runs the registered cleanups (the temporary server), then kills the process
  (SIGKILL to itself: exit status 137). A second signal does the same at once.
- The temporary Prefect server runs in its own session, so a Ctrl-C in the terminal (delivered to the whole
  foreground process group) does not kill it under the run that still reports to it; and it receives SIGTERM
  from the kernel when the run's process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; see prefect_server).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

GRACE_S = 20.0
_cleanups: list[Callable[[], None]] = []
_state = {"signalled": None}


def on_hard_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` before a forced exit (the watchdog or a second signal); normal exits use atexit as usual."""
    _cleanups.append(fn)


def _hard_exit(why: str) -> None:
    for fn in reversed(_cleanups):
        try:
            fn()
        except Exception:                                   # best effort: the process is going anyway
            pass
    print(f"rlhf: {why}: killed", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)     # from any thread; the exit status says what happened (137)


def _record(signum: int) -> None:
    """The first notice of a stop: remember it (``check``), say so, arm the watchdog."""
    _state["signalled"] = signum
    print(f"rlhf: {signal.Signals(signum).name} received, stopping (at most {GRACE_S:.0f} s)", file=sys.stderr,
          flush=True)
    timer = threading.Timer(GRACE_S, _hard_exit, args=(f"still running {GRACE_S:.0f} s after the signal",))
    timer.daemon = True
    timer.start()


def _handler(signum, frame) -> None:
    if _state["signalled"] is None:
        _record(signum)
    elif not _state.pop("relayed", False):                  # a second signal (not one re-delivered): stop now
        _hard_exit("a second signal")
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def watch_handlers() -> None:
    """Put the bookkeeping in front of a handler installed since ``install``: Prefect's flow engine replaces the
    SIGTERM handler with its own (it raises TerminationSignal, reports the crash, then re-delivers the signal to
    ours), and that raise can be lost the same way. Chained, the stop is recorded, so ``check`` raises at the next
    safe point and the watchdog is armed. The flow calls this first thing; a no-op unless ``install`` ran."""
    if not _state.get("installed") or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if current is _handler or not callable(current) or getattr(current, "rlhf_chained", False):
            continue

        def chained(signum, frame, _prev=current):
            if _state["signalled"] is None:
                _record(signum)
                _state["relayed"] = True              # the engine re-delivers it to ``_handler``: not a second one
            _prev(signum, frame)
        chained.rlhf_chained = True
        signal.signal(sig, chained)


def check() -> None:
    """Raise again, at a safe point, when a stop was requested. The handler's own raise can be lost: a signal that
    lands while Python runs a finalizer or a weakref callback has its exception printed and ignored ("Exception
    ignored in ..."), and the run would go on. The stage logger (every logged step), the stage task (before it
    writes or registers anything) and the flow (between stages) call this."""
    signum = _state["signalled"]
    if signum is None:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install(grace: float = GRACE_S) -> None:
    """Handle SIGTERM and SIGINT as above (main thread only; elsewhere a no-op)."""
    global GRACE_S
    GRACE_S = grace
    if threading.current_thread() is not threading.main_thread():
        return
    _state["installed"] = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)
