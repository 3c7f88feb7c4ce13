"""Scale-out: the sft, reward and ppo stages run unchanged with 2 CPU processes (gloo) under `torchrun` and under
`accelerate launch --multi_gpu`, and agree with one process.

- sft and reward: the same optimiser steps (the batch is sharded, the loss divided by the GLOBAL target / pair count,
  gradients summed): final losses and accuracies within 1e-4 relative, and the saved models give the same logits /
  scores within 1e-4 of their scale (only float summation order differs; measured 5e-7 and 1e-6).
- ppo: rank r samples its half of each rollout batch with seed + r, so a 2-process run is a different random run of
  the same algorithm, not the 1-process run with another reduction order. Checked:
  * bit for bit against the same two-rank algorithm run in THIS process without torch.distributed (two trainers,
    ranks 0 and 1, in threads; gradients and logged statistics averaged over the two as rlhf/distributed.py
    documents): every logged statistic of every iteration (KL, scores, entropy, KL coefficient, losses...) and the
    saved weights. A mean over two ranks is one addition (commutative in IEEE arithmetic) and a division by 2, so
    gloo's reduction order cannot change a bit; everything else is the same kernels on the same rows, one thread.
  * the KL coefficient follows the controller rule from the logged (global-batch) KL and the global episode count.
  * against the 1-process algorithm, statistically: one pair of runs differs by seed-to-seed noise (run-mean score:
    0.37 for seed 0; standard deviation of the difference over seeds 0-11: 0.22), so the comparison is over 12 seeds
    in this process, within 3 standard errors of the mean difference.
- Only rank 0 writes: one output folder per stage, no temporaries, no checkpoint folder left.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import socket
import sys
import threading
from pathlib import Path
from unittest import mock

import pytest

from tests.pipeline.test_resume import make_project, project_env, run, without_timing, write_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SUPERVISED_RTOL = 1e-4
DIST_PARAMS = {
    "sft": {"train": {"epochs": 2, "grad_accum": 2}},                     # micro-batching on every rank too
    "reward": {"train": {"epochs": 2, "grad_accum": 2}},
    "ppo": {"total_episodes": 64, "rollout_batch_size": 16, "num_mini_batches": 2, "ppo_epochs": 2},
}
TWO_PROC_OUT = {"sft": {"out_dir": "artifacts/2p/sft"}, "reward": {"out_dir": "artifacts/2p/reward"},
                "ppo": {"out_dir": "artifacts/2p/policy"}}
# 1 process vs 2 processes of PPO over these seeds (in this process, ~0.5 s a run). Bounds on the mean over seeds of
# (1-process run mean - 2-process run mean): 3 standard errors, from the spread measured over these seeds:
# sd of the per-seed difference 0.22 (score), 0.0055 (KL), 0.87 (entropy, nats summed over a response) -> SE / 12**0.5.
# Measured mean differences: -0.016, 0.0007, -0.19.
PPO_SEEDS = range(12)
PPO_MEAN_DIFF_BOUND = {"objective/scores": 0.19, "objective/kl": 0.005, "objective/entropy": 0.75}


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


def launch(launcher: list[str], stages: list[str], repo: Path, report: str) -> dict:
    cmd = launcher + ["-m", "rlhf.distributed", *stages, "--params", "params_2p.yaml", "--report", report]
    run(cmd, repo, project_env(repo), timeout=600)
    out = json.loads((repo / report).read_text())
    assert all(out[s]["world_size"] == 2 for s in stages)
    return out


@pytest.fixture(scope="module")
def two_processes(one_process):
    repo, _ = one_process
    torchrun = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], ["sft", "ppo"], repo,
                      "torchrun.json")
    accel = launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())],
                   ["reward"], repo, "accelerate.json")
    return {**torchrun, **accel}


# -- PPO's data-parallel algorithm in one process, without torch.distributed ----------------------------------------
def ppo_ranks(cfg, world: int):
    """PPO as the stage runs it on each of ``world`` ranks (rlhf/stages/ppo.py: seed, build the models, rank 0's
    weights on every rank, PPOTrainer with the rank's context), the ranks in threads of this process. The two
    collectives PPOTrainer makes are replaced by what rlhf/distributed.py says they compute: the gradients averaged
    over ranks after each mini-batch (a gradient missing on one rank counts as zero there) and the logged statistics
    averaged. Returns rank 0's logged rows and every rank's trainer."""
    import torch

    import rlhf.ppo as core
    from rlhf import accel
    from rlhf.data import load_jsonl
    from rlhf.distributed import DistContext
    from rlhf.modeling import load_tokenizer
    from rlhf.stages.common import seed_everything
    from rlhf.stages.ppo import build_models, trainable

    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    rows: list[dict] = []
    trainers = []
    for rank in range(world):                         # loading is not thread-safe in transformers: one at a time
        seed_everything(cfg.seed)
        models = build_models(cfg, tok, accel.resolve_device(cfg.compute.device, rank, "ppo.compute.device"))
        for name, module in trainable(models).items():
            if rank:
                module.load_state_dict(trainable(trainers[0].models)[name].state_dict())      # broadcast from 0
        trainers.append(core.PPOTrainer(cfg, models, tok, prompts, dist=DistContext(world, rank),
                                        on_log=(lambda it, m: rows.append({"step": it, **m})) if rank == 0 else None))
    if world == 1:
        trainers[0].train()
        return rows, trainers

    barrier = threading.Barrier(world, timeout=600)
    posted: list = [None] * world

    def exchange(rank: int, value) -> list:
        """Every rank's value, in rank order (called by every rank at the same point, as a collective)."""
        posted[rank] = value
        barrier.wait()
        values = list(posted)
        barrier.wait()                                # nobody overwrites a slot before everyone has read it
        return values

    def mean_gradients(params, ctx, average):
        assert average                                # PPO averages the ranks' gradients, as DDP does
        params = [p for p in params if p.requires_grad]
        every = exchange(ctx.rank, [p.grad for p in params])
        for i, p in enumerate(params):
            grads = [g[i] for g in every]
            if all(g is None for g in grads):
                p.grad = None
            else:
                total = torch.zeros_like(p)
                for g in grads:
                    total = total + (g if g is not None else 0)
                p.grad = total / world

    def mean_statistics(metrics, ctx):
        every = exchange(ctx.rank, dict(metrics))
        return {**metrics, **{k: sum(m[k] for m in every) / world for k in metrics}}

    errors: list = []

    def train(rank: int) -> None:
        try:
            trainers[rank].train()
        except BaseException as e:                    # let the other rank out of the barrier, report it below
            errors.append(e)
            barrier.abort()

    with mock.patch.object(core, "sync_gradients", mean_gradients), \
            mock.patch.object(core, "all_reduce_mean", mean_statistics):
        threads = [threading.Thread(target=train, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return rows, trainers


@pytest.fixture(scope="module")
def ppo_in_process(one_process):
    """PPO_SEEDS x (1 rank, 2 ranks) of the ppo section of params_2p.yaml, in this process."""
    from rlhf.config import load_params
    repo, _ = one_process
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        cfg = load_params("params_2p.yaml").ppo
        runs = {}
        for seed in PPO_SEEDS:
            one, _ = ppo_ranks(dataclasses.replace(cfg, seed=seed), 1)
            two, trainers = ppo_ranks(dataclasses.replace(cfg, seed=seed), 2)
            runs[seed] = {1: one, 2: two, "policy": trainers[0].models.policy if seed == cfg.seed else None}
    finally:
        os.chdir(cwd)
    return cfg, runs


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


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


def test_ppo_two_processes_equal_the_two_rank_algorithm_run_in_one_process(one_process, two_processes, ppo_in_process):
    """torchrun's 2-process PPO == the in-process two-rank run, bit for bit: every logged statistic of every
    iteration (per-iteration KL first) and the saved weights; and the in-process single rank == the 1-process stage,
    which shows the in-process harness seeds and builds the models as the stage does."""
    import torch
    from safetensors.torch import load_file

    from rlhf.modeling import VALUE_HEAD_FILE
    repo, one = one_process
    cfg, runs = ppo_in_process
    torchrun, emulated = rows_without_timing(two_processes["ppo"]["plots"]["ppo"]), rows_without_timing(runs[cfg.seed][2])
    assert [r["step"] for r in torchrun] == [1, 2, 3, 4]
    assert [r["episodes"] for r in torchrun] == [16, 32, 48, 64]              # the global batch, not a rank's half
    print("\nppo per-iteration KL, 2 processes: " + ", ".join(f"{r['objective/kl']:.6g}" for r in torchrun))
    assert [r["objective/kl"] for r in torchrun] == [r["objective/kl"] for r in emulated]
    assert torchrun == emulated
    assert rows_without_timing(one["ppo"]["plots"]["ppo"]) == rows_without_timing(runs[cfg.seed][1])
    # The saved model is the trained one: exactly the in-process rank 0's policy, and no longer the SFT start.
    policy = runs[cfg.seed]["policy"]
    saved, head = load_file(str(repo / "artifacts/2p/policy/model.safetensors")), load_file(
        str(repo / "artifacts/2p/policy" / VALUE_HEAD_FILE))
    lm = policy.lm.state_dict()
    assert saved and all(torch.equal(saved[k], lm[k]) for k in saved)
    assert torch.equal(head["weight"], policy.value_head.weight) and torch.equal(head["bias"], policy.value_head.bias)
    start = load_file(str(repo / "artifacts/models/sft/model.safetensors"))
    assert any(not torch.equal(saved[k], start[k]) for k in saved)


def test_ppo_kl_coefficient_follows_the_global_batch_kl(one_process, two_processes, ppo_in_process):
    """Each iteration's KL coefficient is the adaptive controller's step (rlhf/kl.py) from the previous one, taken
    with the KL every rank logged (the global-batch mean) and the GLOBAL episode count (rollout_batch_size, not a
    rank's half): recomputed here from the logged rows of both runs."""
    _, one = one_process
    cfg, _ = ppo_in_process
    assert cfg.adaptive_kl
    for rows in (one["ppo"]["plots"]["ppo"], two_processes["ppo"]["plots"]["ppo"]):
        coef = cfg.kl_coef
        for r in rows:
            assert r["objective/kl_coef"] == pytest.approx(coef, rel=1e-12, abs=0)
            error = min(max(r["objective/kl"] / cfg.target_kl - 1.0, -0.2), 0.2)
            coef *= 1.0 + error * cfg.rollout_batch_size / cfg.kl_horizon
        assert coef != cfg.kl_coef                                             # it did move


def test_ppo_two_processes_score_like_one_process_over_seeds(ppo_in_process):
    """The 2-process algorithm (bit for bit the torchrun run, test above) against the 1-process one over PPO_SEEDS:
    the mean over seeds of the run-mean score, KL and entropy agree within 3 standard errors."""
    _, runs = ppo_in_process

    def run_mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    for key, bound in PPO_MEAN_DIFF_BOUND.items():
        diffs = [run_mean(runs[s][1], key) - run_mean(runs[s][2], key) for s in PPO_SEEDS]
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        print(f"\nppo {key}: mean over {len(diffs)} seeds of (1p - 2p) {mean:+.4f} (bound {bound}); per-seed sd {sd:.4f}")
        assert abs(mean) < bound, (key, diffs)


def test_only_rank_zero_wrote_outputs(one_process, two_processes):
    """One folder per stage and nothing else; the sft and reward models saved by rank 0 load and give the 1-process
    models' logits / scores within SUPERVISED_RTOL of their scale (the PPO policy: compared bit for bit above)."""
    import torch

    from rlhf.data import load_jsonl
    from rlhf.modeling import RewardModel, load_causal_lm, load_tokenizer, position_ids_from_mask
    repo, _ = one_process
    out = repo / "artifacts" / "2p"
    assert sorted(p.name for p in out.iterdir()) == ["policy", "reward", "sft"]      # no .tmp-* or .ckpt left
    texts = [r["prompt"] + r["completion"] for r in load_jsonl(repo / "artifacts/data/sft_val.jsonl")]
    assert texts

    def logits(path: Path) -> torch.Tensor:
        tok = load_tokenizer(path)
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
        with torch.no_grad():
            out = load_causal_lm(path, tok).eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                                   position_ids=position_ids_from_mask(enc["attention_mask"])).logits
        return out[enc["attention_mask"].bool()]                                     # (real tokens, V)

    def scores(path: Path) -> torch.Tensor:
        rm = RewardModel.from_pretrained(path).eval()
        enc = rm.tokenizer([t + rm.tokenizer.eos_token for t in texts], return_tensors="pt", padding=True,
                           truncation=True, max_length=48)
        with torch.no_grad():
            return rm(enc["input_ids"], enc["attention_mask"])

    for name, one_path, fn in (("sft", "artifacts/models/sft", logits), ("reward", "artifacts/models/reward", scores)):
        a, b = fn(repo / one_path), fn(out / name)
        assert a.shape == b.shape and a.numel() and bool(torch.isfinite(b).all())
        diff = ((a - b).abs().max() / a.abs().max()).item()
        print(f"\n{name} saved by 2 processes vs 1 process: outputs differ by {diff:.1e} of their scale")
        assert diff < SUPERVISED_RTOL


def test_rlhf_stage_under_torchrun_logs_one_mlflow_run(one_process, tmp_path):
    """The real command (`rlhf stage sft`, what dvc.yaml runs) under torchrun: one MLflow run, rank 0's metrics."""
    from mlflow import MlflowClient
    repo, one = one_process
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(BIN / "rlhf"), "stage", "sft",
         "--params", "params_2p.yaml"], repo, project_env(repo, MLFLOW_TRACKING_URI=uri))
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert [r.info.run_name for r in runs] == ["sft"] and runs[0].info.status == "FINISHED"
    metrics = without_timing(json.loads((repo / "metrics" / "sft.json").read_text()))
    assert rel(metrics["train_loss"], one["sft"]["metrics"]["train_loss"]) < SUPERVISED_RTOL
