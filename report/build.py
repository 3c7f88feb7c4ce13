"""One report end to end: read the run's files, ask MLflow, build the page, write it (what `rlhf report` runs)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from report.data import RunFiles, content_key, load_run_files, provenance
from report.mlflow_runs import Tracking, local_store, lookup_tracking
from report.model import Page
from report.render import write_html
from report.sections import build_page


@dataclass
class Written:
    path: Path
    page: Page
    run: RunFiles
    tracking: Tracking | None


def make_report(root: str | Path = ".", out: str | Path = "reports/", *, run_id: str | None = None,
                max_samples: int = 20, tracking_uri: str | None = None, experiment: str | None = None,
                mlflow_ui: str | None = None, use_mlflow: bool = True) -> Written:
    """Write the report of the pipeline run ``run_id`` (default: the latest) of the project at ``root``. MLflow is
    consulted when ``use_mlflow`` and a store is found (``tracking_uri``, $MLFLOW_TRACKING_URI, <root>/mlflow.db)."""
    root = Path(root)
    if not (root / "metrics").is_dir():
        raise FileNotFoundError(f"{root / 'metrics'}: no pipeline outputs here (run `rlhf run` first, or pass --root)")
    run = load_run_files(root, max_samples=max(max_samples, 0))
    tracking = None
    if use_mlflow:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store(root)
        if uri or run_id:
            tracking = lookup_tracking(uri or "", run_id, experiment, mlflow_ui, run.metrics, run.stages)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = build_page(run, tracking, generated, provenance(root))
    return Written(write_html(page, output_path(out, run, tracking)), page, run, tracking)


def output_path(out: str | Path, run: RunFiles, tracking: Tracking | None) -> Path:
    """``out`` itself when it names an .html file, else ``out/rlhf-report-<pipeline run id>.html`` (without a run
    id, a key of the metrics: the same outputs give the same file)."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        return out
    run_id = tracking.parent_run_id if tracking and tracking.parent_run_id else None
    return out / f"rlhf-report-{run_id or 'local-' + content_key(run)}.html"
