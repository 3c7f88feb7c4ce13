"""Prefect task of the `ppo` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="ppo")
def ppo(params_path: str = "params.yaml") -> dict:
    """PPO fine-tuning of the policy; registers it as a new challenger version."""
    result, _ = run_stage("ppo", params_path)
    return result.metrics
