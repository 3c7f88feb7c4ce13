"""The `rlhf_pipeline` Prefect flow: runs the stages in the order dvc.yaml defines, each only when DVC says it is
stale, under one MLflow parent run; a stage that ran is committed to dvc.lock so `dvc status` stays clean. A stage
that params.yaml puts on a Prefect work pool (``orchestration.work_pools``) runs as a flow run of its own on that
pool's worker (flows/stage_flow.py) while this flow waits; the bookkeeping stays here either way."""
from __future__ import annotations

import os
import time

from prefect import flow, get_run_logger

from flows.promote import promote, summary
from flows.stage_flow import deployment_for
from rlhf.config import load_params
from tasks import prefect_server, shutdown, work_pools
from tasks.graph import all_stale_reasons, commit_and_status, configure, stage_order
from tasks.lock import handover, project_lock
from tasks.stage import stage_task
from tasks.tracking import PARENT_ENV, log_stage_seconds, pipeline_run, tag_stages_run


class StageFailed(RuntimeError):
    """A pipeline stage failed; the message (and so the flow run's Prefect state) names the stage and the error."""


@flow(name="rlhf_pipeline")
def rlhf_pipeline(params_path: str = "params.yaml", force: bool = False) -> dict:
    """Run every stale stage (all of them with ``force``); returns {stage: metrics or "skipped"}."""
    with project_lock("rlhf run"):              # already held when `rlhf run` started this flow (re-entrant)
        return _pipeline(params_path, force)


def _pipeline(params_path: str, force: bool) -> dict:
    shutdown.watch_handlers()                    # a SIGTERM through Prefect's handler is recorded too
    log = get_run_logger()
    configure()
    order = stage_order()
    orchestration = load_params(params_path).orchestration
    pools = work_pools.plan(orchestration, order, params_path)        # before any stage: names checked, API shared
    work_pools.require_shared_api(orchestration, temporary=prefect_server.current() is not None)
    results: dict = {}
    with pipeline_run(params_path) as parent:             # continues the parent run of a crashed flow run
        os.environ[PARENT_ENV] = parent.info.run_id
        try:
            # One DVC status for the whole graph; after each stage that runs, one more for the stages after it (in the
            # same repository session as its commit): what a stage's run changes can only make later stages stale.
            stale = {} if force else all_stale_reasons(order)
            # Every pool that a stage from the first one to run on may need: checked now, not after hours of training.
            first = next((i for i, s in enumerate(order) if force or stale[s]), len(order))
            work_pools.check_pools({s: pools[s] for s in order[first:] if s in pools})
            for i, stage in enumerate(order):
                shutdown.check()                         # a stop requested while the last stage finished
                reasons = [] if force else stale[stage]
                if not (force or reasons):
                    log.info("%s: up to date, skipped", stage)
                    results[stage] = "skipped"
                    continue
                log.info("%s: running (%s)", stage, "; ".join(reasons[:3]) or "forced")
                t0 = time.perf_counter()
                try:
                    if stage in pools:
                        results[stage] = _on_pool(stage, pools[stage], params_path, orchestration, parent.info.run_id)
                    else:
                        results[stage] = stage_task.with_options(name=stage)(stage, params_path)
                except Exception as e:
                    log.error("%s: failed: %s: %s", stage, type(e).__name__, e)
                    raise StageFailed(f"stage {stage!r} failed: {type(e).__name__}: {e}") from e
                refreshed = commit_and_status(stage, [] if force else order[i + 1:])
                stale.update(refreshed)
                log_stage_seconds(stage, time.perf_counter() - t0)
        finally:
            os.environ.pop(PARENT_ENV, None)
        shutdown.check()
        tag_stages_run([s for s, r in results.items() if r != "skipped"])
        # Gate the new challengers (a no-op for versions already decided): champion moves only when gates pass.
        log.info("promotion:\n%s", summary(promote(params_path)))
    return results


def _on_pool(stage: str, pool: str, params_path: str, orchestration, parent_run_id: str) -> dict:
    """Run ``stage`` on a worker of ``pool`` under this run's lock (handed over) and wait for it."""
    params = work_pools.parameters(stage, params_path, handover(), parent_run_id, orchestration.launcher(stage))
    return work_pools.remote_stage_task.with_options(name=stage)(
        stage, pool, deployment_for(pool), params, orchestration.start_timeout_s, orchestration.timeout_s)
