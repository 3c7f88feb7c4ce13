"""The scheduled deployment of ``rlhf_pipeline``, defined in the repository (`rlhf schedule`, `python -m flows.deploy`).

``serve`` registers a deployment with a cron schedule on the Prefect API in ``PREFECT_API_URL`` and keeps a runner
process polling it: every scheduled (or manually triggered) run executes the pipeline in a subprocess, in the
directory the runner was started in, so it sees that project's dvc.yaml, params.yaml and data. A run only does
what `rlhf run` would: stale stages, each committed to dvc.lock, so a nightly run with no new data is a no-op.

Runs of this deployment never overlap (``global_limit=1``: two pipelines in one project would race on dvc.lock).
SIGTERM/SIGINT stops the runner and pauses the schedule (Prefect's ``pause_on_shutdown``); starting it again
resumes it. For a fleet, the same deployment goes to a work pool instead (docs/operations.md, "Running at scale").
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 3 * * *"          # every day at 03:00 (in ``timezone``; UTC by default)


def validate_cron(cron: str, timezone: str | None = None) -> str:
    """Reject a malformed cron string or time zone before anything is registered (Prefect's own schema check)."""
    from prefect.client.schemas.schedules import CronSchedule
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as e:   # pydantic's ValidationError is a ValueError
        raise ValueError(f"invalid schedule {cron!r}{' in ' + timezone if timezone else ''} "
                         f"(expected 5 cron fields, e.g. {DEFAULT_CRON!r}, and an IANA time zone)") from e
    return cron


def serve(name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, params_path: str = "params.yaml", force: bool = False,
          timezone: str | None = None, paused: bool = False) -> None:
    """Register the deployment ``rlhf_pipeline/<name>`` with ``cron`` and serve it until interrupted (blocks)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import rlhf_pipeline

    rlhf_pipeline.serve(
        name=name,
        schedule=Cron(validate_cron(cron, timezone), timezone=timezone),
        parameters={"params_path": params_path, "force": force},
        description=f"rlhf_pipeline on {cron}{' ' + timezone if timezone else ''}: stale stages only",
        tags=["rlhf", "scheduled"],
        global_limit=1,
        paused=paused,
        # Module path, not file path: the runner imports flows.pipeline from the installed package, whatever the
        # working directory (the project) is.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default {DEFAULT_CRON!r})")
    p.add_argument("--name", default=DEFAULT_NAME, help="deployment name (rlhf_pipeline/<name>)")
    p.add_argument("--params", default="params.yaml", help="params file the scheduled runs use")
    p.add_argument("--timezone", default=None, help="IANA time zone of the cron schedule (default UTC)")
    p.add_argument("--force", action="store_true", help="scheduled runs rerun every stage, not only stale ones")
    p.add_argument("--paused", action="store_true", help="register the schedule paused (manual runs only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0]))\
        .parse_args(argv)
    serve(args.name, args.cron, args.params, args.force, args.timezone, args.paused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
