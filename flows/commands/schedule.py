"""`rlhf schedule --cron "0 3 * * *"`: serve the pipeline as a Prefect deployment on a cron schedule."""
from __future__ import annotations


def cmd_schedule(args) -> int:
    from flows.deploy import serve, validate_cron
    validate_cron(args.cron, args.timezone)
    print(f"serving deployment rlhf_pipeline/{args.name} on {args.cron!r}"
          f"{' (' + args.timezone + ')' if args.timezone else ' (UTC)'} with {args.params}; Ctrl-C stops and pauses it",
          flush=True)
    serve(args.name, args.cron, args.params, args.force, args.timezone, args.paused)
    return 0


def register(subparsers) -> None:
    from flows.deploy import add_arguments
    p = subparsers.add_parser("schedule", help="serve the pipeline on a cron schedule (Prefect deployment)")
    add_arguments(p)
    p.set_defaults(fn=cmd_schedule)
