"""Stages on their own infrastructure, for real: a `prefect server start` on a free port, a process work pool, and a
`prefect worker start` serving it, all subprocesses. `rlhf run` with ``orchestration.work_pools: {preferences: POOL}``
runs the whole tiny pipeline with that one stage submitted to the pool: the worker runs it (a COMPLETED flow run of
``rlhf_stage`` on that pool, under the lock the pipeline handed over, as a child of the pipeline's MLflow run), the
stages after it consume its outputs, and `dvc status` is clean. Then the same stage is run again in `rlhf run`'s own
process (outputs removed, no pool): dvc.lock and the stage's metrics come out exactly the same. A stage failing on
the worker fails the pipeline with the stage's name and the remote run's state message; a missing pool and a pool
without a worker are refused before anything is submitted.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tasks.prefect_server import _free_port, _prefect_command
from tests.pipeline.test_resume import make_project, project_env, run, without_timing

pytestmark = pytest.mark.slow

POOL = "rlhf-cpu"
STAGE = "preferences"
LAUNCHER = "accelerate launch --cpu --num_processes 1"      # what a GPU pool's stage would run under, on one CPU


def wait_until(what: str, ok, timeout: float = 120, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def healthy(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """A whole process group: SIGINT first (`prefect worker start` ignores the first SIGTERM), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A real Prefect server (its own PREFECT_HOME) with a process work pool served by a real worker."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**project_env(home), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    procs = []
    try:
        server_log = home / "server.log"
        procs.append(subprocess.Popen(
            [*_prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
             "--no-services", "--analytics-off"], env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True))
        wait_until("the Prefect server answers", lambda: healthy(url), log=server_log)
        env["PREFECT_API_URL"] = url
        run([*_prefect_command(), "work-pool", "create", POOL, "--type", "process"], home, env)
        worker_log = home / "worker.log"
        procs.append(subprocess.Popen([*_prefect_command(), "worker", "start", "--pool", POOL, "--name", "test-worker"],
                                      env=env, stdout=worker_log.open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=home))
        wait_until("the worker is online", lambda: online_workers(url, POOL), log=worker_log)
        yield {"url": url, "env": env, "worker_log": worker_log}
    finally:
        for p in reversed(procs):
            stop(p)


def client_call(url: str, fn):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            return fn(client)


def online_workers(url: str, pool: str) -> list:
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    return client_call(url, lambda c: c.read_workers_for_work_pool(
        pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))))


def stage_flow_runs(url: str) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    return client_call(url, lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rlhf_stage"]))))


def set_orchestration(repo: Path, **section) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["orchestration"] = {**params.get("orchestration", {}), **section}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_clean(repo: Path, env: dict) -> None:
    out = run(["dvc", "status", "--json"], repo, env)
    assert json.loads(out.stdout or "{}") == {}, out.stdout


@pytest.fixture(scope="module")
def on_pool(api, tmp_path_factory):
    """The tiny pipeline run by `rlhf run` with one stage on the work pool."""
    repo = make_project(tmp_path_factory.mktemp("work_pool") / "project",
                        {"orchestration": {"work_pools": {STAGE: POOL}, "start_timeout_s": 120}})
    env = {**project_env(repo), "PREFECT_API_URL": api["url"], "PREFECT_HOME": api["env"]["PREFECT_HOME"],
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}         # whatever an earlier test left set
    t0 = time.monotonic()
    out = run(["rlhf", "run"], repo, env, timeout=900)
    print(f"rlhf run with {STAGE} on {POOL}: {time.monotonic() - t0:.0f} s")
    return {"repo": repo, "env": env, "out": out, "lock": (repo / "dvc.lock").read_text(),
            "metrics": json.loads((repo / "metrics" / f"{STAGE}.json").read_text())}


def test_the_stage_ran_on_the_worker_and_the_pipeline_went_on(api, on_pool):
    runs = stage_flow_runs(api["url"])
    assert [(r.name, r.work_pool_name, r.state.type.value) for r in runs] == [(STAGE, POOL, "COMPLETED")]
    assert runs[0].parameters["stage"] == STAGE and runs[0].parent_task_run_id is not None   # linked to the pipeline
    assert "stages run: prepare, pretrain, sft, collect, annotate, preferences, reward, ppo, evaluate" in \
        on_pool["out"].stdout
    assert not any((on_pool["repo"] / ".rlhf" / "stage-results").iterdir())     # the hand-back file was consumed
    dvc_clean(on_pool["repo"], on_pool["env"])


def test_the_remote_stage_is_a_child_of_the_pipelines_mlflow_run(on_pool):
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{on_pool['repo'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rlhf")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs[STAGE].info.status == "FINISHED"
    assert runs[STAGE].data.tags["mlflow.parentRunId"] == runs["rlhf_pipeline"].info.run_id


def test_the_same_stage_in_process_gives_the_same_result(on_pool):
    repo, env = on_pool["repo"], {k: v for k, v in on_pool["env"].items() if k != "PREFECT_API_URL"}
    shutil.rmtree(repo / "artifacts" / "preferences")
    (repo / "metrics" / f"{STAGE}.json").unlink()
    set_orchestration(repo, work_pools={})
    out = run(["rlhf", "run"], repo, env, timeout=600)         # its own temporary Prefect server: no pool involved
    assert f"stages run: {STAGE}\n" in out.stdout
    assert (repo / "dvc.lock").read_text() == on_pool["lock"]          # same output hashes, same deps
    assert without_timing(json.loads((repo / "metrics" / f"{STAGE}.json").read_text())) == \
        without_timing(on_pool["metrics"])
    dvc_clean(repo, env)


def test_a_stage_failing_on_the_worker_fails_the_pipeline_naming_it(api, on_pool):
    repo, env = on_pool["repo"], on_pool["env"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[STAGE]["inputs"] = ["artifacts/annotations/missing.json"]
    params["orchestration"]["work_pools"] = {STAGE: POOL}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run(["rlhf", "run"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and line.startswith(f"rlhf: error: StageFailed: stage '{STAGE}' failed: WorkPoolError: "
                                                   f"flow run '{STAGE}'"), out.stderr[-3000:]
    assert f"on work pool '{POOL}' ended FAILED: " in line and "missing.json" in line, line
    failed = [r for r in stage_flow_runs(api["url"]) if r.state.type.value == "FAILED"]
    assert len(failed) == 1 and failed[0].work_pool_name == POOL


def test_a_stage_under_a_launcher_on_the_worker_gives_the_same_result(api, on_pool):
    """`<launcher> rlhf stage NAME` on the worker: the launched process is covered by the handed-over lock (else
    `rlhf stage` would refuse: `rlhf run` holds the project), and the result is the in-process one."""
    repo, env = on_pool["repo"], on_pool["env"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[STAGE]["inputs"] = ["artifacts/annotations/export.json"]              # as before the failure
    params["orchestration"].update(work_pools={STAGE: POOL}, launchers={STAGE: LAUNCHER})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / "artifacts" / "preferences")
    out = run(["rlhf", "run"], repo, env, timeout=600)
    assert f"stages run: {STAGE}\n" in out.stdout
    assert (repo / "dvc.lock").read_text() == on_pool["lock"]
    assert without_timing(json.loads((repo / "metrics" / f"{STAGE}.json").read_text())) == \
        without_timing(on_pool["metrics"])
    launched = [r for r in stage_flow_runs(api["url"]) if r.parameters.get("launcher")]
    assert [(r.work_pool_name, r.state.type.value, r.parameters["launcher"]) for r in launched] == [
        (POOL, "COMPLETED", LAUNCHER.split())]
    dvc_clean(repo, env)


def test_a_missing_pool_or_one_without_a_worker_is_refused_at_once(api):
    from tasks.work_pools import WorkPoolError, check_pool
    from prefect.settings import PREFECT_API_URL, temporary_settings
    run([*_prefect_command(), "work-pool", "create", "idle", "--type", "process"], Path.cwd(), api["env"])
    with temporary_settings(updates={PREFECT_API_URL: api["url"]}):
        with pytest.raises(WorkPoolError, match=r"^work pool 'nope' \(orchestration.work_pools.sft\) does not exist "
                                                r"on .*prefect work-pool create nope --type process"):
            check_pool("nope", "sft")
        with pytest.raises(WorkPoolError, match=r"^work pool 'idle' \(orchestration.work_pools.ppo\) has no worker "
                                                r"online: .*prefect worker start --pool idle"):
            check_pool("idle", "ppo")
        check_pool(POOL, STAGE)


def test_a_pool_that_cannot_run_its_stage_stops_the_flow_before_any_stage(on_pool):
    repo, env = on_pool["repo"], on_pool["env"]
    set_orchestration(repo, work_pools={"evaluate": "nope"}, launchers={})
    before = (repo / "metrics" / "prepare.json").stat().st_mtime_ns
    out = subprocess.run(["rlhf", "run", "--force"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "rlhf: error: WorkPoolError: work pool 'nope' (orchestration.work_pools.evaluate) does not exist on "
        f"{env['PREFECT_API_URL']}: create it"), out.stderr[-3000:]
    assert (repo / "metrics" / "prepare.json").stat().st_mtime_ns == before        # nothing ran
    set_orchestration(repo, work_pools={})


def test_a_remote_stage_past_its_timeout_is_cancelled_on_the_worker(api, on_pool, monkeypatch):
    """Last (it stops a stage halfway): the wait gives up after ``timeout_s``, the worker stops the run (CANCELLED),
    and the project lock it was handed is free again."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.stage_flow import deployment_for
    from tasks.lock import handover, project_lock
    from tasks.work_pools import WorkPoolError, parameters, remote_stage_task
    repo = on_pool["repo"]
    monkeypatch.chdir(repo)
    with temporary_settings(updates={PREFECT_API_URL: api["url"]}), project_lock("test", repo):
        params = parameters(STAGE, "params.yaml", handover(repo), "", [])
        with pytest.raises(WorkPoolError, match=rf"^stage '{STAGE}' on work pool '{POOL}' still ran after 1 s "
                                                r"\(orchestration.timeout_s\); the run was cancelled$"):
            remote_stage_task.fn(STAGE, POOL, deployment_for(POOL), params, 120, 1)
    run_id = [r for r in stage_flow_runs(api["url"]) if r.parameters.get("result_file") == params["result_file"]][0].id
    wait_until("the worker cancels the run", lambda: client_call(
        api["url"], lambda c: c.read_flow_run(run_id)).state.type.value == "CANCELLED", timeout=60,
        log=api["worker_log"])
    with project_lock("after", repo):                      # the stage's hold on the project went with it
        pass
