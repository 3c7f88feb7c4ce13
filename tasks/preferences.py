"""Prefect task of the `preferences` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="preferences")
def preferences(params_path: str = "params.yaml") -> dict:
    """Ingest annotation exports into rankings, pairs and Elo scores."""
    result, _ = run_stage("preferences", params_path)
    return result.metrics
