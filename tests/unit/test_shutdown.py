"""tasks/shutdown.py in real processes: the first SIGTERM / SIGINT raises in the main thread (normal exit path,
atexit runs); a process still alive ``grace`` seconds later, or a second signal, is killed after the forced-exit
cleanups ran."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import atexit, pathlib, signal, sys, time
from tasks import shutdown
out = pathlib.Path(sys.argv[1])
shutdown.install(grace=float(sys.argv[2]))
shutdown.on_hard_exit(lambda: (out / "forced-cleanup").write_text("ran"))
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[3] == "foreign":              # a library's handler replaces ours (Prefect's flow engine does)
    def foreign(signum, frame):
        raise RuntimeError("foreign handler")
    signal.signal(signal.SIGTERM, foreign)
    shutdown.watch_handlers()
ready = False
while True:   # every point where Python runs the handler (sleep, the inner loop's jump) lies inside the try
    try:
        if not ready:
            ready = True
            print("ready", flush=True)
        while True:
            time.sleep(0.05)
    except (SystemExit, KeyboardInterrupt, RuntimeError) as e:
        if sys.argv[3] == "polite":
            raise
        (out / "swallowed").write_text(type(e).__name__)   # like a finalizer whose exception Python ignores
        if sys.argv[3] in ("checks", "foreign"):
            shutdown.check()                                # the next safe point raises it again
"""


def start(tmp_path: Path, grace: float, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path), str(grace), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_the_first_signal_takes_the_normal_exit_path(tmp_path, sig, rc):
    p = start(tmp_path, 30, "polite")
    p.send_signal(sig)
    assert p.wait(timeout=10) == rc        # SIGINT: Python ends an uncaught KeyboardInterrupt by SIGINT (the CLI: 130)
    assert (tmp_path / "atexit").exists() and not (tmp_path / "forced-cleanup").exists()
    assert signal.Signals(sig).name in p.stderr.read()


def test_a_run_that_does_not_stop_is_killed_after_the_grace_period(tmp_path):
    p = start(tmp_path, 1.0, "stubborn")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=15) == -signal.SIGKILL
    assert 0.9 < time.monotonic() - t0 < 10
    assert (tmp_path / "swallowed").read_text() == "SystemExit"
    assert (tmp_path / "forced-cleanup").read_text() == "ran"
    assert "still running 1 s after the signal: killed" in p.stderr.read()


def test_a_second_signal_kills_at_once(tmp_path):
    p = start(tmp_path, 60, "stubborn")
    p.send_signal(signal.SIGINT)
    while not (tmp_path / "swallowed").exists():
        time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=15) == -signal.SIGKILL and time.monotonic() - t0 < 5
    assert (tmp_path / "forced-cleanup").read_text() == "ran"


def test_a_lost_raise_is_raised_again_at_the_next_safe_point(tmp_path):
    p = start(tmp_path, 60, "checks")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 143
    assert (tmp_path / "swallowed").read_text() == "SystemExit" and (tmp_path / "atexit").exists()
    assert not (tmp_path / "forced-cleanup").exists()


def test_a_stop_through_another_handler_is_recorded_and_raised_at_the_next_safe_point(tmp_path):
    """The foreign handler's exception is swallowed (as a TerminationSignal raised inside a weakref callback is);
    the chained bookkeeping still records the stop, so the next check ends the process with 143."""
    p = start(tmp_path, 60, "foreign")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 143
    assert (tmp_path / "swallowed").read_text() == "RuntimeError"
    assert "SIGTERM received" in p.stderr.read()
