"""`rlhf ingest`: validate and convert human preference annotations (any supported export format) into the
reward model's training data, with a rejects file and a summary (``rlhf.preferences.ingest``).

Exit status: 0 = ingested within the reject limit; 1 = more rejects than ``--max-reject-share`` (every output and
the rejects file are still written, for inspection); 2 = nothing could be ingested (a missing or unreadable input,
a file with no records, a bad option) or the requested MLflow logging failed. Every error is one line on stderr.
Only the standard library is imported at module level (every `rlhf` invocation imports this module).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_REJECTS, EXIT_ERROR = 0, 1, 2
_METRIC_NAME_BAD = re.compile(r"[^\w./\- ]+")


def register(subparsers) -> None:
    from rlhf.preferences.detect import ALIASES, FORMATS  # stdlib only: cheap

    p = subparsers.add_parser(
        "ingest", help="validate and convert preference annotations into rankings, pairs and Elo scores",
        description="Read annotation exports (files, or folders of *.json/*.jsonl), write rankings.jsonl, "
                    "pairs.jsonl, elo.jsonl, rejects.jsonl and summary.json to --out, and print the summary. "
                    "Exit 0 within the reject limit, 1 above it, 2 when the input cannot be read.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="annotation export files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS, *ALIASES), metavar="F",
                   help=f"input format: auto (default: detected per file) or one of {', '.join(FORMATS)} "
                        f"(aliases: {', '.join(ALIASES)})")
    p.add_argument("--max-reject-share", type=_share, default=0.2, metavar="X",
                   help="fail (exit 1) when rejected/read exceeds X (default: 0.2)")
    p.add_argument("--max-field-chars", type=_positive_int, default=20000, metavar="N",
                   help="longest prompt or response accepted (default: 20000)")
    p.add_argument("--rating-scale", type=_finite, nargs=2, default=(1.0, 7.0), metavar=("LO", "HI"),
                   help="inclusive range of scalar ratings (default: 1 7)")
    p.add_argument("--k-factor", type=_positive_float, default=32.0, metavar="K", help="Elo K-factor (default: 32)")
    p.add_argument("--initial-rating", type=_finite, default=1000.0, metavar="R",
                   help="Elo rating of an unseen response (default: 1000)")
    p.add_argument("--elo-rounds", type=_positive_int, default=1, metavar="N",
                   help="passes over the comparisons for Elo (default: 1)")
    p.add_argument("--ranker-key", default=None, metavar="KEY",
                   help="Label Studio Ranker: the value.ranker key holding the order (default: the first)")
    p.add_argument("--log-mlflow", action="store_true",
                   help="log the summary metrics and the datasets (hash, counts) to MLflow "
                        "(MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_ingest)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _share(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


class Progress:
    """``on_progress(records_read)`` -> one stderr line at most every ``every_s`` seconds: rewritten in place on a
    terminal, a plain line each time otherwise (no bar spam in CI logs)."""

    def __init__(self, every_s: float = 5.0, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.every_s, self.t0 = every_s, time.monotonic()
        self.last = self.t0
        self.tty = self.stream.isatty()
        self.shown = False

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last, self.shown = now, True
        rate = n / max(now - self.t0, 1e-9)
        print(f"[ingest] {n:,} records read ({rate:,.0f}/s)", file=self.stream,
              end="\r" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.tty and self.shown:
            print(file=self.stream, flush=True)


def _error(message: str) -> int:
    print(f"rlhf ingest: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_ingest(args) -> int:
    from rlhf.preferences import IngestError, RejectLimitExceeded, format_summary, ingest

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _error(f"{missing[0]}: no such file or directory")
    lo, hi = args.rating_scale
    if not lo < hi:
        return _error(f"--rating-scale: LO must be below HI, got {lo:g} {hi:g}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _error(f"{out}: --out exists and is not a folder")
    progress = Progress(args.progress_every)
    over_limit = None
    try:
        summary = ingest(args.paths, out, format=args.format, max_reject_share=args.max_reject_share,
                         max_field_chars=args.max_field_chars, rating_scale=(lo, hi), k_factor=args.k_factor,
                         initial_rating=args.initial_rating, elo_rounds=args.elo_rounds,
                         ranker_key=args.ranker_key, on_progress=progress).to_dict()
    except RejectLimitExceeded as e:       # raised after every output is written: report them, then fail
        over_limit = e
        summary = _load_summary(out)
    except (IngestError, ValueError) as e:
        return _error(str(e))
    except OSError as e:
        return _error(f"{e.filename or out}: {e.strerror or e}")
    finally:
        progress.close()
    print(format_summary(summary))
    print(f"\noutputs: {out}/ (rankings.jsonl, pairs.jsonl, elo.jsonl, summary.json); "
          f"rejects: {summary['rejects_path']}")
    if args.log_mlflow:
        try:
            run_id, uri = log_to_mlflow(args, summary, failed=over_limit is not None)
        except Exception as e:  # noqa: BLE001 - the store's own errors vary; one line, not a traceback
            return _error(f"MLflow logging failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
        print(f"MLflow: run {run_id} ({uri})")
    if over_limit is not None:
        print(f"rlhf ingest: reject limit exceeded: {summary['rejected']} of {summary['read']} records rejected, "
              f"share {summary['reject_share']:.3f} > limit {args.max_reject_share:g}; "
              f"see {summary['rejects_path']}", file=sys.stderr)
        return EXIT_REJECTS
    return EXIT_OK


def _load_summary(out: Path) -> dict:
    import json
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def summary_metrics(summary: dict) -> dict[str, float]:
    """Numeric summary fields, agreement and rejects by reason, as valid MLflow metric names."""
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in (summary.get("agreement") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"agreement_{k}"] = float(v)
    for reason, n in (summary.get("rejected_by_reason") or {}).items():
        name = _METRIC_NAME_BAD.sub("_", reason.replace("'", "").replace('"', "")).strip("_ ")[:60] or "other"
        metrics[f"rejected/{name}"] = metrics.get(f"rejected/{name}", 0.0) + float(n)
    return metrics


def log_to_mlflow(args, summary: dict, failed: bool) -> tuple[str, str]:
    """One MLflow run "ingest": parameters, summary metrics, summary.json, input and output datasets."""
    import mlflow

    from tasks.lineage import log_ingest_inputs, log_outputs
    from tasks.tracking import git_commit, setup_tracking

    uri = setup_tracking()
    out = Path(summary["out_dir"])
    run = mlflow.start_run(run_name="ingest")
    status = "FAILED"
    try:
        mlflow.set_tags({"rlhf.command": "ingest", "rlhf.git_commit": git_commit(),
                         "rlhf.ingest.status": "reject_limit_exceeded" if failed else "ok"})
        mlflow.log_params({"paths": " ".join(map(str, args.paths))[:500], "out": str(out), "format": args.format,
                           "max_reject_share": args.max_reject_share, "max_field_chars": args.max_field_chars,
                           "rating_scale": f"{args.rating_scale[0]:g} {args.rating_scale[1]:g}",
                           "k_factor": args.k_factor, "initial_rating": args.initial_rating,
                           "elo_rounds": args.elo_rounds, "ranker_key": args.ranker_key})
        mlflow.log_metrics(summary_metrics(summary))
        mlflow.log_artifact(str(out / "summary.json"))
        log_ingest_inputs("ingest", summary)
        log_outputs("ingest", {"dir": str(out)}, context="ingest")
        status = "FAILED" if failed else "FINISHED"
    finally:
        mlflow.end_run(status=status)
    return run.info.run_id, uri
