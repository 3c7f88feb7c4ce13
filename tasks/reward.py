"""Prefect task of the `reward` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="reward")
def reward(params_path: str = "params.yaml") -> dict:
    """Train the reward model and register it as a new challenger version."""
    result, _ = run_stage("reward", params_path)
    return result.metrics
