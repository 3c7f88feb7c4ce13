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
import sys
from pathlib import Path

EXIT_OK, EXIT_REJECTS, EXIT_ERROR = 0, 1, 2


def register(subparsers) -> None:
    from rlhf.config import PreferencesConfig          # yaml + dataclasses only: cheap
    from rlhf.preferences.detect import ALIASES, FORMATS  # stdlib only: cheap

    d = PreferencesConfig()       # the defaults are the preferences stage's (params.yaml), stated once
    p = subparsers.add_parser(
        "ingest", help="validate and convert preference annotations into rankings, pairs and Elo scores",
        description="Read annotation exports (files, or folders of *.json/*.jsonl), write rankings.jsonl, "
                    "pairs.jsonl, elo.jsonl, rejects.jsonl and summary.json to --out, and print the summary. "
                    "Exit 0 within the reject limit, 1 above it, 2 when the input cannot be read. The defaults "
                    "are those of params.yaml's preferences section.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="annotation export files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default=d.format, choices=("auto", *FORMATS, *ALIASES), metavar="F",
                   help=f"input format: auto (default: detected per file) or one of {', '.join(FORMATS)} "
                        f"(aliases: {', '.join(ALIASES)})")
    p.add_argument("--max-reject-share", type=_share, default=d.max_reject_share, metavar="X",
                   help=f"fail (exit 1) when rejected/read exceeds X (default: {d.max_reject_share:g})")
    p.add_argument("--max-field-chars", type=_positive_int, default=d.max_field_chars, metavar="N",
                   help=f"longest prompt or response accepted (default: {d.max_field_chars})")
    p.add_argument("--rating-scale", type=_number, nargs=2, default=tuple(d.rating_scale), metavar=("LO", "HI"),
                   help="inclusive range of scalar ratings (default: %g %g)" % tuple(d.rating_scale))
    p.add_argument("--k-factor", type=_positive_float, default=d.k_factor, metavar="K",
                   help=f"Elo K-factor (default: {d.k_factor:g})")
    p.add_argument("--initial-rating", type=_number, default=d.initial_rating, metavar="R",
                   help=f"Elo rating of an unseen response (default: {d.initial_rating:g})")
    p.add_argument("--elo-rounds", type=_positive_int, default=d.elo_rounds, metavar="N",
                   help=f"passes over the comparisons for Elo (default: {d.elo_rounds})")
    p.add_argument("--ranker-key", default=d.ranker_key, metavar="KEY",
                   help="Label Studio Ranker: the value.ranker key holding the order (default: the first)")
    p.add_argument("--max-responses", type=_int_in(2, 1024), default=d.max_responses, metavar="N",
                   help=f"a record ranking more responses is rejected (default: {d.max_responses})")
    p.add_argument("--max-depth", type=_int_in(2, 256), default=d.max_depth, metavar="N",
                   help=f"a record nested deeper is rejected (default: {d.max_depth})")
    p.add_argument("--max-record-bytes", type=_int_in(1, 2**30), default=d.max_record_bytes, metavar="N",
                   help=f"a longer JSON line or array element is rejected (default: {d.max_record_bytes})")
    p.add_argument("--refs-dir", default=d.refs_dir or None, metavar="DIR",
                   help="read Label Studio file references from this folder only (default: references refused)")
    p.add_argument("--log-mlflow", action="store_true",
                   help="log the summary metrics and the datasets (hash, counts) to MLflow "
                        "(MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_ingest)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
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


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        value = _positive_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value
    return parse


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
    from tasks.progress import Progress
    progress = Progress("ingest", unit="record", every_s=args.progress_every, show_first=False)
    over_limit = None
    try:
        summary = ingest(args.paths, out, format=args.format, max_reject_share=args.max_reject_share,
                         max_field_chars=args.max_field_chars, rating_scale=(lo, hi), k_factor=args.k_factor,
                         initial_rating=args.initial_rating, elo_rounds=args.elo_rounds,
                         ranker_key=args.ranker_key, max_responses=args.max_responses, max_depth=args.max_depth,
                         max_record_bytes=args.max_record_bytes, refs_dir=args.refs_dir,
                         on_progress=lambda n: progress(n)).to_dict()
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
            from tasks.tracking import log_ingest_run
            options = {"paths": " ".join(map(str, args.paths))[:500], "out": str(out), "format": args.format,
                       "max_reject_share": args.max_reject_share, "max_field_chars": args.max_field_chars,
                       "rating_scale": f"{lo:g} {hi:g}", "k_factor": args.k_factor,
                       "initial_rating": args.initial_rating, "elo_rounds": args.elo_rounds,
                       "ranker_key": args.ranker_key, "max_responses": args.max_responses,
                       "max_depth": args.max_depth, "max_record_bytes": args.max_record_bytes,
                       "refs_dir": args.refs_dir}
            run_id, uri = log_ingest_run(options, summary, failed=over_limit is not None)
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
