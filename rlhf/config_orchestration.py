"""The ``orchestration`` section of params.yaml: where each stage runs. Empty (the default), every stage runs in the
flow's own process, as `rlhf run` always did; a stage named in ``work_pools`` runs as its own Prefect flow run on a
worker of that work pool (tasks/work_pools.py, docs/operations.md "Stages on their own infrastructure").

Stage names are checked against dvc.yaml where the flow runs (``tasks.work_pools.plan``): the stage list is
dvc.yaml's, not this module's. No section of dvc.yaml tracks this one, so moving a stage to a pool makes nothing
stale: where a stage runs does not change what it computes.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OrchestrationConfig:
    work_pools: dict[str, str] = field(default_factory=dict)   # stage -> Prefect work pool; absent = in-process
    launchers: dict[str, str] = field(default_factory=dict)    # stage -> command its pool's worker starts it under
    start_timeout_s: int = 600          # a remote stage no worker has started within this long fails (and is cancelled)
    timeout_s: int = 0                  # a remote stage still running after this long fails (and is cancelled); 0 = none

    def __post_init__(self) -> None:
        # FieldError: each message starts with its key, so the loader prefixes "orchestration." to it.
        from rlhf.config_base import FieldError, check_ranges
        check_ranges(self)
        for kind, mapping in (("work_pools", self.work_pools), ("launchers", self.launchers)):
            for stage, value in mapping.items():
                if not str(value).strip():
                    raise FieldError(f"{kind}.{stage}: expected a non-empty string, got {value!r}")
        for stage, command in self.launchers.items():
            if stage not in self.work_pools:
                raise FieldError(f"launchers.{stage}: only a stage that runs on a work pool has a launcher "
                                 f"(add work_pools.{stage})")
            try:
                shlex.split(command)
            except ValueError as e:
                raise FieldError(f"launchers.{stage}: not a command line ({e}): {command!r}") from None

    def launcher(self, stage: str) -> list[str]:
        """The launcher of ``stage`` as an argument list ([] = the stage runs in the flow run's own process)."""
        return shlex.split(self.launchers.get(stage, ""))
