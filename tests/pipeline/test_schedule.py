"""The scheduled deployment against a REAL Prefect server: `prefect server start` (own PREFECT_HOME), `rlhf schedule
--cron "0 3 * * *"` serving in the background, a deployment run triggered with `prefect deployment run --watch` on the
tiny configuration completes; a failing run's state names the stage; SIGTERM pauses the schedule. Everything started
here is stopped at teardown (process groups, by id)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline.test_resume import make_project, project_env

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CRON = "0 3 * * *"
DEPLOYMENT = "rlhf_pipeline/ci"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 30) -> None:
    """Signal the process group we started (by its id), then make sure it is gone."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready after {timeout}s:\n{log.read_text()[-3000:] if log else ''}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": url}
    log = tmp / "server.log"
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, "prefect server", proc, log)
        yield {"url": url, "home": tmp / "home", "tmp": tmp}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    """A tiny project served by `rlhf schedule` (the CLI subcommand) in the background."""
    from prefect.client.orchestration import SyncPrefectClient
    repo = make_project(tmp_path_factory.mktemp("scheduled") / "project")
    env = project_env(repo, PREFECT_API_URL=server["url"], PREFECT_HOME=str(server["home"]),
                      MLFLOW_TRACKING_URI=f"sqlite:///{server['tmp'] / 'mlflow.db'}")
    log = server["tmp"] / "serve.log"
    proc = subprocess.Popen([str(BIN / "rlhf"), "schedule", "--cron", CRON, "--name", "ci"], cwd=repo, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    client = SyncPrefectClient(api=server["url"])
    client.__enter__()
    try:
        deployment = wait_for(lambda: client.read_deployment_by_name(DEPLOYMENT), 120, "deployment", proc, log)
        yield {"repo": repo, "env": env, "proc": proc, "client": client, "deployment": deployment, "log": log}
    finally:
        stop(proc)
        client.__exit__(None, None, None)


def trigger(served, timeout: float = 300) -> tuple[subprocess.CompletedProcess, object]:
    """`prefect deployment run ... --watch`; returns its output and the flow run as the API reports it."""
    out = subprocess.run([str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch"], cwd=served["repo"],
                         env=served["env"], capture_output=True, text=True, timeout=timeout)
    runs = served["client"].read_flow_runs(sort="EXPECTED_START_TIME_DESC")
    manual = [r for r in runs if r.deployment_id == served["deployment"].id and r.state and r.state.is_final()]
    assert manual, out.stdout[-3000:]
    latest = max(manual, key=lambda r: r.end_time)
    return out, latest


def test_deployment_is_registered_with_the_cron_schedule(served):
    d = served["deployment"]
    crons = [s.schedule.cron for s in d.schedules]
    assert crons == [CRON] and all(s.active for s in d.schedules)
    assert d.parameters == {"params_path": "params.yaml", "force": False}
    assert d.entrypoint == "flows.pipeline.rlhf_pipeline"
    assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1   # runs never overlap
    # The scheduler has planned the next nightly run at 03:00 UTC.
    scheduled = wait_for(lambda: [r for r in served["client"].read_flow_runs(sort="EXPECTED_START_TIME_ASC")
                                  if r.deployment_id == d.id and r.state.is_scheduled()], 60, "scheduled runs")
    t = scheduled[0].expected_start_time
    assert (t.hour, t.minute) == (3, 0) and t.utcoffset().total_seconds() == 0


def test_triggered_deployment_run_completes(served):
    t0 = time.time()
    out, flow_run = trigger(served)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Completed" in out.stdout
    assert flow_run.state.is_completed()
    repo = served["repo"]
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["n_prompts"] > 0
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate"}
    print(f"\ndeployment run completed in {time.time() - t0:.0f}s")


def test_failed_run_state_names_the_stage_and_the_error(served):
    """prepare's data folder is missing: the run fails in the first stage; its state message names it and the error.
    (DataError's own text mentions "prepare expects", so the check is on the stage prefix the flow adds.)"""
    repo = served["repo"]
    params = repo / "params.yaml"
    good = params.read_text()
    p = yaml.safe_load(good)
    p["prepare"]["data_dir"] = "no_such_data"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        out, flow_run = trigger(served)
    finally:
        params.write_text(good)
    assert out.returncode != 0 and flow_run.state.is_failed()
    message = flow_run.state.message or ""
    print(f"\nfailed run state message: {message}")
    assert "stage 'prepare' failed" in message and "SourceError" in message and "no_such_data" in message


def test_sigterm_stops_serving_and_pauses_the_schedule(served):
    stop(served["proc"], signal.SIGTERM, wait=60)
    d = served["client"].read_deployment_by_name(DEPLOYMENT)
    assert d.paused or not any(s.active for s in d.schedules)
