"""`rlhf report`: one self-contained HTML page per pipeline run (flows/report.py renders it).

The page is built from the files in the working tree; MLflow adds the run ids, links and registered versions when
``--run-id`` is given or a tracking store is found (MLFLOW_TRACKING_URI, else ./mlflow.db). Nothing heavy is imported
at module level: every `rlhf` invocation imports this module to register the subcommand.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PIPELINE_RUN = "rlhf_pipeline"
LOCAL_UI = "http://127.0.0.1:5000"


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="write an HTML report of the last pipeline run (or of --run-id)",
                              description="One self-contained HTML page (figures embedded) from metrics/, plots/ "
                                          "and artifacts/, with MLflow run ids and links when a store is reachable.")
    p.add_argument("--out", default="reports/", help="folder for the page, or a file name ending in .html "
                                                     "(default: reports/)")
    p.add_argument("--run-id", default=None, help="the MLflow run id of the pipeline run (parent run "
                                                  f"'{PIPELINE_RUN}'); default: the latest one")
    p.add_argument("--root", default=".", help="project folder holding metrics/, plots/, artifacts/ (default: .)")
    p.add_argument("--samples", type=int, default=20, help="SFT vs PPO sample rows in the table (default: 20)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <root>/mlflow.db if it exists)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: $RLHF_EXPERIMENT or 'rlhf')")
    p.add_argument("--mlflow-ui", default=None, help=f"base URL of the MLflow UI for links (default: the tracking URI "
                                                     f"when it is http(s), else {LOCAL_UI})")
    p.add_argument("--no-mlflow", action="store_true", help="do not consult MLflow")
    p.set_defaults(fn=cmd_report)


def cmd_report(args) -> int:
    from datetime import datetime, timezone

    from flows.report import load_run_files, write_report

    root = Path(args.root)
    if not (root / "metrics").is_dir():
        raise FileNotFoundError(f"{root / 'metrics'}: no pipeline outputs here (run `rlhf run` first, or pass --root)")
    run = load_run_files(root, max_samples=max(args.samples, 0))
    tracking = None
    if not args.no_mlflow:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _local_store(root)
        if uri or args.run_id:
            tracking = lookup_tracking(uri or "", args.run_id, args.experiment, args.mlflow_ui, run.metrics)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    path = write_report(run, args.out, tracking, generated)
    n_img = path.read_text(encoding="utf-8").count("<img ")
    print(f"report: {path} ({n_img} figures, {len(run.samples)} of {run.samples_total} samples)")
    if tracking is not None:
        print(f"MLflow: pipeline run {tracking.parent_run_id or '-'} ({tracking.tracking_uri})")
        for note in tracking.notes:
            print(f"  note: {note}", file=sys.stderr)
    for note in run.notes:
        print(f"  note: {note}", file=sys.stderr)
    return 0


def _local_store(root: Path) -> str | None:
    db = root / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.exists() else None


def ui_base(uri: str, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def lookup_tracking(uri: str, run_id: str | None, experiment: str | None, ui: str | None, files: dict):
    """The pipeline run (``run_id`` or the latest), one MLflow run per stage (its child, or for a stage that run
    skipped, that stage's latest earlier run) and registered versions. Never raises: problems become notes."""
    from flows.report import Tracking
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
        _fill(tracking, uri, run_id, experiment or os.environ.get("RLHF_EXPERIMENT", "rlhf"), base, files)
    except Exception as e:  # an unreachable or foreign store: the file-based report is still useful
        tracking.notes.append(f"MLflow lookup failed: {type(e).__name__}: {str(e)[:300]}")
    return tracking


def _fill(tracking, uri: str, run_id: str | None, experiment: str, base: str, files: dict) -> None:
    from mlflow import MlflowClient

    from flows.report import STAGES, StageRun
    client = MlflowClient(tracking_uri=uri)
    if run_id:
        parent = client.get_run(run_id)
        if parent.data.tags.get("mlflow.parentRunId"):            # a stage run was given: use its pipeline run
            tracking.notes.append(f"{run_id} is the '{parent.info.run_name}' stage run; showing its pipeline run")
            parent = client.get_run(parent.data.tags["mlflow.parentRunId"])
        exp_id = parent.info.experiment_id
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            tracking.notes.append(f"no MLflow experiment '{experiment}' in {uri}")
            return
        exp_id = exp.experiment_id
        found = client.search_runs([exp_id], f"attributes.run_name = '{PIPELINE_RUN}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        parent = found[0] if found else None
        if parent is None:
            tracking.notes.append("no pipeline run recorded: showing the latest run of each stage")
    tracking.experiment_id = exp_id
    url = lambda rid: f"{base}/#/experiments/{exp_id}/runs/{rid}"  # noqa: E731
    children = {}
    if parent is not None:
        tracking.parent_run_id, tracking.parent_url = parent.info.run_id, url(parent.info.run_id)
        for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100):
            children.setdefault(r.data.tags.get("rlhf.stage", r.info.run_name), r)
    for stage in STAGES:
        r, in_parent = children.get(stage), True
        if r is None:
            before = f" and attributes.start_time <= {parent.info.start_time}" if parent is not None else ""
            found = client.search_runs([exp_id], f"tags.`rlhf.stage` = '{stage}'{before}",
                                       order_by=["attributes.start_time DESC"], max_results=1)
            r, in_parent = (found[0] if found else None), parent is None
        if r is None:
            continue
        match, origin = matches(r.data.metrics, files.get(stage)), ""
        if match is False:      # the files were rewritten since (dvc repro, rlhf stage): find the run that wrote them
            later = next((x for x in client.search_runs([exp_id], f"tags.`rlhf.stage` = '{stage}'",
                                                        order_by=["attributes.start_time DESC"], max_results=20)
                          if matches(x.data.metrics, files.get(stage))), None)
            if later is not None:
                r, in_parent, match, origin = later, False, True, "another run (not of this pipeline run)"
        seconds = parent.data.metrics.get(f"seconds/{stage}") if parent is not None and in_parent else None
        tracking.stages[stage] = StageRun(r.info.run_id, url(r.info.run_id), in_parent, match, seconds,
                                          _registered(client, r.info.run_id), origin)
    _find_promotion(client, tracking, exp_id, parent, url)


def _find_promotion(client, tracking, exp_id: str, parent, url) -> None:
    """The promotion decided for this pipeline run (flows/promote.py logs ``promotion/report.json`` on a run named
    'promote'): the parent's 'promote' child, else the first 'promote' run started after the parent."""
    import json
    import tempfile
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
