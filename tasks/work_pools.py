"""Stages on their own infrastructure, the flow's side: a stage that params.yaml's ``orchestration.work_pools``
assigns to a Prefect work pool is submitted as a flow run of the ``rlhf_stage`` deployment on that pool
(flows/stage_flow.py) and waited for; the pipeline flow keeps the DVC bookkeeping (commit to dvc.lock, status of the
stages after it), exactly as for a stage run in-process.

Prefect's documented pieces (docs.prefect.io, v3: "Deploy flows to work pools", "Run deployments"): a deployment
registered with ``Flow.to_deployment(..., work_pool_name=...).apply()`` (a module-path entrypoint, so a process
worker imports the installed code: no image, no storage); ``prefect.deployments.run_deployment(timeout=0)`` creates
the flow run (linked to the pipeline's task run as a subflow) and returns at once; the wait is ours, so a stop of
`rlhf run`, a run no worker starts and a run past ``timeout_s`` each end with one line, and the remote run is
cancelled (state Cancelling, which its worker acts on) instead of being left behind.

Workers must reach the same Prefect API as the flow (``PREFECT_API_URL``; never the temporary server `rlhf run`
starts for itself) and see the project folder at the same path (a shared file system): the stage reads its inputs
and writes its outputs there, and hands its metrics back through a file there.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from prefect import task

from tasks import shutdown

FLOW_NAME = "rlhf_stage"
POLL_S = 1.0
RESULTS_DIR = Path(".rlhf") / "stage-results"
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "RLHF_EXPERIMENT")     # never credentials: parameters are stored by Prefect


class WorkPoolError(RuntimeError):
    """A work pool cannot run a stage (missing, paused, no worker, no shared server) or a remote run did not finish
    well; the message is one line naming the stage, the pool and what to do."""


def plan(orchestration, stages: list[str], params_path: str) -> dict[str, str]:
    """{stage: work pool} for the stages of dvc.yaml that params put on a pool; a name that is no stage of dvc.yaml
    is a ConfigError naming the key (checked where the flow runs, before any stage; a launcher's stage is one of
    these, rlhf/config_orchestration.py)."""
    from rlhf.config import ConfigError
    for name in orchestration.work_pools:
        if name not in stages:
            raise ConfigError(f"{params_path}: orchestration.work_pools.{name}: not a stage of dvc.yaml "
                              f"(stages: {', '.join(stages)})")
    return dict(orchestration.work_pools)


def require_shared_api(orchestration, temporary: bool = False) -> None:
    """Work pools need a Prefect server their workers reach: fail (one line) when there is none, or when the run
    uses a temporary server of its own (``temporary``: the one `rlhf run` starts without PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL
    if orchestration.work_pools and (temporary or not PREFECT_API_URL.value()):
        pools = ", ".join(f"{s} -> {p}" for s, p in orchestration.work_pools.items())
        raise WorkPoolError(f"orchestration.work_pools ({pools}) needs a Prefect server its workers reach too: set "
                            f"PREFECT_API_URL (e.g. `prefect server start` on a shared host, then export "
                            f"PREFECT_API_URL=http://HOST:4200/api), or empty orchestration.work_pools to run every "
                            f"stage in this process")


def check_pool(pool: str, stage: str) -> None:
    """The pool exists on the configured API, is not paused and has a worker online (a push or managed pool has
    none to check); otherwise one line saying what to do, before anything is submitted."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    where = f"work pool {pool!r} (orchestration.work_pools.{stage})"
    with get_client(sync_client=True) as client:
        try:
            wp = client.read_work_pool(pool)
        except ObjectNotFound:
            raise WorkPoolError(f"{where} does not exist on {PREFECT_API_URL.value()}: create it "
                                f"(`prefect work-pool create {pool} --type process`) and start a worker "
                                f"(`prefect worker start --pool {pool}`)") from None
        if wp.is_paused:
            raise WorkPoolError(f"{where} is paused: `prefect work-pool resume {pool}`")
        if wp.is_push_pool or wp.is_managed_pool:
            return
        online = client.read_workers_for_work_pool(
            pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    if not online:
        raise WorkPoolError(f"{where} has no worker online: start one where the stage should run "
                            f"(`prefect worker start --pool {pool}`, in the project's environment)")


def check_pools(pools: dict[str, str]) -> None:
    """``check_pool`` once per pool of {stage: pool} (the message names the first stage that uses it)."""
    seen: set[str] = set()
    for stage, pool in pools.items():
        if pool not in seen:
            seen.add(pool)
            check_pool(pool, stage)


def parameters(stage: str, params_path: str, grant: dict, parent_run_id: str, launcher: list[str]) -> dict:
    """The remote run's parameters: what it needs to run the stage as this process would, in this project."""
    project = Path.cwd().resolve()
    return {"stage": stage, "params_path": str(Path(params_path).resolve()), "project_dir": str(project),
            "lock": grant, "parent_run_id": parent_run_id, "launcher": launcher,
            "env": {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)},
            "result_file": str(project / RESULTS_DIR / f"{stage}-{uuid.uuid4().hex}.json")}


@task(name="stage")
def remote_stage_task(stage: str, pool: str, deployment: str, params: dict, start_timeout_s: int,
                      timeout_s: int) -> dict:
    """One pipeline stage run by a worker of ``pool`` (the flow names each run after its stage); returns its final
    metrics, as the in-process stage task does."""
    from prefect.deployments import run_deployment
    check_pool(pool, stage)
    run = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=stage, tags=["rlhf", stage])
    final = wait(run.id, stage, pool, start_timeout_s, timeout_s)
    if not final.state.is_completed():
        raise WorkPoolError(f"flow run {final.name!r} ({final.id}) on work pool {pool!r} ended {final.state.type.value}"
                            f": {final.state.message or final.state.name}")
    return read_result(Path(params["result_file"]), final)


def wait(run_id, stage: str, pool: str, start_timeout_s: int, timeout_s: int):
    """Poll the remote run until it is final; cancel it (and raise) when no worker starts it within
    ``start_timeout_s``, when it runs past ``timeout_s`` (0 = no limit), or when this run is asked to stop."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    t0, done = time.monotonic(), None
    with get_client(sync_client=True) as client:
        try:
            while True:
                shutdown.check()                       # SIGTERM / SIGINT to `rlhf run`: stop, cancel the remote run
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    done = run
                    return run
                waited = time.monotonic() - t0
                if run.state is None or run.state.type in (StateType.SCHEDULED, StateType.PENDING):
                    if waited > start_timeout_s:
                        raise WorkPoolError(f"no worker of work pool {pool!r} started stage {stage!r} within "
                                            f"{start_timeout_s} s (orchestration.start_timeout_s); the run was "
                                            f"cancelled: is a worker of {pool!r} running and free?")
                elif timeout_s and waited > timeout_s:
                    raise WorkPoolError(f"stage {stage!r} on work pool {pool!r} still ran after {timeout_s} s "
                                        f"(orchestration.timeout_s); the run was cancelled")
                time.sleep(POLL_S)
        finally:
            if done is None:
                cancel(client, run_id)


def cancel(client, run_id) -> None:
    """Ask the worker to stop the run (Prefect's own `prefect flow-run cancel`: state Cancelling); a run no worker
    has picked up is cancelled outright. Best effort: the caller is already failing."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling
    try:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return
        waiting = run.state is None or run.state.type == StateType.SCHEDULED
        client.set_flow_run_state(run_id, Cancelled() if waiting else Cancelling(), force=True)
    except Exception:                                  # noqa: BLE001 - the server may be what failed
        pass


def read_result(path: Path, run) -> dict:
    """The metrics the remote stage wrote for this run (then the file is removed)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkPoolError(f"flow run {run.name!r} ({run.id}) completed but its metrics are not readable at {path} "
                            f"({type(e).__name__}): do the worker and this run see the same project folder?") from None
    path.unlink(missing_ok=True)
    return metrics
