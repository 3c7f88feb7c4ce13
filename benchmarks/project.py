"""A throwaway copy of the project (git + DVC + the demo data at the demo sizes) for the benchmarks.

The benchmarks never write into the working tree: the pipeline runs in a copy, as the end-to-end tests do
(tests/pipeline/conftest.py), with the real params.yaml. The `rlhf` command comes from the project's virtualenv.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               "WANDB_DISABLED": "true", "WANDB_MODE": "disabled", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


CODE_DIR: Path | None = None      # the frozen code (snapshot()) that every process of ours imports first


def env(threads: int, **extra: str) -> dict:
    """The environment of every benchmark subprocess: offline, quiet, ``threads`` OpenMP threads, the frozen code
    first on PYTHONPATH."""
    e = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
         "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    paths = [extra.pop("PYTHONPATH", None), str(CODE_DIR) if CODE_DIR else None, os.environ.get("PYTHONPATH")]
    e.update(extra)
    e["PYTHONPATH"] = ":".join(p for p in paths if p)
    if CODE_DIR:
        e["RLHF_BENCH_CODE"] = str(CODE_DIR)
    return e


def sh(cmd: list[str], cwd: Path, threads: int = 2, timeout: float = 7200, **extra: str) -> tuple[float, str]:
    """Run a command; returns (wall seconds, combined output). Raises with the output's tail on failure."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(threads, **extra), timeout=timeout)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return dt, out.stdout + out.stderr


def snapshot(dest: Path, mode: str = "head") -> Path:
    """The code the benchmark measures, frozen at its start: ``head`` = the committed tree (git archive HEAD), or
    ``worktree`` = a copy of the working tree as it is now. Other engineers edit the tree while a benchmark runs;
    the frozen copy goes first on PYTHONPATH of every process of ours (the editable install is only a fallback)."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if mode == "head":
        archive = subprocess.run(["git", "archive", "HEAD", *CODE_PATHS], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    else:
        for name in CODE_PATHS:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dest / name)
        rev = "worktree"
    (dest / "REVISION").write_text(rev + "\n")
    return dest


CODE_PATHS = ("rlhf", "flows", "tasks", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "Makefile",
              "pyproject.toml", "constraints.txt")


def make_project(dest: Path, threads: int = 2, code: Path = ROOT) -> Path:
    """A git repository at ``dest`` holding the pipeline definition, params.yaml and the demo data under DVC."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # copy2 keeps mtimes: `make pipeline VENV=<the project's venv>` then sees that venv as up to date.
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(code / name, dest / name)
    shutil.copytree(code / "rlhf", dest / "rlhf", ignore=shutil.ignore_patterns("__pycache__"))
    extra = {"DVC_SITE_CACHE_DIR": str(dest / ".dvc" / "tmp" / "site_cache")}
    # pyproject.toml and constraints.txt keep the mtimes of the venv's install (Makefile: $(VENV)/.installed).
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"],
                ["rlhf", "demo-data", "data"], ["dvc", "add", "-q", "data"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "bench project"]):
        sh(cmd, dest, threads, **extra)
    return dest


def project_env(project: Path) -> dict:
    return {"DVC_SITE_CACHE_DIR": str(Path(project) / ".dvc" / "tmp" / "site_cache")}
