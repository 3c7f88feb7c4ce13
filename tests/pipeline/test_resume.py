"""Crash-safe resume, for real: the Prefect flow (`rlhf run`) is SIGKILLed in the middle of PPO, after its first
checkpoint; a rerun skips every stage dvc.lock already holds, resumes PPO from the checkpoint inside the SAME MLflow
run, and ends with exactly the metrics, plot rows and weights of an uninterrupted PPO run. The same for the SFT and
pretrain stages started on their own (`rlhf stage sft`, `rlhf stage pretrain`). Everything is real: subprocesses, SIGKILL, DVC, MLflow (SQLite), Prefect.

Equality is exact on CPU (same seed, same thread count): only wall-clock metrics (seconds, per-second rates) differ.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import ROOT, merge_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TIMING = ("seconds", "per_s", "time/")          # wall-clock metrics: the only ones allowed to differ

# PPO checkpoints at its DEFAULT interval (params.yaml's ppo.checkpoint_every, not overridden here: what a user gets):
# 30 iterations of the tiny model give checkpoints at 10 and 20, so a kill lands between the first one and the end,
# still seconds on one thread. The flow keeps the tiny SFT (what test_pipeline runs); the SFT and pretrain tests run
# their own longer configurations with a shorter interval.
RESUME_PARAMS = {"ppo": {"total_episodes": 240, "rollout_batch_size": 8}}
LONG = {"sft": {"train": {"epochs": 12, "checkpoint_every": 10, "log_every": 5}},
        "pretrain": {"train": {"epochs": 6, "checkpoint_every": 10, "log_every": 5}}}


# -- a throwaway project (shared with test_distributed and test_schedule) ------------------------------------------
def project_env(repo: Path, **extra: str) -> dict:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "DVC_SITE_CACHE_DIR": str(repo / ".dvc" / "tmp" / "site_cache"), "PYTHONPATH": str(ROOT),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-4000:]}")
    return out


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def write_params(path: Path, base: Path, overrides: dict) -> None:
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(base.read_text()), overrides), sort_keys=False))


def make_project(repo: Path, overrides: dict | None = None, dvc: bool = True) -> Path:
    """The tiny configuration (tests/fixtures/params_tiny.yaml) plus ``overrides``, small demo data; with ``dvc`` a
    git repository whose data is under DVC, as tests/pipeline/conftest.py builds it."""
    repo.mkdir(parents=True, exist_ok=True)
    tiny = yaml.safe_load(merge_params(ROOT / "params.yaml", ROOT / "tests" / "fixtures" / "params_tiny.yaml"))
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_merge(tiny, overrides or {}), sort_keys=False))
    env = project_env(repo)
    run(["rlhf", "demo-data", "data", "--n-corpus", "400", "--n-sft", "120", "--n-prompts", "200"], repo, env)
    if dvc:
        for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
            shutil.copy(ROOT / name, repo / name)
        shutil.copytree(ROOT / "rlhf", repo / "rlhf", ignore=shutil.ignore_patterns("__pycache__"))
        for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "test@example.com"],
                    ["git", "config", "user.name", "test"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
            run(cmd, repo, env)
    return repo


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """A process in its own process group (so the kill takes its children, e.g. Prefect's temporary server)."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant: torchrun / accelerate launch start their workers in
    sessions of their own (torch elastic's subprocess handler), which a kill of the launcher's group misses."""
    import psutil
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    os.killpg(pid, signal.SIGKILL)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def kill_after_first_checkpoint(proc: subprocess.Popen, ckpt_root: Path, log: Path, timeout: float = 400) -> int:
    """SIGKILL the process group (and every descendant) as soon as a complete checkpoint exists; returns its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(ckpt_root.glob("step-*/manifest.json")):
            kill_tree(proc.pid)
            proc.wait(timeout=60)
            from rlhf.checkpoint import latest_checkpoint
            return latest_checkpoint(ckpt_root).step          # what a restart will resume from
        if proc.poll() is not None:
            raise AssertionError(f"finished (rc {proc.returncode}) before a checkpoint appeared in {ckpt_root}:\n"
                                 f"{log.read_text()[-4000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no checkpoint in {ckpt_root} after {timeout}s:\n{log.read_text()[-4000:]}")


def without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if not any(t in k for t in TIMING)}


def plot_rows(path: Path) -> list[dict]:
    return [without_timing(r) for r in json.loads(path.read_text())]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    import torch
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def mlflow_runs(uri: str, name: str):
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rlhf")
    return client, [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]


# -- the scenario ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Run the flow until PPO has written its first checkpoint, then SIGKILL it (and its Prefect server)."""
    tmp = tmp_path_factory.mktemp("resume")
    repo = make_project(tmp / "project", RESUME_PARAMS)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = project_env(repo, MLFLOW_TRACKING_URI=uri, PREFECT_HOME=str(tmp / "prefect"))
    env.pop("PREFECT_API_URL", None)
    log = tmp / "flow1.log"
    t0 = time.time()
    step = kill_after_first_checkpoint(start(["rlhf", "run"], repo, env, log), repo / "artifacts/models/policy.ckpt", log)
    marker = json.loads((repo / "artifacts/models/policy.ckpt/mlflow_run.json").read_text())
    return {"tmp": tmp, "repo": repo, "uri": uri, "env": env, "killed_at": step, "ppo_run_id": marker["run_id"],
            "first_seconds": time.time() - t0}


@pytest.fixture(scope="module")
def rerun(crashed):
    t0 = time.time()
    out = run(["rlhf", "run"], crashed["repo"], crashed["env"])
    tmp, repo = crashed["tmp"], crashed["repo"]
    shutil.copy(repo / "metrics/ppo.json", tmp / "ppo_resumed.json")
    shutil.copy(repo / "plots/ppo/ppo.json", tmp / "ppo_resumed_plot.json")
    shutil.copy(repo / "plots/ppo/probe.json", tmp / "probe_resumed_plot.json")
    return {"stdout": out.stdout, "stderr": out.stderr, "seconds": time.time() - t0}


def test_the_kill_left_a_complete_checkpoint_and_a_running_mlflow_run(crashed):
    from mlflow.entities import RunStatus
    from rlhf.config import PPOConfig
    repo = crashed["repo"]
    every = yaml.safe_load((repo / "params.yaml").read_text())["ppo"]["checkpoint_every"]
    assert every == PPOConfig().checkpoint_every > 0                        # the default, on by default
    n_iter = RESUME_PARAMS["ppo"]["total_episodes"] // RESUME_PARAMS["ppo"]["rollout_batch_size"]
    assert crashed["killed_at"] % every == 0 and 0 < crashed["killed_at"] < n_iter
    assert not (repo / "artifacts/models/policy").exists()                 # no half-written output
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "reward" in lock and "ppo" not in lock                          # every stage before ppo committed
    client, runs = mlflow_runs(crashed["uri"], "ppo")
    assert [r.info.run_id for r in runs] == [crashed["ppo_run_id"]]
    assert runs[0].info.status == RunStatus.to_string(RunStatus.RUNNING)   # what SIGKILL leaves behind


def test_rerun_continues_from_the_last_good_stage_and_resumes_ppo(crashed, rerun):
    from mlflow.entities import RunStatus
    repo = crashed["repo"]
    assert "stages run: ppo, evaluate" in rerun["stdout"], rerun["stdout"][-2000:]
    log, step = rerun["stderr"] + rerun["stdout"], crashed["killed_at"]
    assert f"resuming from checkpoint artifacts/models/policy.ckpt/step-{step:08d} (step {step})" in log, log[-3000:]
    assert "not resumed" not in log                                         # nothing was skipped on the way
    assert not (repo / "artifacts/models/policy.ckpt").exists()           # removed when the stage completed
    assert not list((repo / "artifacts/models").glob(".tmp-*"))
    status = run(["dvc", "status", "--json"], repo, crashed["env"])
    assert json.loads(status.stdout or "{}") == {}
    # The SAME MLflow run was continued and finished; its history covers every iteration.
    client, runs = mlflow_runs(crashed["uri"], "ppo")
    assert [r.info.run_id for r in runs] == [crashed["ppo_run_id"]]
    assert runs[0].info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert runs[0].data.tags.get("rlhf.resumed") == "1"
    assert "final/objective_scores" in runs[0].data.metrics
    n_iter = RESUME_PARAMS["ppo"]["total_episodes"] // RESUME_PARAMS["ppo"]["rollout_batch_size"]
    steps = {m.step for m in client.get_metric_history(crashed["ppo_run_id"], "objective/kl")}
    assert steps == set(range(1, n_iter + 1))
    plot = json.loads((repo / "plots/ppo/ppo.json").read_text())
    assert [r["step"] for r in plot] == list(range(1, n_iter + 1))        # plots complete after the resume


def test_resumed_ppo_equals_an_uninterrupted_run(crashed, rerun):
    """Baseline: the same PPO stage, uninterrupted, into another folder (and another MLflow store)."""
    tmp, repo = crashed["tmp"], crashed["repo"]
    write_params(repo / "params_baseline.yaml", repo / "params.yaml", {"ppo": {"out_dir": "artifacts/models/policy_base"}})
    env = {**crashed["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'baseline.db'}"}
    run(["rlhf", "stage", "ppo", "--params", "params_baseline.yaml"], repo, env)
    resumed, baseline = json.loads((tmp / "ppo_resumed.json").read_text()), json.loads((repo / "metrics/ppo.json").read_text())
    assert without_timing(resumed) == without_timing(baseline)
    assert resumed["iterations"] == RESUME_PARAMS["ppo"]["total_episodes"] // RESUME_PARAMS["ppo"]["rollout_batch_size"]
    assert plot_rows(tmp / "ppo_resumed_plot.json") == plot_rows(repo / "plots/ppo/ppo.json")
    # The over-optimisation probe (ppo.probe at its default interval): its rows travel in the checkpoints
    from rlhf.config import PPOConfig
    n_iter, every = int(resumed["iterations"]), PPOConfig().probe.every
    probe = plot_rows(tmp / "probe_resumed_plot.json")
    assert probe == plot_rows(repo / "plots/ppo/probe.json")
    assert [r["step"] for r in probe] == sorted({*range(0, n_iter + 1, every), n_iter})
    assert_same_weights(repo / "artifacts/models/policy", repo / "artifacts/models/policy_base")
    print(f"\nppo resumed at iteration {crashed['killed_at']}: metrics identical ({len(without_timing(resumed))} keys); "
          f"first flow {crashed['first_seconds']:.0f}s, rerun {rerun['seconds']:.0f}s")


@pytest.mark.parametrize("stage,plot", [("sft", "loss"), ("pretrain", "loss")])
def test_training_stage_killed_and_restarted_equals_uninterrupted(crashed, stage, plot):
    """`rlhf stage sft` (and `pretrain`) on its own (what dvc repro runs), in a copy of the project, on a longer run:
    SIGKILL after the first checkpoint, start again: same MLflow run, same metrics, plot rows and weights as an
    uninterrupted run."""
    from mlflow.entities import RunStatus
    tmp = crashed["tmp"]
    repo = tmp / f"{stage}_copy"
    shutil.copytree(crashed["repo"], repo, symlinks=True)
    env = {**crashed["env"], "DVC_SITE_CACHE_DIR": str(repo / ".dvc/tmp/site_cache")}
    write_params(repo / "params_base.yaml", repo / "params.yaml",
                 {stage: {**LONG[stage], "out_dir": f"artifacts/models/{stage}_base"}})
    run(["rlhf", "stage", stage, "--params", "params_base.yaml"], repo,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / f'{stage}_base.db'}"})
    base_metrics = json.loads((repo / f"metrics/{stage}.json").read_text())
    base_plot = plot_rows(repo / f"plots/{stage}/{plot}.json")

    write_params(repo / "params_b.yaml", repo / "params.yaml",
                 {stage: {**LONG[stage], "out_dir": f"artifacts/models/{stage}_b"}})
    uri = f"sqlite:///{tmp / f'{stage}.db'}"
    env["MLFLOW_TRACKING_URI"] = uri
    cmd = ["rlhf", "stage", stage, "--params", "params_b.yaml"]
    log = tmp / f"{stage}1.log"
    step = kill_after_first_checkpoint(start(cmd, repo, env, log), repo / f"artifacts/models/{stage}_b.ckpt", log)
    client, runs = mlflow_runs(uri, stage)
    assert len(runs) == 1 and runs[0].info.status == RunStatus.to_string(RunStatus.RUNNING)
    out = run(cmd, repo, env)
    assert f"(step {step})" in out.stderr and "continuing MLflow run" in out.stderr
    client, runs = mlflow_runs(uri, stage)
    assert len(runs) == 1 and runs[0].info.status == RunStatus.to_string(RunStatus.FINISHED)
    resumed = json.loads((repo / f"metrics/{stage}.json").read_text())
    assert without_timing(resumed) == without_timing(base_metrics)
    assert resumed["steps"] > step                                          # the kill was mid-run
    assert plot_rows(repo / f"plots/{stage}/{plot}.json") == base_plot
    assert_same_weights(repo / f"artifacts/models/{stage}_b", repo / f"artifacts/models/{stage}_base")
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/train")}
    assert steps == {r["step"] for r in base_plot}
    assert not (repo / f"artifacts/models/{stage}_b.ckpt").exists()
    print(f"\n{stage} resumed at step {step} of {resumed['steps']}: metrics identical")


def test_rerun_continues_the_interrupted_pipeline_run(crashed, rerun):
    """The flow's parent MLflow run is continued too: one rlhf_pipeline run, FINISHED, parent of the resumed ppo."""
    from mlflow.entities import RunStatus
    client, parents = mlflow_runs(crashed["uri"], "rlhf_pipeline")
    assert len(parents) == 1 and parents[0].info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert parents[0].data.tags.get("rlhf.resumed") == "1"
    _, ppo = mlflow_runs(crashed["uri"], "ppo")
    assert ppo[0].data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
