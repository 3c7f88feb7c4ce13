"""Handing the project lock to a stage that a work pool's worker runs (tasks/lock.py ``handover`` /
``accept_handover``), between real processes: accepted only with the holder's current token while the holder still
holds the lock; the accepting process keeps the project busy even after the holder dies, covers its own children (a
launcher's ranks) but no unrelated process, and a new holder's token makes an old grant worthless."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.lock import HOLDER_ENV, ProjectLocked, accept_handover, delegate, handover, holder, project_lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != HOLDER_ENV}, "PYTHONPATH": str(ROOT)}
HOLD = """
import json, time
from tasks.lock import handover, project_lock
with project_lock("rlhf run"):
    print(json.dumps(handover()), flush=True)
    time.sleep(120)
"""
ACCEPT = """
import json, subprocess, sys, time
from tasks.lock import accept_handover
with accept_handover(json.loads(sys.argv[1]), "rlhf_stage sft"):
    print("accepted", flush=True)
    if len(sys.argv) > 2:                      # a launched child under the hand-over
        print("child", subprocess.run([sys.executable, "-c", sys.argv[2]]).returncode, flush=True)
    time.sleep(120)
"""
TAKE = "from tasks.lock import project_lock\nwith project_lock('rlhf stage sft'):\n    print('child took it')"


def start(code: str, project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=project, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()


@pytest.fixture
def held(tmp_path):
    p = start(HOLD, tmp_path)
    grant = json.loads(p.stdout.readline())
    yield tmp_path, p, grant
    stop(p)


def take(project: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TAKE], cwd=project, capture_output=True, text=True, env=env or ENV)


def test_the_grant_names_the_holder_and_the_token_in_lock_json(held):
    project, p, grant = held
    assert grant["pid"] == p.pid and grant["token"] == holder(project)["token"] and len(grant["token"]) == 32


def test_the_grant_is_accepted_while_its_holder_holds_the_lock(held):
    project, p, grant = held
    with accept_handover(grant, "rlhf_stage sft", project):
        with project_lock("rlhf stage sft", project):               # what run_stage takes: covered
            assert delegate(project)["pid"] == os.getpid()
        other = take(project)                                        # an unrelated process still is not
        assert other.returncode == 1 and f"pid {p.pid}" in other.stderr
    with pytest.raises(ProjectLocked):                               # the hand-over ended with the block
        with project_lock("after", project):
            pass


@pytest.mark.parametrize("change", ["token", "pid"])
def test_a_wrong_token_or_holder_is_refused_before_any_work(held, change):
    project, p, grant = held
    bad = {**grant, change: "0" * 32 if change == "token" else grant["pid"] + 1}
    with pytest.raises(ProjectLocked, match=r"no longer holds its lock .*nothing was run$"):
        with accept_handover(bad, "rlhf_stage sft", project):
            raise AssertionError("ran")


def test_a_grant_of_a_dead_holder_is_refused(held):
    project, p, grant = held
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with pytest.raises(ProjectLocked, match=r"has ended \(its lock .* is free\); nothing was run$"):
        with accept_handover(grant, "rlhf_stage sft", project):
            raise AssertionError("ran")


def test_a_new_holders_token_makes_the_old_grant_worthless(held):
    project, p, grant = held
    stop(p)
    q = start(HOLD, project)
    try:
        assert json.loads(q.stdout.readline())["token"] != grant["token"]
        with pytest.raises(ProjectLocked, match="no longer holds its lock"):
            with accept_handover(grant, "rlhf_stage sft", project):
                raise AssertionError("ran")
    finally:
        stop(q)


def test_a_stage_left_running_by_a_dead_holder_keeps_the_project_busy(held):
    project, p, grant = held
    stage = start(ACCEPT, project, json.dumps(grant))
    try:
        assert stage.stdout.readline().strip() == "accepted"
        stop(p)                                                      # the holder dies; its stage still runs
        with pytest.raises(ProjectLocked) as e:
            with project_lock("rlhf run", project):
                pass
        msg = str(e.value)
        assert f"pid {stage.pid}" in msg and "rlhf_stage sft (handed over by pid" in msg and "\n" not in msg, msg
    finally:
        stop(stage)
    with project_lock("rlhf run", project):                         # free once that stage is gone
        pass


def test_a_child_of_the_accepting_process_is_covered_an_unrelated_one_is_not(held):
    project, p, grant = held
    stage = start(ACCEPT, project, json.dumps(grant), TAKE)
    try:
        assert stage.stdout.readline().strip() == "accepted"
        assert stage.stdout.readline().strip() == "child took it"
        assert stage.stdout.readline().strip() == "child 0"
        other = take(project, {**ENV, HOLDER_ENV: str(stage.pid)})   # names the stage's pid, is not its child
        assert other.returncode == 1 and "ProjectLocked" in other.stderr
    finally:
        stop(stage)


def test_only_the_process_that_took_the_lock_can_hand_it_over(tmp_path, held):
    with pytest.raises(ProjectLocked, match="has no lock to hand over"):
        handover(tmp_path)
    project, p, grant = held
    with accept_handover(grant, "rlhf_stage sft", project):
        with pytest.raises(ProjectLocked, match="has no lock to hand over"):
            handover(project)                                        # an accepted lock is not handed on
