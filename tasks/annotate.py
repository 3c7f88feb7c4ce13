"""Prefect task of the `annotate` stage."""
from prefect import task

from tasks.stage import run_stage


@task(name="annotate")
def annotate(params_path: str = "params.yaml") -> dict:
    """Simulated annotators rank the collected responses (demo campaign)."""
    result, _ = run_stage("annotate", params_path)
    return result.metrics
