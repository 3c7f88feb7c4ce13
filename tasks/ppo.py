"""Prefect task of the `ppo` stage."""
from prefect import task

from tasks.reward import run_and_register


@task(name="ppo")
def ppo(params_path: str = "params.yaml") -> dict:
    """PPO fine-tuning of the policy; registers it as a new challenger version."""
    return run_and_register("ppo", params_path)
