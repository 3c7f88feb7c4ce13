"""The promises an operator relies on when runs overlap or are stopped, on real `rlhf run` processes (Prefect's
temporary server, DVC, MLflow) in a throwaway project:

- two `rlhf run` started together: one runs, the other exits at once naming the holder of the project lock, and
  the finished outputs equal a lone run's;
- SIGTERM or SIGINT in the middle of a stage: the run exits within 30 s and no process it started is left; after a
  SIGKILL its temporary Prefect server goes too; the next `rlhf run` finishes the pipeline and `dvc status` is clean.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.pipeline.test_resume import (assert_same_weights, make_project, project_env, run, start,
                                        without_timing)

pytestmark = pytest.mark.slow


def outputs(repo: Path) -> dict:
    return {f.name: without_timing(json.loads(f.read_text())) for f in sorted((repo / "metrics").glob("*.json"))}


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared (rc {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def all_gone(procs: list[psutil.Process], timeout: float) -> list[str]:
    """The processes of ``procs`` still running (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_two_runs_started_together_one_runs_the_other_exits_naming_it(tmp_path):
    repo = make_project(tmp_path / "project")
    env = project_env(repo)
    t0 = time.monotonic()
    procs = [start(["rlhf", "run"], repo, env, tmp_path / f"run{i}.log") for i in range(2)]
    ended = {}
    while len(ended) < 2:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic() - t0
        time.sleep(0.05)
    rcs = [p.returncode for p in procs]
    assert sorted(rcs) == [0, 1], rcs
    winner, loser = (0, 1) if rcs[0] == 0 else (1, 0)
    last = (tmp_path / f"run{loser}.log").read_text().strip().splitlines()[-1]
    assert last.startswith("rlhf: error: ProjectLocked: ") and f"pid {procs[winner].pid}" in last, last
    assert "`rlhf run`" in last
    assert ended[loser] < 30 and ended[loser] < ended[winner] / 2, ended       # at once, not after the other
    together = outputs(repo)
    assert "evaluate.json" in together and "ppo.json" in together
    policy = tmp_path / "policy-together"
    (repo / "artifacts" / "models" / "policy").rename(policy)
    # The lone run: every stage again, one process.
    run(["rlhf", "run", "--force"], repo, env)
    assert outputs(repo) == together
    assert_same_weights(policy, repo / "artifacts" / "models" / "policy")


# (signal, the stage it lands in, the exit status the CLI gives)
STOPS = [(signal.SIGTERM, "pretrain", 143), (signal.SIGINT, "reward", 130), (signal.SIGKILL, "ppo", -9),
         (signal.SIGTERM, "evaluate", 143)]


def test_a_stopped_run_exits_within_30_s_and_leaves_no_process(tmp_path):
    repo = make_project(tmp_path / "project")
    env = project_env(repo)
    for sig, stage, rc in STOPS:
        log = tmp_path / f"{stage}.log"
        proc = start(["rlhf", "run"], repo, env, log)
        wait_for(log, f"{stage}: running", proc)
        time.sleep(0.3)                                         # inside the stage's work
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("prefect" in " ".join(c.cmdline()) for c in family), "no temporary Prefect server seen"
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        took = time.monotonic() - t0
        assert took < 30 and code == rc, (stage, sig, code, took, log.read_text()[-2000:])
        left = all_gone(family, timeout=10)
        assert not left, f"left behind after {signal.Signals(sig).name} in {stage}: {left}"
        if sig != signal.SIGKILL:
            assert "received, stopping" in log.read_text()
    run(["rlhf", "run"], repo, env)                                 # picks up where the last stop left it
    status = run(["dvc", "status", "--json"], repo, env)
    assert json.loads(status.stdout or "{}") == {}
    assert (repo / "metrics" / "evaluate.json").exists() and not list((repo / "artifacts").rglob(".tmp-*"))
