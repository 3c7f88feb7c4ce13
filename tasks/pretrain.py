"""Prefect task of the `pretrain` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="pretrain")
def pretrain(params_path: str = "params.yaml") -> dict:
    """Train the tokenizer and base model (or take a local checkpoint)."""
    result, _ = run_stage("pretrain", params_path)
    return result.metrics
