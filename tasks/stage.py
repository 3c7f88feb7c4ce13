"""The one way a stage runs, whoever starts it (dvc repro, the Prefect flow, `rlhf stage NAME`): load its config
section, call the core stage (``rlhf.stages.<name>.run``), write metrics and plots where dvc.yaml declares them, log
everything to MLflow. One generic task serves every stage, so a new stage needs no code here."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import mlflow
from prefect import task

from rlhf.config import flatten, load_params, to_dict
from rlhf.distributed import env_world, is_main_process
from rlhf.finite import NonFiniteError, finite_or_none
from rlhf.stages.common import StageResult
from tasks import shutdown
from tasks.figures import log_figures
from tasks.graph import declared_stages
from tasks.lineage import log_lineage
from tasks.lock import project_lock
from tasks.registry import POLICY_NAME, REWARD_NAME, log_and_register
from tasks.tracking import StageLogger, stage_run, write_metrics, write_plots

# Stages whose model output becomes a new registered version (alias "challenger").
REGISTERS = {"reward": (REWARD_NAME, "reward"), "ppo": (POLICY_NAME, "policy")}
# Stages whose runs carry MLflow's system metrics (CPU, memory; GPU where nvidia-ml-py is installed).
TRAINING = {"pretrain", "sft", "reward", "ppo"}


def stage_module_exists(stage: str) -> bool:
    """A stage is a core module rlhf/stages/<name>.py with a ``run`` (dvc.yaml runs it as `rlhf stage <name>`)."""
    return stage.isidentifier() and importlib.util.find_spec(f"rlhf.stages.{stage}") is not None and hasattr(
        importlib.import_module(f"rlhf.stages.{stage}"), "run")


def run_stage(stage: str, params_path: str = "params.yaml") -> tuple[StageResult, str]:
    """Run one stage in this process; returns its result and MLflow run id."""
    if not stage_module_exists(stage):
        known = ", ".join(declared_stages()) if Path("dvc.yaml").is_file() else "see rlhf/stages/"
        raise ValueError(f"unknown stage {stage!r} (stages: {known})")
    cfg = load_params(params_path).section(stage)
    with project_lock(f"rlhf stage {stage}"):
        return _run(stage, cfg, importlib.import_module(f"rlhf.stages.{stage}"))


def _run(stage: str, cfg, module) -> tuple[StageResult, str]:
    if not is_main_process():
        # Another rank of a torchrun / accelerate launch: compute only; rank 0 tracks, writes and registers.
        return module.run(cfg, None), ""
    with stage_run(stage, flatten(to_dict(cfg)), {"rlhf.world_size": str(env_world().world_size)},
                   system_metrics=stage in TRAINING) as run:
        logger = StageLogger(stage, cfg)
        try:
            result: StageResult = module.run(cfg, logger)
        except NonFiniteError as e:
            raise NonFiniteError(f"{stage}: {e}; the stage stopped: nothing was saved or registered") from None
        finally:
            logger.close()
        shutdown.check()                               # asked to stop: nothing is written or registered
        bad = {k: v for k, v in result.metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and finite_or_none(v) is None}
        if bad:                                        # before anything is written to metrics/ or registered
            raise NonFiniteError(f"{stage}: final metrics are not finite: "
                                 + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) + "; nothing registered")
        mlflow.log_metrics({f"final/{k}": float(v) for k, v in result.metrics.items()
                            if isinstance(v, (int, float))})
        mlflow.log_artifact(str(write_metrics(stage, result.metrics)), "metrics")
        for p in write_plots(stage, result.plots):
            mlflow.log_artifact(str(p), "plots")
        log_figures(stage, result)
        log_lineage(stage, result)
        if stage in REGISTERS:
            name, kind = REGISTERS[stage]
            result.metrics["registered_version"] = float(
                log_and_register(result.outputs["model"], name, kind, {"stage": stage, "run_id": run.info.run_id}))
        return result, run.info.run_id


@task(name="stage")
def stage_task(stage: str, params_path: str = "params.yaml") -> dict:
    """One pipeline stage as a Prefect task (the flow names each run after its stage); returns its final metrics."""
    result, _ = run_stage(stage, params_path)
    return result.metrics
