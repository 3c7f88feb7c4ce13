"""Prefect task of the `prepare` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="prepare")
def prepare(params_path: str = "params.yaml") -> dict:
    """Validate the raw data in data/ and split it into datasets."""
    result, _ = run_stage("prepare", params_path)
    return result.metrics
