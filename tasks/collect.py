"""Prefect task of the `collect` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="collect")
def collect(params_path: str = "params.yaml") -> dict:
    """Sample K responses per annotation prompt as Label Studio tasks."""
    result, _ = run_stage("collect", params_path)
    return result.metrics
