"""MLflow plumbing for every stage: the embedded default store, one run per stage under the pipeline's parent run,
per-step metrics, metrics files and plot data where dvc.yaml declares them.

Embedded default: ``sqlite:///mlflow.db`` at the project root with artifacts in ``mlartifacts/`` (both git-ignored).
``MLFLOW_TRACKING_URI`` switches to a real server with no code change.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow

EXPERIMENT = os.environ.get("RLHF_EXPERIMENT", "rlhf")
PARENT_ENV = "RLHF_PARENT_RUN_ID"


def setup_tracking(root: str | Path = ".") -> str:
    """Point MLflow at the embedded store unless MLFLOW_TRACKING_URI says otherwise; ensure the experiment."""
    root = Path(root).resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    uri = mlflow.get_tracking_uri()
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        local = uri.startswith("sqlite:") or uri.startswith("file:")
        mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri() if local else None)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class StageLogger:
    """The core's on_log(step, metrics) -> MLflow metrics + one readable progress line (no bar spam in CI logs)."""

    def __init__(self, stage: str, every_s: float = 5.0):
        self.stage, self.every_s, self.last = stage, every_s, 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, step: int, metrics: dict) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if _finite(v) is not None}
        mlflow.log_metrics(clean, step=int(step))
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            shown = " ".join(f"{k}={v:.4g}" for k, v in list(clean.items())[:5])
            print(f"[{self.stage}] step {step} {shown}", file=sys.stderr, end="\r" if self.tty else "\n", flush=True)


def write_metrics(stage: str, metrics: dict) -> Path:
    path = Path("metrics") / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: _finite(v) for k, v in sorted(metrics.items())}, indent=2) + "\n")
    return path


def write_plots(stage: str, plots: dict[str, list[dict]]) -> list[Path]:
    out = []
    for name, rows in plots.items():
        path = Path("plots") / stage / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{k: _finite(v) for k, v in r.items()} for r in rows], indent=1) + "\n")
        out.append(path)
    return out


@contextmanager
def stage_run(stage: str, params: dict):
    """An MLflow run for one stage, nested under the pipeline's parent run when the flow started one."""
    setup_tracking()
    parent = os.environ.get(PARENT_ENV)
    with mlflow.start_run(run_name=stage, parent_run_id=parent or None, nested=bool(parent)) as run:
        mlflow.set_tags({"rlhf.stage": stage, "rlhf.git_commit": git_commit()})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield run


def git_commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
