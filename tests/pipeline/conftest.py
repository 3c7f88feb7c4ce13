"""A throwaway copy of the project (git + DVC) on the tiny config, shared by the end-to-end tests."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def restored_tracking_uri():
    """The block may set MLFLOW_TRACKING_URI and MLflow's process-wide URI (``mlflow.set_tracking_uri`` sets both);
    afterwards both are as they were, so later tests see the environment they started with."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        import mlflow
        mlflow.set_tracking_uri(None)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def sh(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_project(repo: Path) -> Path:
    """A git repository holding the pipeline definition, the tiny params and small demo data under DVC."""
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "rlhf", repo / "rlhf", ignore=shutil.ignore_patterns("__pycache__"))
    merged = merge_params(ROOT / "params.yaml", ROOT / "tests" / "fixtures" / "params_tiny.yaml")
    (repo / "params.yaml").write_text(merged)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "test@example.com", cwd=repo)
    sh("git", "config", "user.name", "test", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("rlhf", "demo-data", "data", "--n-corpus", "400", "--n-sft", "120", "--n-prompts", "200", cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "project", cwd=repo)
    return repo


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """The shared throwaway project of the end-to-end tests."""
    repo = tmp_path_factory.mktemp("project")
    os.environ["DVC_SITE_CACHE_DIR"] = str(repo / ".dvc" / "tmp" / "site_cache")
    return make_project(repo)


def merge_params(base: Path, overlay: Path) -> str:
    import yaml

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out
    return yaml.safe_dump(merge(yaml.safe_load(base.read_text()), yaml.safe_load(overlay.read_text())), sort_keys=False)
