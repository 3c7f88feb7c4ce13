"""The ``orchestration`` section (rlhf/config_orchestration.py) and the checks the flow makes before any stage runs
(tasks/work_pools.py): stage names against dvc.yaml, a Prefect server the workers reach, and what a remote run is
given. The real server, pool and worker: tests/pipeline/test_work_pool.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import ConfigError, OrchestrationConfig, PipelineConfig, load_params
from tasks.work_pools import FORWARDED_ENV, WorkPoolError, parameters, plan, require_shared_api

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "pretrain", "sft", "preferences"]


def load(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text + "\n")
    return load_params(path)


def load_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert "\n" not in str(e.value)
    return str(e.value).removeprefix(f"{tmp_path / 'params.yaml'}: ")


def test_the_default_runs_every_stage_in_process():
    o = PipelineConfig().orchestration
    assert (o.work_pools, o.launchers, o.start_timeout_s, o.timeout_s) == ({}, {}, 600, 0)
    assert plan(o, STAGES, "params.yaml") == {} and o.launcher("sft") == []
    require_shared_api(o, temporary=True)                     # nothing on a pool: no server needed


def test_pools_and_launchers_load(tmp_path):
    o = load(tmp_path, "orchestration: {work_pools: {prepare: cpu, sft: gpu}, launchers: "
                       "{sft: 'accelerate launch --multi_gpu --num_processes 2'}, timeout_s: 3600}").orchestration
    assert plan(o, STAGES, "params.yaml") == {"prepare": "cpu", "sft": "gpu"}
    assert o.launcher("sft") == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    assert o.launcher("prepare") == [] and o.timeout_s == 3600


@pytest.mark.parametrize("text,message", [
    ("orchestration: {work_pools: {sft: ''}}", "orchestration.work_pools.sft: expected a non-empty string, got ''"),
    ("orchestration: {work_pools: {sft: 3}}", "orchestration.work_pools.sft: expected a string, got 3"),
    ("orchestration: {launchers: {sft: accelerate launch}}",
     "orchestration.launchers.sft: only a stage that runs on a work pool has a launcher (add work_pools.sft)"),
    ("orchestration: {work_pools: {sft: gpu}, launchers: {sft: \"torchrun 'x\"}}",
     "orchestration.launchers.sft: not a command line (No closing quotation): \"torchrun 'x\""),
    ("orchestration: {start_timeout_s: 0}", "orchestration.start_timeout_s must be >= 1, got 0"),
    ("orchestration: {timeout_s: -1}", "orchestration.timeout_s must be >= 0 (0 = no limit), got -1"),
    ("orchestration: {work_pool: {sft: gpu}}", "orchestration.work_pool: unknown key (did you mean 'work_pools'?)"),
])
def test_bad_orchestration_fails_when_loading_naming_the_key(tmp_path, text, message):
    assert load_error(tmp_path, text) == message


def test_a_name_that_is_no_stage_of_dvc_yaml_is_a_config_error():
    o = OrchestrationConfig(work_pools={"prepare": "cpu", "sftt": "gpu"}, launchers={"sftt": "torchrun"})
    with pytest.raises(ConfigError) as e:
        plan(o, STAGES, "params.yaml")
    assert str(e.value) == ("params.yaml: orchestration.work_pools.sftt: not a stage of dvc.yaml (stages: prepare, "
                            "pretrain, sft, preferences)")


def test_pools_need_a_prefect_server_the_workers_reach():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    o = OrchestrationConfig(work_pools={"sft": "gpu"})
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(WorkPoolError, match=r"^orchestration.work_pools \(sft -> gpu\) needs a Prefect server its "
                                                r"workers reach too: set PREFECT_API_URL"):
            require_shared_api(o)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        require_shared_api(o)
        with pytest.raises(WorkPoolError, match="needs a Prefect server its workers reach"):
            require_shared_api(o, temporary=True)                 # `rlhf run`'s own temporary server


def test_rlhf_run_refuses_pools_without_a_shared_server_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("orchestration: {work_pools: {sft: gpu}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "rlhf: error: WorkPoolError: orchestration.work_pools (sft -> gpu) needs a Prefect server its workers reach "
        "too: set PREFECT_API_URL (e.g. `prefect server start` on a shared host, then export "
        "PREFECT_API_URL=http://HOST:4200/api), or empty orchestration.work_pools to run every stage in this process"]


def test_a_remote_run_gets_absolute_paths_the_grant_and_only_non_secret_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret")
    monkeypatch.delenv("RLHF_EXPERIMENT", raising=False)
    grant = {"pid": 1, "host": "h", "token": "t"}
    p = parameters("sft", "params.yaml", grant, "run-1", ["accelerate", "launch"])
    assert p["params_path"] == str(tmp_path / "params.yaml") and p["project_dir"] == str(tmp_path)
    assert p["lock"] == grant and p["parent_run_id"] == "run-1" and p["launcher"] == ["accelerate", "launch"]
    assert p["env"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"} and set(p["env"]) <= set(FORWARDED_ENV)
    assert p["result_file"].startswith(str(tmp_path / ".rlhf" / "stage-results" / "sft-"))
