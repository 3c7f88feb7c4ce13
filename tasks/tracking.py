"""MLflow plumbing for every stage: the embedded default store, one run per stage under the pipeline's parent run,
per-step metrics, metrics files and plot data where dvc.yaml declares them.

Embedded default: ``sqlite:///mlflow.db`` at the project root with artifacts in ``mlartifacts/`` (both git-ignored).
``MLFLOW_TRACKING_URI`` switches to a real server with no code change.

Crash safety: a stage's run id is kept in ``<out_dir>.ckpt/mlflow_run.json`` while the stage runs; a stage started
again after a crash (SIGKILL, OOM, node loss) continues that SAME run (instead of leaving it RUNNING forever) while
the core resumes from its checkpoint. Tracking calls are retried on connection errors only (``with_retries``).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, TypeVar

import mlflow

from rlhf.finite import finite_or_none

from rlhf.checkpoint import CKPT_SUFFIX, checkpoint_dir, fingerprint, write_json_atomic
from tasks import shutdown

EXPERIMENT = os.environ.get("RLHF_EXPERIMENT", "rlhf")
PARENT_ENV = "RLHF_PARENT_RUN_ID"
RUN_MARKER = "mlflow_run.json"
T = TypeVar("T")

# -- retries: for idempotent calls (or ones harmless to repeat: a metric point logged twice) on connection errors -
_TRANSIENT_TEXT = ("max retries exceeded", "connection refused", "connection reset", "connection aborted",
                   "failed to establish a new connection", "read timed out", "temporarily unavailable",
                   "database is locked", "remote end closed connection", "bad gateway", "service unavailable",
                   "gateway timeout")


def is_transient(exc: BaseException) -> bool:
    """A connection-level failure of the tracking server or its database (worth retrying), not a usage error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        name = type(exc).__name__
        if name in ("ConnectTimeout", "ReadTimeout", "ProtocolError", "NewConnectionError", "MaxRetryError"):
            return True
        if getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        text = str(exc).lower()
        if any(t in text for t in _TRANSIENT_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def with_retries(fn: Callable[..., T], *args, attempts: int = 0, base_delay: float = 0.0, **kwargs) -> T:
    """Call ``fn`` and retry it (exponential backoff) while it fails with a transient connection error; any other
    error, or the last attempt's, propagates. Use only for idempotent calls (logging params/tags/metrics, reads,
    aliases), never for ones that create something (a model version) unless they are checked first.
    Defaults: RLHF_TRACKING_RETRIES (5) attempts, RLHF_TRACKING_RETRY_DELAY (1 s) doubled each time."""
    attempts = attempts or int(os.environ.get("RLHF_TRACKING_RETRIES", "5"))
    delay = base_delay or float(os.environ.get("RLHF_TRACKING_RETRY_DELAY", "1.0"))
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - filtered by is_transient
            if attempt == attempts or not is_transient(e):
                raise
            print(f"[tracking] {getattr(fn, '__name__', fn)} failed ({type(e).__name__}: {str(e)[:200]}); "
                  f"retry {attempt}/{attempts - 1} in {delay:.1f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def retrying(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of ``with_retries``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return with_retries(fn, *args, **kwargs)
    return wrapper


def setup_tracking(root: str | Path = ".") -> str:
    """Point MLflow at the embedded store unless MLFLOW_TRACKING_URI says otherwise; ensure the experiment. Set
    explicitly either way: a URI set earlier in this process (mlflow.set_tracking_uri) would win over the variable."""
    root = Path(root).resolve()
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}")
    uri = mlflow.get_tracking_uri()
    if with_retries(mlflow.get_experiment_by_name, EXPERIMENT) is None:
        local = uri.startswith("sqlite:") or uri.startswith("file:")
        try:   # not retried: a create that reached the server must not be repeated
            mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri() if local else None)
        except Exception:
            if with_retries(mlflow.get_experiment_by_name, EXPERIMENT) is None:   # not a lost race with another stage
                raise
    with_retries(mlflow.set_experiment, EXPERIMENT)
    return uri


class StageLogger:
    """The core's on_log(step, metrics) -> MLflow metrics + progress (a bar on a terminal, throttled plain lines in
    CI logs: tasks/progress.py)."""

    def __init__(self, stage: str, cfg=None, every_s: float = 5.0):
        from tasks.progress import for_stage
        self.stage = stage
        self.progress = for_stage(stage, cfg, every_s=every_s)

    def __call__(self, step: int, metrics: dict) -> None:
        shutdown.check()                               # a stop requested by SIGTERM / SIGINT ends the loop here
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if finite_or_none(v) is not None}
        with_retries(mlflow.log_metrics, clean, step=int(step))
        self.progress(step, clean)

    def close(self) -> None:
        self.progress.close()


def write_metrics(stage: str, metrics: dict) -> Path:
    path = Path("metrics") / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: finite_or_none(v) for k, v in sorted(metrics.items())}, indent=2) + "\n")
    return path


def write_plots(stage: str, plots: dict[str, list[dict]]) -> list[Path]:
    out = []
    for name, rows in plots.items():
        path = Path("plots") / stage / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{k: finite_or_none(v) for k, v in r.items()} for r in rows], indent=1) + "\n")
        out.append(path)
    return out


def run_marker(params: dict) -> Optional[Path]:
    """Where a stage keeps its MLflow run id while it runs: beside its checkpoints (None: no output folder)."""
    out = params.get("out_dir")
    return checkpoint_dir(out) / RUN_MARKER if out else None


def _run_to_continue(marker: Optional[Path], stage: str, params_sha: str) -> Optional[str]:
    """The run id of an interrupted earlier attempt of this stage with the same params, if there is one."""
    if marker is None or not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
        run_id = str(info["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from mlflow import MlflowClient
    from mlflow.entities import RunStatus
    client = MlflowClient()
    try:
        run = with_retries(client.get_run, run_id)
    except Exception as e:  # noqa: BLE001
        if is_transient(e):
            raise
        return None                                        # deleted store, other experiment: start afresh
    if run.info.lifecycle_stage != "active" or run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        return None
    if info.get("stage") != stage or info.get("params_sha") != params_sha:
        # Params changed since the crash: the checkpoint will not be resumed either. Close the old run honestly.
        if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
            with_retries(client.set_terminated, run_id, "KILLED")
        return None
    return run_id


@contextmanager
def resumable_run(run_name: str, marker: Optional[Path], params: dict, tags: dict, parent: Optional[str] = None,
                  system_metrics: bool = False):
    """``mlflow.start_run`` that continues the run recorded in ``marker`` when an earlier attempt with the same
    ``run_name`` and params was interrupted (tag ``rlhf.resumed`` counts the restarts), instead of leaving that one
    RUNNING and starting another. The marker is removed when the body completes; on an exception the run ends
    FAILED and the marker stays, so the next attempt continues it too. ``system_metrics``: MLflow's system metrics
    monitor samples CPU, memory, disk and network (and GPU with nvidia-ml-py installed) as ``system/*`` metrics,
    every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10)."""
    params_sha = fingerprint(sorted((k, str(v)) for k, v in params.items()))
    previous = _run_to_continue(marker, run_name, params_sha)
    if previous:
        ctx = mlflow.start_run(run_id=previous, nested=mlflow.active_run() is not None,
                               log_system_metrics=system_metrics)
    else:
        ctx = mlflow.start_run(run_name=run_name, parent_run_id=parent or None, nested=bool(parent),
                               log_system_metrics=system_metrics)
    with ctx as run:
        if previous:
            resumed = int(run.data.tags.get("rlhf.resumed", "0")) + 1
            with_retries(mlflow.set_tags, {"rlhf.resumed": str(resumed), "rlhf.git_commit": git_commit()})
            print(f"[{run_name}] continuing MLflow run {previous} (restart {resumed})", file=sys.stderr, flush=True)
        else:
            if marker is not None:
                write_json_atomic(marker, {"run_id": run.info.run_id, "stage": run_name, "params_sha": params_sha})
            with_retries(mlflow.set_tags, {**tags, "rlhf.git_commit": git_commit()})
            if params:
                with_retries(mlflow.log_params, {k: str(v)[:500] for k, v in params.items()})
        yield run
    if marker is not None:
        _remove_marker(marker)


@contextmanager
def stage_run(stage: str, params: dict, tags: Optional[dict] = None, system_metrics: bool = False):
    """An MLflow run for one stage, nested under the pipeline's parent run when the flow started one; a stage
    started again after a crash continues its interrupted run (marker ``<out_dir>.ckpt/mlflow_run.json``)."""
    setup_tracking()
    with resumable_run(stage, run_marker(params), params, {"rlhf.stage": stage, **(tags or {})},
                       parent=os.environ.get(PARENT_ENV), system_metrics=system_metrics) as run:
        yield run


PIPELINE_MARKER = Path("artifacts") / ".pipeline_run.json"


@contextmanager
def pipeline_run(params_path: str = "params.yaml", name: str = "rlhf_pipeline"):
    """The flow's parent run; a flow started again after a crash continues the interrupted parent run."""
    setup_tracking()
    with resumable_run(name, PIPELINE_MARKER, {"params_path": params_path}, {"rlhf.flow": name}) as run:
        yield run


def _remove_marker(marker: Path) -> None:
    try:
        marker.unlink()
    except FileNotFoundError:
        pass
    if marker.parent.name.endswith(CKPT_SUFFIX):
        try:
            marker.parent.rmdir()        # the .ckpt folder, once the core has removed its checkpoints
        except OSError:
            pass


def git_commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def log_ingest_run(options: dict, summary: dict, failed: bool) -> tuple[str, str]:
    """One MLflow run "ingest" (`rlhf ingest --log-mlflow`): the options as params, the summary's metrics (the same
    names the preferences stage logs), summary.json, and the input and output datasets. Returns (run id, URI)."""
    from rlhf.preferences.ingest import summary_metrics
    from tasks.lineage import log_ingest_inputs, log_outputs

    uri = setup_tracking()
    out = Path(summary["out_dir"])
    run = mlflow.start_run(run_name="ingest")
    status = "FAILED"
    try:
        mlflow.set_tags({"rlhf.command": "ingest", "rlhf.git_commit": git_commit(),
                         "rlhf.ingest.status": "reject_limit_exceeded" if failed else "ok"})
        mlflow.log_params(options)
        mlflow.log_metrics(summary_metrics(summary))
        mlflow.log_artifact(str(out / "summary.json"))
        log_ingest_inputs("ingest", summary)
        log_outputs("ingest", {"dir": str(out)}, context="ingest")
        status = "FAILED" if failed else "FINISHED"
    finally:
        mlflow.end_run(status=status)
    return run.info.run_id, uri


def log_stage_seconds(stage: str, seconds: float) -> None:
    """Wall time of a stage the flow ran, on the pipeline's parent run (``seconds/<stage>``)."""
    with_retries(mlflow.log_metric, f"seconds/{stage}", seconds)


def tag_stages_run(stages: list[str]) -> None:
    """The stages this pipeline run ran (tag ``rlhf.ran``; "none" when everything was up to date)."""
    with_retries(mlflow.set_tags, {"rlhf.ran": ",".join(stages) or "none"})
