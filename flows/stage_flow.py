"""The ``rlhf_stage`` flow: one pipeline stage as a flow run of its own, which a Prefect work pool's worker runs
where params.yaml's ``orchestration.work_pools`` puts that stage (the pipeline flow submits it and waits:
tasks/work_pools.py). The stage is the same task the pipeline runs in-process (``stage_task``), or the same stage
under a launcher (``orchestration.launchers``); the pipeline's process keeps the DVC bookkeeping.

Registered per work pool as the deployment ``rlhf_stage/<pool>`` (``deployment_for``), by module path: a process
worker started in the project's environment imports this module from the installed package, with no image and no
code storage (Prefect: ``Flow.to_deployment(entrypoint_type=EntrypointType.MODULE_PATH)``, then ``.apply()``).
"""
from __future__ import annotations

from prefect import flow

from tasks.work_pools import FLOW_NAME


@flow(name=FLOW_NAME)
def rlhf_stage(stage: str, params_path: str, project_dir: str, lock: dict, parent_run_id: str = "",
               launcher: list[str] | None = None, env: dict[str, str] | None = None, result_file: str = "") -> dict:
    """Run ``stage`` of the project in ``project_dir`` under the lock its pipeline run handed over (``lock``), as a
    child of MLflow run ``parent_run_id``; returns its final metrics (also written to ``result_file``)."""
    from tasks import remote_stage
    with remote_stage.handed_over(stage, project_dir, lock, parent_run_id, env or {}):
        if launcher:
            metrics = remote_stage.launched_stage_task.with_options(name=stage)(stage, params_path, launcher)
        else:
            from tasks.stage import stage_task
            metrics = stage_task.with_options(name=stage)(stage, params_path)
        if result_file:
            remote_stage.write_result(result_file, metrics)
    return metrics


def deployment_for(pool: str) -> str:
    """Register (or update) the deployment of ``rlhf_stage`` on work pool ``pool``; returns its name for
    ``run_deployment`` (``rlhf_stage/<pool>``)."""
    from prefect.deployments.runner import EntrypointType
    rlhf_stage.to_deployment(
        name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH, tags=["rlhf"],
        description="One rlhf_pipeline stage on this work pool (flows/stage_flow.py); submitted by the pipeline",
    ).apply()
    return f"{FLOW_NAME}/{pool}"
