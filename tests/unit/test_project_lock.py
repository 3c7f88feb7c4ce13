"""The project lock (tasks/lock.py) between real processes: a second holder fails at once naming the first; the lock
goes with its holder however it dies; it is re-entrant in a process and covers the holder's own children; promotion
and `rlhf stage` (what `dvc repro` runs) take it too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.lock import HOLDER_ENV, ProjectLocked, holder, project_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from tasks.lock import project_lock
with project_lock("holder test"):
    print("held", flush=True)
    if len(sys.argv) > 1:                      # run a child under the lock, print its exit status
        import subprocess
        print("child", subprocess.run([sys.executable, "-c", sys.argv[1]]).returncode, flush=True)
    time.sleep(120)
"""
TAKE = "from tasks.lock import project_lock\nwith project_lock('child'):\n    print('child took it')"


def start_holder(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(HOLDER_ENV, None)
    p = subprocess.Popen([sys.executable, "-c", HOLD, *args], cwd=project, env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture
def held(tmp_path):
    p = start_holder(tmp_path)
    yield tmp_path, p
    p.kill()
    p.wait()


def test_a_second_holder_fails_at_once_naming_the_first(held):
    project, p = held
    t0 = time.monotonic()
    with pytest.raises(ProjectLocked) as e:
        with project_lock("rlhf run", project):
            pass
    assert time.monotonic() - t0 < 2
    msg = str(e.value)
    assert f"pid {p.pid}" in msg and "(holder test)" in msg, msg
    assert "rlhf run" in msg and "\n" not in msg
    assert holder(project)["pid"] == p.pid


def test_the_lock_goes_with_its_holder_even_on_sigkill(held):
    project, p = held
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with project_lock("after the crash", project):          # no stale lock to clean by hand
        assert holder(project)["pid"] == os.getpid()
    with project_lock("again", project):                   # and released on the way out
        pass


def test_reentrant_in_one_process(tmp_path):
    with project_lock("outer", tmp_path):
        with project_lock("inner", tmp_path):
            assert holder(tmp_path)["doing"] == "outer"
        assert os.environ[HOLDER_ENV] == str(os.getpid())
    assert HOLDER_ENV not in os.environ
    other = subprocess.run([sys.executable, "-c", TAKE], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert other.returncode == 0, other.stderr                # released: someone else can take it


def test_a_child_of_the_holder_is_covered_an_unrelated_process_is_not(tmp_path):
    p = start_holder(tmp_path, TAKE)
    try:
        assert p.stdout.readline().strip() == "child took it"
        assert p.stdout.readline().strip() == "child 0"
        # An unrelated process that merely sets the variable to the holder's pid is still refused.
        env = {**os.environ, "PYTHONPATH": str(ROOT), HOLDER_ENV: str(p.pid)}
        other = subprocess.run([sys.executable, "-c", TAKE], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert other.returncode == 1 and "ProjectLocked" in other.stderr and f"pid {p.pid}" in other.stderr
    finally:
        p.kill()
        p.wait()


def test_rlhf_stage_and_promote_refuse_while_another_process_holds_the_lock(held):
    project, p = held
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in (["stage", "prepare"], ["promote"], ["rollback"]):
        out = subprocess.run([sys.executable, "-m", "flows.cli", *cmd], cwd=project, capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.returncode == 1, (cmd, out.stderr)
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith("rlhf: error: ProjectLocked:") and f"pid {p.pid}" in line, (cmd, out.stderr)
    assert not (project / "artifacts").exists()              # the refused stage wrote nothing
