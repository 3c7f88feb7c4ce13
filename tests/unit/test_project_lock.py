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


SLOW_NAMER = """
import json, os, sys, time
from filelock import FileLock
from pathlib import Path
lock = Path('.rlhf/lock'); lock.parent.mkdir(exist_ok=True)
Path('.rlhf/lock.json').write_text(json.dumps({"pid": 999999, "host": os.uname().nodename, "command": "gone"}))
with FileLock(str(lock), timeout=0):
    print("held", flush=True)
    time.sleep(0.5)                                 # the OS lock is held, lock.json still names a dead process
    Path('.rlhf/lock.json').write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                   "command": "slow namer", "doing": "slow namer", "since": 0}))
    time.sleep(120)
"""


def test_a_holder_that_has_not_named_itself_yet_is_waited_for_not_misnamed(tmp_path):
    """A holder takes the OS lock and then writes lock.json: a second process that fails in between names the holder
    once it has written itself (a short wait), never the previous, dead holder lock.json still names."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(HOLDER_ENV, None)
    p = subprocess.Popen([sys.executable, "-c", SLOW_NAMER], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(ProjectLocked) as e:
            with project_lock("rlhf run", tmp_path):
                pass
        assert f"pid {p.pid}" in str(e.value) and "999999" not in str(e.value), str(e.value)
    finally:
        p.kill()
        p.wait()
