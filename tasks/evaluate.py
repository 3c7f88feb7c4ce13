"""Prefect task of the `evaluate` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    """Compare the SFT and PPO policies on held-out prompts."""
    result, _ = run_stage("evaluate", params_path)
    return result.metrics
