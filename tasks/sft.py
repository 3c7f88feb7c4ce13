"""Prefect task of the `sft` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="sft")
def sft(params_path: str = "params.yaml") -> dict:
    """Supervised fine-tuning on the demonstrations."""
    result, _ = run_stage("sft", params_path)
    return result.metrics
