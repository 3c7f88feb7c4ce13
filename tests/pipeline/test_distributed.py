"""Scale-out through Hugging Face accelerate: `rlhf stage sft|reward|ppo` (the command dvc.yaml runs) under
`accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2` and under `torchrun
--nproc_per_node 2`, on CPU (gloo). The loops go through accelerate (DDP wrapping, backward, clipping, reductions;
rlhf/distributed.py); nothing reduces gradients by hand.

- sft and reward (accelerate launch): the same optimiser steps as one process with the same global batch (the batch
  is sharded, the loss divided by the GLOBAL target / pair count times the world size, DDP averages): losses,
  accuracies and every weight within 1e-5 relative (only float summation order differs).
- ppo: rank r samples its half of each rollout batch with seed + r, so a 2-process run is another random run of the
  same algorithm, not the 1-process run. Checked: it completes, its metrics are finite, the score rises, the KL
  coefficient follows the controller from the global-batch KL, and `accelerate launch` and `torchrun` with the same
  seed give identical metrics, rows and weights.
- FSDP (configs/accelerate/fsdp.yaml: FSDP2, each decoder layer a unit) for sft and reward, 2 CPU processes: each
  rank holds about half the weights (``param_share``), and losses, accuracies and weights match one process within
  1e-5. accelerate 1.15 never turns FSDP on for CPU processes (AcceleratorState sets DistributedType.FSDP only for
  MULTI_GPU/NPU/XPU/..., state.py), so rlhf/distributed.py sets its state as it does on GPUs; sharding, gathering
  and the optimiser's shards are accelerate's and torch's. An FSDP sft run SIGKILLed after its first checkpoint
  (gathered weights and optimiser state) and started again ends with exactly the uninterrupted run's metrics, rows
  and weights. ppo and FSDP1 are refused in one line.
- Only rank 0 writes: one output folder per stage, no temporaries, no checkpoint folder left; one MLflow run a stage.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_resume import ROOT, make_project, project_env, run, without_timing, write_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SUPERVISED_RTOL = 1e-5
DIST_PARAMS = {
    "sft": {"train": {"epochs": 2, "grad_accum": 2}},                     # micro-batching on every rank too
    "reward": {"train": {"epochs": 2, "grad_accum": 2}},
    "ppo": {"total_episodes": 128, "rollout_batch_size": 16, "num_mini_batches": 2, "ppo_epochs": 2},
}
TWO_PROC_OUT = {"sft": {"out_dir": "artifacts/2p/sft"}, "reward": {"out_dir": "artifacts/2p/reward"},
                "ppo": {"out_dir": "artifacts/2p/policy"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Upstream stages and the 1-process sft, reward and ppo results, through the core in this process (the code a
    stage runs; tracking is not what is compared). The 2-process runs read the same inputs, write elsewhere."""
    repo = make_project(tmp_path_factory.mktemp("dist") / "project", DIST_PARAMS, dvc=False)
    from rlhf.config import load_params
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        params = load_params("params.yaml")
        results = {}
        for stage in ("prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo"):
            r = importlib.import_module(f"rlhf.stages.{stage}").run(getattr(params, stage), None)
            results[stage] = {"metrics": r.metrics, "plots": r.plots}
    finally:
        os.chdir(cwd)
    write_params(repo / "params_2p.yaml", repo / "params.yaml", TWO_PROC_OUT)
    return repo, results


def accelerate_launch(port: int, config: str | Path = "multi_cpu.yaml") -> list[str]:
    """``accelerate launch`` of 2 processes with a config of configs/accelerate/ (by name) or any file (a Path)."""
    path = config if isinstance(config, Path) else ROOT / "configs" / "accelerate" / config
    return [str(BIN / "accelerate"), "launch", "--config_file", str(path),
            "--num_processes", "2", "--main_process_port", str(port)]


TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]


def stage_cli(launcher: list[str], stage: str, repo: Path, uri: str, params: str = "params_2p.yaml") -> dict:
    """`<launcher> rlhf stage <stage> --params <params>`; returns its metrics and plot rows (rank 0 wrote them),
    copied aside so the next run of the stage does not overwrite them."""
    run(launcher + [str(BIN / "rlhf"), "stage", stage, "--params", params], repo,
        project_env(repo, MLFLOW_TRACKING_URI=uri, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1"), timeout=900)
    plots = {p.stem: json.loads(p.read_text()) for p in sorted((repo / "plots" / stage).glob("*.json"))}
    return {"metrics": json.loads((repo / "metrics" / f"{stage}.json").read_text()), "plots": plots}


@pytest.fixture(scope="module")
def two_processes(one_process, tmp_path_factory):
    repo, _ = one_process
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow2p') / 'mlflow.db'}"
    out = {stage: stage_cli(accelerate_launch(free_port()), stage, repo, uri) for stage in ("sft", "reward", "ppo")}
    policy = repo / "artifacts" / "2p" / "policy"
    shutil.copytree(policy, repo / "spare" / "policy-accelerate")
    out["ppo_torchrun"] = stage_cli(TORCHRUN, "ppo", repo, uri)
    return {**out, "uri": uri}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def weight_difference(a: Path, b: Path) -> tuple[float, float]:
    """(||w_b - w_a|| / ||w_a|| over every saved tensor, the worst tensor's max-abs difference over its max-abs)."""
    from tests.pipeline.test_resume import weights
    w1, w2 = weights(a), weights(b)
    assert w1.keys() == w2.keys() and w1
    diff = math.sqrt(sum(float((w1[k].double() - w2[k].double()).norm()) ** 2 for k in w1))
    worst = max(float((w1[k].double() - w2[k].double()).abs().max() / max(float(w1[k].double().abs().max()), 1e-12))
                for k in w1)
    return diff / math.sqrt(sum(float(w1[k].double().norm()) ** 2 for k in w1)), worst


def rows_without_timing(rows: list[dict]) -> list[dict]:
    return [without_timing({k: float(v) for k, v in r.items()}) for r in rows]


@pytest.mark.parametrize("stage,keys", [
    ("sft", ("train_loss", "val_loss", "val_perplexity")),
    ("reward", ("train_accuracy", "val_accuracy", "norm/raw_mean", "norm/raw_std", "norm/gain", "norm/bias")),
])
def test_supervised_stages_match_one_process(one_process, two_processes, stage, keys):
    _, one = one_process
    m1, m2 = one[stage]["metrics"], two_processes[stage]["metrics"]
    assert m1["steps"] == m2["steps"]
    diffs = {k: rel(m1[k], m2[k]) for k in keys}
    print(f"\n{stage} 1 vs 2 processes, relative differences: " + ", ".join(f"{k}={v:.1e}" for k, v in diffs.items()))
    assert max(diffs.values()) < SUPERVISED_RTOL, diffs
    loss = "loss/train" if stage == "sft" else "loss/reward"
    curve1 = [r[loss] for r in one[stage]["plots"]["loss"]]
    curve2 = [r[loss] for r in two_processes[stage]["plots"]["loss"]]
    assert len(curve1) == len(curve2) and max(rel(a, b) for a, b in zip(curve1, curve2)) < SUPERVISED_RTOL


@pytest.mark.parametrize("stage,one_dir", [("sft", "artifacts/models/sft"), ("reward", "artifacts/models/reward")])
def test_supervised_weights_match_one_process(one_process, two_processes, stage, one_dir):
    """The 2-process model's weights within 1e-5 of the 1-process ones: ||w2 - w1|| / ||w1|| over every saved tensor
    (measured 2e-8 sft, 6e-7 reward). Per tensor the worst max-abs difference is larger where a tensor is near zero
    (the reward model's final-norm bias: 5e-5 of its scale; Adam divides tiny gradient differences by tiny second
    moments); printed, not bounded."""
    repo, _ = one_process
    dw, worst = weight_difference(repo / one_dir, repo / "artifacts" / "2p" / stage)
    print(f"\n{stage} weights, 2 vs 1 processes: ||dw||/||w|| {dw:.1e}, worst tensor max-abs {worst:.1e}")
    assert dw < SUPERVISED_RTOL


def test_ppo_two_processes_learn_and_repeat_exactly(one_process, two_processes):
    """`rlhf stage ppo` under accelerate launch and under torchrun (same seed): it completes with finite metrics over
    the global batch, the score rises, and the two runs are identical (metrics, every logged row, weights)."""
    from tests.pipeline.test_resume import weights
    repo, _ = one_process
    a, t = two_processes["ppo"], two_processes["ppo_torchrun"]
    rows = [without_timing(r) for r in a["plots"]["ppo"]]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["episodes"] for r in rows] == [16 * i for i in range(1, 9)]  # the global batch, not a rank's half
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert all(math.isfinite(v) for v in a["metrics"].values() if isinstance(v, float))
    scores = [r["objective/scores"] for r in rows]
    print("\nppo 2 processes, score per iteration: " + ", ".join(f"{x:.3f}" for x in scores))
    assert sum(scores[4:]) > sum(scores[:4])                              # the second half scores higher
    other = [without_timing(r) for r in t["plots"]["ppo"]]
    assert rows == other, [{k: (r[k], o.get(k)) for k in r if r[k] != o.get(k)} for r, o in zip(rows, other)][:2]
    assert without_timing(a["metrics"]) == without_timing(t["metrics"])
    w_acc, w_tr = weights(repo / "spare" / "policy-accelerate"), weights(repo / "artifacts" / "2p" / "policy")
    assert w_acc.keys() == w_tr.keys() and all(bool((w_acc[k] == w_tr[k]).all()) for k in w_acc)


def test_ppo_kl_coefficient_follows_the_global_batch_kl(one_process, two_processes):
    """Each iteration's KL coefficient is the adaptive controller's step (rlhf/kl.py) from the previous one, taken
    with the KL every rank logged (the global-batch mean) and the GLOBAL episode count (rollout_batch_size, not a
    rank's half): recomputed here from the logged rows of the 1- and the 2-process runs."""
    from rlhf.config import load_params
    repo, one = one_process
    cfg = load_params(repo / "params_2p.yaml").ppo
    assert cfg.adaptive_kl
    for rows in (one["ppo"]["plots"]["ppo"], two_processes["ppo"]["plots"]["ppo"]):
        coef = cfg.kl_coef
        for r in rows:
            assert r["objective/kl_coef"] == pytest.approx(coef, rel=1e-12, abs=0)
            error = min(max(r["objective/kl"] / cfg.target_kl - 1.0, -0.2), 0.2)
            coef *= 1.0 + error * cfg.rollout_batch_size / cfg.kl_horizon
        assert coef != cfg.kl_coef                                             # it did move


def test_only_rank_zero_wrote_outputs_and_tracked(one_process, two_processes):
    """One folder per stage and nothing else (no .tmp-* or .ckpt left); one MLflow run per stage run, tagged with
    the world size and carrying MLflow's system metrics; the reward and ppo stages registered their models once a
    run."""
    from mlflow import MlflowClient
    repo, _ = one_process
    out = repo / "artifacts" / "2p"
    assert sorted(p.name for p in out.iterdir()) == ["policy", "reward", "sft"]
    client = MlflowClient(tracking_uri=two_processes["uri"])
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["ppo", "ppo", "reward", "sft"]
    assert all(r.info.status == "FINISHED" and r.data.tags["rlhf.world_size"] == "2" for r in runs)
    for r in runs:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(r.data.metrics), \
            (r.info.run_name, sorted(r.data.metrics))
    assert sorted(str(v.version) for v in client.search_model_versions("name='rlhf-policy'")) == ["1", "2"]


# -- FSDP ----------------------------------------------------------------------------------------------------------
FSDP_SFT = {"epochs": 6, "checkpoint_every": 10, "log_every": 5}       # 42 steps: a kill lands mid-run


def fsdp_launch(config: str | Path = "fsdp.yaml") -> list[str]:
    return accelerate_launch(free_port(), config) + ["--mixed_precision", "no"]


@pytest.fixture(scope="module")
def fsdp(one_process, tmp_path_factory):
    """FSDP runs of sft (longer, checkpointing) and reward (checkpointing every 3 steps: the gathered save runs), and
    the one-process sft of the same longer configuration (through the core, as one_process)."""
    repo, _ = one_process
    write_params(repo / "params_fsdp.yaml", repo / "params_2p.yaml", {
        "sft": {"out_dir": "artifacts/fsdp/sft", "train": FSDP_SFT},
        "reward": {"out_dir": "artifacts/fsdp/reward", "train": {"checkpoint_every": 3}}})
    write_params(repo / "params_fsdp1.yaml", repo / "params_fsdp.yaml", {"sft": {"out_dir": "artifacts/fsdp1/sft"}})
    from rlhf.config import load_params
    from rlhf.stages import sft
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        one_sft = sft.run(load_params("params_fsdp1.yaml").sft, None)
    finally:
        os.chdir(cwd)
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow_fsdp') / 'mlflow.db'}"
    out = {stage: stage_cli(fsdp_launch(), stage, repo, uri, "params_fsdp.yaml") for stage in ("sft", "reward")}
    return {**out, "one_sft": {"metrics": one_sft.metrics, "plots": one_sft.plots}, "uri": uri}


@pytest.mark.parametrize("stage,keys,one_dir", [
    ("sft", ("train_loss", "val_loss"), "artifacts/fsdp1/sft"),
    ("reward", ("train_accuracy", "val_accuracy", "norm/raw_mean", "norm/raw_std", "norm/gain", "norm/bias"),
     "artifacts/models/reward"),
])
def test_fsdp_shards_and_matches_one_process(one_process, fsdp, stage, keys, one_dir):
    repo, one = one_process
    m1 = fsdp["one_sft"]["metrics"] if stage == "sft" else one[stage]["metrics"]
    m2 = fsdp[stage]["metrics"]
    assert 0.4 < m2["param_share"] < 0.6                 # rank 0 held half of the weights: really sharded
    assert m1["steps"] == m2["steps"]
    diffs = {k: rel(m1[k], m2[k]) for k in keys}
    dw, _ = weight_difference(repo / one_dir, repo / "artifacts" / "fsdp" / stage)
    print(f"\n{stage} FSDP (2 processes) vs 1 process: " + ", ".join(f"{k}={v:.1e}" for k, v in diffs.items())
          + f", weights {dw:.1e}, rank 0 holds {m2['param_share']:.0%} of the weights")
    assert max(diffs.values()) < SUPERVISED_RTOL, diffs
    assert dw < SUPERVISED_RTOL
    assert not (repo / "artifacts" / "fsdp" / f"{stage}.ckpt").exists()


def test_fsdp_sft_killed_and_restarted_equals_uninterrupted(one_process, fsdp, tmp_path):
    """SIGKILL the FSDP launch after its first checkpoint (weights and optimiser state gathered whole by rank 0),
    start it again: it resumes there and ends with exactly the uninterrupted FSDP run's metrics, rows and weights."""
    from tests.pipeline.test_resume import assert_same_weights, kill_after_first_checkpoint, start
    repo, _ = one_process
    write_params(repo / "params_fsdp_k.yaml", repo / "params_fsdp.yaml", {"sft": {"out_dir": "artifacts/fsdp_k/sft"}})
    env = project_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'k.db'}")
    stage = [str(BIN / "rlhf"), "stage", "sft", "--params", "params_fsdp_k.yaml"]
    log = tmp_path / "killed.log"
    step = kill_after_first_checkpoint(start(fsdp_launch() + stage, repo, env, log), repo / "artifacts/fsdp_k/sft.ckpt",
                                       log)
    out = run(fsdp_launch() + stage, repo, env, timeout=600)
    assert f"(step {step})" in out.stderr, out.stderr[-3000:]
    resumed = json.loads((repo / "metrics" / "sft.json").read_text())
    assert resumed["steps"] > step
    assert without_timing(resumed) == without_timing(fsdp["sft"]["metrics"])
    rows = json.loads((repo / "plots" / "sft" / "loss.json").read_text())
    assert rows_without_timing(rows) == rows_without_timing(fsdp["sft"]["plots"]["loss"])
    assert_same_weights(repo / "artifacts/fsdp_k/sft", repo / "artifacts/fsdp/sft")
    print(f"\nFSDP sft killed after step {step} of {resumed['steps']}, resumed: metrics, rows, weights identical")


@pytest.mark.parametrize("what,stage,edit,message", [
    ("ppo", "ppo", None, "the ppo stage (ranks sample responses of different lengths"),
    ("FSDP1", "sft", ("fsdp_version: 2", "fsdp_version: 1"), "FSDP_VERSION=1: only FSDP2 is supported"),
])
def test_fsdp_refuses_what_it_does_not_support(one_process, tmp_path, what, stage, edit, message):
    """In one line, before any training."""
    import subprocess
    repo, _ = one_process
    cfg: str | Path = "fsdp.yaml"
    if edit:
        cfg = tmp_path / "fsdp.yaml"
        cfg.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text().replace(*edit))
    cmd = fsdp_launch(cfg) + [str(BIN / "rlhf"), "stage", stage, "--params", "params_2p.yaml"]
    out = subprocess.run(cmd, cwd=repo, env=project_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-3000:]


def test_scale_benchmark_runs_unchanged_on_cpu(tmp_path):
    """benchmarks/scale.py (the script a GPU machine runs with --procs 1,8) on CPU: 1 and 2 processes of the tiny
    model through accelerate launch; the same global batch gives the same loss."""
    import subprocess
    out = tmp_path / "scale.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--size", "tiny", "--procs", "1,2",
                          "--steps", "6", "--warmup", "2", "--batch", "4", "--seq", "32", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["processes"] for r in rows] == [1, 2] and all(r["tokens_per_s"] > 0 for r in rows)
    assert rel(rows[0]["final_loss"], rows[1]["final_loss"]) < 1e-4
    assert res.stdout.count("\n| ") == 3                                      # header + one row per process count
