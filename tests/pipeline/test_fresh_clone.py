"""A fresh clone, the README's way: `make pipeline` (data generated then committed to the DVC cache, every stage
run) leaves `dvc status` with nothing to report: the data is in the cache (so `dvc checkout` of another commit can
restore it) and dvc.lock matches every stage. The clone runs the tiny configuration to stay quick; the commands
are the Makefile's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.conftest import merge_params
from tests.pipeline.test_resume import project_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def test_make_pipeline_on_a_fresh_clone_leaves_dvc_status_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / "params.yaml").write_text(merge_params(clone / "params.yaml", ROOT / "tests/fixtures/params_tiny.yaml"))
    env = project_env(clone, PYTHONPATH=str(clone))
    make = ["make", "-o", f"{VENV}/.installed", f"VENV={VENV}"]      # this environment, not a new one
    data = subprocess.run([*make, "data"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert data.returncode == 0, data.stderr[-3000:]
    status = subprocess.run([f"{VENV}/bin/dvc", "status", "--json", "data.dvc"], cwd=clone, env=env,
                            capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout            # the data is in the cache
    out = subprocess.run([*make, "pipeline"], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    status = subprocess.run([f"{VENV}/bin/dvc", "status"], cwd=clone, env=env, capture_output=True, text=True)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    git = subprocess.run(["git", "status", "--porcelain", "data.dvc"], cwd=clone, capture_output=True, text=True)
    assert git.stdout == ""                                                  # data.dvc as committed
