"""Prefect task of the `reward` stage."""
from prefect import task

from tasks.registry import REWARD_NAME, log_and_register
from tasks.stage import run_stage


@task(name="reward")
def reward(params_path: str = "params.yaml") -> dict:
    """Train the reward model and register it as a new challenger version."""
    return run_and_register("reward", params_path)


def run_and_register(stage: str, params_path: str) -> dict:
    import mlflow

    result, run_id = run_stage(stage, params_path)
    name, kind = (REWARD_NAME, "reward") if stage == "reward" else ("rlhf-policy", "policy")
    with mlflow.start_run(run_id=run_id):
        result.metrics["registered_version"] = float(
            log_and_register(result.outputs["model"], name, kind, {"stage": stage, **result.metrics}))
    return result.metrics
