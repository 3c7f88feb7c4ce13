"""A temporary local Prefect API server for one `rlhf run`, started in the background while the flow's imports load.

Without ``PREFECT_API_URL`` Prefect starts its own temporary server on the flow's first API call, after the ~4-5 s
of importing the flow (torch, transformers, mlflow, dvc). Here the CLI first starts Prefect's own documented server
command, ``prefect server start`` (API only: no UI, no background services), as a separate process, so its boot
overlaps the imports on another core; the flow then runs against it through ``temporary_settings(PREFECT_API_URL=
...)``. It is stopped at interpreter exit: the atexit handler is registered before Prefect's, so it runs after
Prefect has flushed its logs and events (the interpreter drains Prefect's worker threads before any atexit handler).
With ``PREFECT_API_URL`` set, or ephemeral mode off, nothing is started and the configured server is used. The
server never outlives the run: it runs in its own session and dies with its parent (tasks/shutdown.py).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks import shutdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_command() -> list[str]:
    """The `prefect` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "prefect"
    return [str(beside)] if beside.exists() else [shutil.which("prefect") or "prefect"]


def _die_with_parent(parent: int):
    """For Popen's preexec_fn (Linux): the child gets SIGTERM when ``parent`` dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so a killed run never leaves its server behind. A no-op where prctl is missing."""
    def arm() -> None:
        import ctypes
        import signal
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)                # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:                      # the parent died before the prctl: go now
            os.kill(os.getpid(), signal.SIGTERM)
    return arm if sys.platform.startswith("linux") else None


class LocalServer:
    def __init__(self, port: int, process: subprocess.Popen):
        self.port, self.process = port, process
        self.api_url = f"http://127.0.0.1:{port}/api"

    @classmethod
    def start(cls) -> "LocalServer":
        port = _free_port()
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        process = subprocess.Popen(
            [*_prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
             "--no-services", "--analytics-off", "--log-level", "ERROR", "--no-background"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C to the terminal's process group does not stop it under the run still
            # reporting to it; the run stops it (atexit), or the kernel does when the run dies (_die_with_parent).
            start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        server = cls(port, process)
        atexit.register(server.stop)        # registered before Prefect's own exit handlers, so it runs after them
        shutdown.on_hard_exit(server.kill)  # a forced exit (tasks/shutdown.py) skips atexit
        return server

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the API answers its health check (or raise naming the port and the exit status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server on port {self.port} exited with status "
                                   f"{self.process.returncode} while starting")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server on port {self.port} did not answer within {timeout:.0f} s")

    def kill(self, wait: float = 3.0) -> None:
        """Stop it now, without flushing logs (a forced exit; ``stop`` after its flush)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:                           # a throwaway server: no reason to wait long for open connections
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None and "prefect.logging.handlers" in sys.modules:
            with contextlib.suppress(Exception):           # logs still queued go to the server before it goes
                sys.modules["prefect.logging.handlers"].APILogHandler.flush()   # public: logging's flush()
        self.kill(wait=5.0)


def start_if_needed() -> LocalServer | None:
    """Start a temporary server when Prefect would (no API URL configured, ephemeral mode allowed)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    return LocalServer.start()


_current: list[LocalServer] = []       # the temporary server the block of ``using`` runs against


def current() -> LocalServer | None:
    """The temporary server this process runs its flow against (None: the configured API, or Prefect's own):
    work pools' workers cannot reach it (tasks/work_pools.py)."""
    return _current[-1] if _current else None


@contextlib.contextmanager
def using(server: LocalServer | None):
    """Run the block against ``server`` (wait for it first); without one, against what Prefect is configured for."""
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings
    server.wait()
    _current.append(server)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        _current.remove(server)
