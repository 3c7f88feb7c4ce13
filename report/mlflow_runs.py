"""The MLflow side of the report: the pipeline run (given, or the latest), one run per stage (its child, or for a
stage that run skipped, the earlier run its outputs come from), registered versions and the promotion decision.

Pure data (``Tracking``), no HTML. ``lookup_tracking`` never raises: problems become notes on the page.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PIPELINE_RUN = "rlhf_pipeline"          # the parent run's name (flows/pipeline.py)
LOCAL_UI = "http://127.0.0.1:5000"


@dataclass
class StageRun:
    """One stage's MLflow run as the report shows it."""
    run_id: str
    url: str | None = None
    in_parent: bool = True          # False: the stage was skipped in this pipeline run; this is the run it came from
    matches_files: bool | None = None   # its final/* metrics equal metrics/<stage>.json (None: nothing to compare)
    seconds: float | None = None
    registered: list[str] = field(default_factory=list)   # "rlhf-policy v3 (challenger)"
    origin: str = ""                # overrides the "run of" text (e.g. a run outside the pipeline run)


@dataclass
class Tracking:
    """What MLflow knows about the pipeline run."""
    tracking_uri: str
    parent_run_id: str | None = None
    parent_url: str | None = None
    experiment_id: str | None = None
    stages: dict[str, StageRun] = field(default_factory=dict)
    ui_hint: str = ""
    notes: list[str] = field(default_factory=list)
    promotion: dict | None = None               # promotion/report.json of the run's 'promote' MLflow run
    promotion_run_id: str | None = None
    promotion_url: str | None = None


def local_store(root: Path) -> str | None:
    db = root / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.exists() else None


def ui_base(uri: str, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def lookup_tracking(uri: str, run_id: str | None, experiment: str | None, ui: str | None, files: dict[str, dict],
                    stages: list[str]) -> Tracking:
    """The pipeline run ``run_id`` (default: the latest) and each of ``stages``' runs; ``files`` are the metrics
    files, to tell which run wrote them."""
    tracking = Tracking(tracking_uri=uri or "(none)", parent_run_id=run_id)
    if not uri:
        tracking.notes.append("no MLflow tracking store found: run ids not checked")
        return tracking
    # A remote server that does not answer must not hang the report (MLflow retries for minutes by default).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    base = ui_base(uri, ui)
    if not uri.startswith(("http://", "https://")):
        tracking.ui_hint = f"Links open once `mlflow ui --backend-store-uri {uri}` serves {base}."
    try:
        _fill(tracking, uri, run_id, experiment or os.environ.get("RLHF_EXPERIMENT", "rlhf"), base, files, stages)
    except Exception as e:  # an unreachable or foreign store: the file-based report is still useful
        tracking.notes.append(f"MLflow lookup failed: {type(e).__name__}: {str(e)[:300]}")
    return tracking


def _fill(tracking: Tracking, uri: str, run_id: str | None, experiment: str, base: str, files: dict,
          stages: list[str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id, parent = _parent_run(client, tracking, run_id, experiment, uri)
    if exp_id is None:
        return
    tracking.experiment_id = exp_id
    url = lambda rid: f"{base}/#/experiments/{exp_id}/runs/{rid}"  # noqa: E731
    children = {}
    if parent is not None:
        tracking.parent_run_id, tracking.parent_url = parent.info.run_id, url(parent.info.run_id)
        for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100):
            children.setdefault(r.data.tags.get("rlhf.stage", r.info.run_name), r)
    for stage in stages:
        found = _stage_run(client, exp_id, parent, children.get(stage), stage, files.get(stage))
        if found is not None:
            r, in_parent, match, origin = found
            seconds = parent.data.metrics.get(f"seconds/{stage}") if parent is not None and in_parent else None
            tracking.stages[stage] = StageRun(r.info.run_id, url(r.info.run_id), in_parent, match, seconds,
                                              _registered(client, r.info.run_id), origin)
    _find_promotion(client, tracking, exp_id, parent, url)


def _parent_run(client, tracking: Tracking, run_id: str | None, experiment: str, uri: str):
    """(experiment id, the pipeline run or None); (None, None) when the experiment does not exist."""
    if run_id:
        parent = client.get_run(run_id)
        if parent.data.tags.get("mlflow.parentRunId"):            # a stage run was given: use its pipeline run
            tracking.notes.append(f"{run_id} is the '{parent.info.run_name}' stage run; showing its pipeline run")
            parent = client.get_run(parent.data.tags["mlflow.parentRunId"])
        return parent.info.experiment_id, parent
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        tracking.notes.append(f"no MLflow experiment '{experiment}' in {uri}")
        return None, None
    found = client.search_runs([exp.experiment_id], f"attributes.run_name = '{PIPELINE_RUN}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        tracking.notes.append("no pipeline run recorded: showing the latest run of each stage")
    return exp.experiment_id, (found[0] if found else None)


def _stage_run(client, exp_id: str, parent, child, stage: str, file_metrics: dict | None):
    """(run, ran in the pipeline run, matches the metrics file, origin text) for one stage, or None."""
    r, in_parent = child, True
    if r is None:                    # skipped in this pipeline run: that stage's latest earlier run
        before = f" and attributes.start_time <= {parent.info.start_time}" if parent is not None else ""
        found = client.search_runs([exp_id], f"tags.`rlhf.stage` = '{stage}'{before}",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        r, in_parent = (found[0] if found else None), parent is None
    if r is None:
        return None
    match = matches(r.data.metrics, file_metrics)
    if match is False:      # the files were rewritten since (dvc repro, rlhf stage): find the run that wrote them
        later = next((x for x in client.search_runs([exp_id], f"tags.`rlhf.stage` = '{stage}'",
                                                    order_by=["attributes.start_time DESC"], max_results=20)
                      if matches(x.data.metrics, file_metrics)), None)
        if later is not None:
            return later, False, True, "another run (not of this pipeline run)"
    return r, in_parent, match, ""


def _find_promotion(client, tracking: Tracking, exp_id: str, parent, url: Callable[[str], str]) -> None:
    """The promotion decided for this pipeline run (flows/promote.py logs ``promotion/report.json`` on a run named
    'promote'): the parent's 'promote' child, else the first 'promote' run started after the parent."""
    query = "attributes.run_name = 'promote'"
    if parent is not None:
        query += f" and attributes.start_time >= {parent.info.start_time}"
    found = client.search_runs([exp_id], query, order_by=["attributes.start_time ASC"], max_results=20)
    if not found:
        return
    pid = parent.info.run_id if parent is not None else None
    run = next((r for r in found if r.data.tags.get("mlflow.parentRunId") == pid), None) if pid else None
    run = run or (found[0] if pid else found[-1])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, "promotion/report.json", tmp)
            tracking.promotion = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as e:  # no report artifact on that run
        tracking.notes.append(f"promote run {run.info.run_id}: no readable promotion/report.json ({type(e).__name__})")
        return
    tracking.promotion_run_id, tracking.promotion_url = run.info.run_id, url(run.info.run_id)


def matches(run_metrics: dict, file_metrics: dict | None) -> bool | None:
    """Do the run's final/* metrics equal metrics/<stage>.json? None when no key can be compared."""
    if not file_metrics:
        return None
    pairs = [(float(v), run_metrics[f"final/{k}"]) for k, v in file_metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and f"final/{k}" in run_metrics]
    if not pairs:
        return None
    return all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in pairs)


def _registered(client, run_id: str) -> list[str]:
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # registry not available on this store
        return []
    out = []
    for v in versions:
        try:  # search results may omit aliases; the version itself has them
            aliases = ", ".join(client.get_model_version(v.name, v.version).aliases or [])
        except Exception:
            aliases = ""
        out.append(f"{v.name} v{v.version}" + (f" ({aliases})" if aliases else ""))
    return sorted(out)
