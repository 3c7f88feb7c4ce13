"""`rlhf report`: one self-contained HTML page per pipeline run; the report package builds it. Nothing heavy is
imported at module level: every `rlhf` invocation imports this module to register the subcommand."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="write an HTML report of the last pipeline run (or of --run-id)",
                              description="One self-contained HTML page (figures embedded) from metrics/, plots/ "
                                          "and artifacts/, with MLflow run ids and links when a store is reachable.")
    p.add_argument("--out", default="reports/", help="folder for the page, or a file name ending in .html "
                                                     "(default: reports/)")
    p.add_argument("--run-id", default=None, help="the MLflow run id of the pipeline run (parent run "
                                                  "'rlhf_pipeline'); default: the latest one")
    p.add_argument("--root", default=".", help="project folder holding metrics/, plots/, artifacts/ (default: .)")
    p.add_argument("--samples", type=int, default=20, help="SFT vs PPO sample rows in the table (default: 20)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <root>/mlflow.db if it exists)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: $RLHF_EXPERIMENT or 'rlhf')")
    p.add_argument("--mlflow-ui", default=None, help="base URL of the MLflow UI for links (default: the tracking URI "
                                                     "when it is http(s), else http://127.0.0.1:5000)")
    p.add_argument("--no-mlflow", action="store_true", help="do not consult MLflow")
    p.set_defaults(fn=cmd_report)


def cmd_report(args) -> int:
    from report.build import make_report

    w = make_report(args.root, args.out, run_id=args.run_id, max_samples=args.samples,
                    tracking_uri=args.tracking_uri, experiment=args.experiment, mlflow_ui=args.mlflow_ui,
                    use_mlflow=not args.no_mlflow)
    print(f"report: {w.path} ({len(w.page.charts())} figures, {len(w.run.samples)} of {w.run.samples_total} samples)")
    if w.tracking is not None:
        print(f"MLflow: pipeline run {w.tracking.parent_run_id or '-'} ({w.tracking.tracking_uri})")
    for note in (w.tracking.notes if w.tracking else []) + w.run.notes:
        print(f"  note: {note}", file=sys.stderr)
    return 0
