"""Stages on their own infrastructure, the worker's side: what the ``rlhf_stage`` flow run (flows/stage_flow.py) does
on a work pool's worker before and after the stage itself, so that the stage runs as it would in the pipeline's own
process: in the project folder, against the same MLflow store, as a child run of the pipeline's parent run, under
the project lock that the pipeline's process handed over (tasks/lock.py ``accept_handover``).

A stage with a launcher (``orchestration.launchers``, e.g. ``accelerate launch`` on a GPU pool) runs as
``<launcher> rlhf stage NAME`` in a subprocess, what docs/operations.md shows for a launcher by hand; its ranks are
covered by the handed-over lock through ``RLHF_LOCK_PID`` (their ancestor holds it), and its metrics are read back
from ``metrics/<stage>.json``, the file dvc.yaml declares (rank 0 writes it).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Iterator

from prefect import task


@contextlib.contextmanager
def handed_over(stage: str, project_dir: str, lock: dict, parent_run_id: str, env: dict) -> Iterator[None]:
    """The block runs in ``project_dir`` with the pipeline's tracking environment and parent run, under the lock
    the pipeline handed over (``ProjectLocked`` at once, before any work, when that hand-over is no longer valid)."""
    cwd, saved = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.chdir(project_dir)
    os.environ.update(env)                          # before tasks.tracking is imported: it reads RLHF_EXPERIMENT
    try:
        from tasks.lock import accept_handover
        from tasks.tracking import PARENT_ENV
        with accept_handover(lock, f"rlhf_stage {stage}"):
            if parent_run_id:
                os.environ[PARENT_ENV] = parent_run_id
            try:
                yield
            finally:
                os.environ.pop(PARENT_ENV, None)
    finally:                                        # as it was (the engine's process usually ends here anyway)
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rlhf_command() -> str:
    """The `rlhf` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "rlhf"
    return str(beside) if beside.exists() else shutil.which("rlhf") or "rlhf"


@task(name="stage")
def launched_stage_task(stage: str, params_path: str, launcher: list[str]) -> dict:
    """One pipeline stage as ``<launcher> rlhf stage NAME --params PATH``; returns metrics/<stage>.json."""
    cmd = [*launcher, rlhf_command(), "stage", stage, "--params", params_path]
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    relay = threading.Thread(target=_relay, args=(proc.stderr, tail), daemon=True)
    relay.start()
    try:
        status = proc.wait()
    finally:
        if proc.poll() is None:                       # this run is being stopped (cancelled): stop the launcher too
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    relay.join(timeout=5)
    if status != 0:
        errors = [line for line in tail if line.startswith("rlhf: error:")]
        last = (errors or list(tail) or ["(no output)"])[-1].strip()
        raise RuntimeError(f"`{' '.join(cmd)}` exited with status {status}: {last}")
    return json.loads(Path("metrics", f"{stage}.json").read_text())


def _relay(stream, tail: deque) -> None:
    """Copy the launcher's stderr to ours (the worker's log) and keep its last lines for the error message."""
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)


def write_result(path: str, metrics: dict) -> None:
    """Hand the metrics back to the pipeline's process: a file in the shared project folder (written whole, then
    renamed), read and removed by tasks.work_pools.read_result."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    tmp.write_text(json.dumps(metrics, default=str))
    os.replace(tmp, target)
