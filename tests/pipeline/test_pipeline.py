"""The real flow on a tiny config: real Prefect (test harness), real DVC in a temporary git repo, a temporary
MLflow SQLite store. Checks registered models, logged metrics, dvc.lock, and that a second run skips everything."""
from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from tests.pipeline.conftest import sh

pytestmark = pytest.mark.slow

STAGES = ["prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate"]


@pytest.fixture(scope="module")
def first_run(project, prefect_harness, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    cwd = os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(project)
    try:
        from flows.pipeline import rlhf_pipeline
        first = rlhf_pipeline(params_path="params.yaml")
        second = rlhf_pipeline(params_path="params.yaml")
        yield {"first": first, "second": second, "uri": uri}
    finally:
        os.chdir(cwd)


def test_stage_order_comes_from_dvc_yaml(project):
    from tasks.graph import stage_order
    assert stage_order(project) == STAGES


def test_first_run_runs_every_stage_and_writes_metrics(first_run, project):
    assert list(first_run["first"]) == STAGES
    assert all(r != "skipped" for r in first_run["first"].values())
    params = yaml.safe_load((project / "params.yaml").read_text())
    ev = json.loads((project / "metrics" / "evaluate.json").read_text())
    # metrics/*.json write a non-finite value as null (tasks/tracking.py): every one here is a finite number
    for key in ("gold_score_sft", "gold_score_policy", "win_rate_vs_sft", "kl_to_ref", "reward_model_accuracy",
                "eos_rate_policy", "distinct2_sft", "distinct2_policy"):
        assert isinstance(ev[key], (int, float)) and math.isfinite(ev[key]), (key, ev[key])
    for key in ("win_rate_vs_sft", "reward_model_accuracy", "eos_rate_policy", "distinct2_sft", "distinct2_policy"):
        assert 0.0 <= ev[key] <= 1.0, (key, ev[key])
    # The per-prompt samples are the rows those metrics were computed from.
    samples = [json.loads(line) for line in
               (project / "artifacts" / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert 0 < len(samples) == ev["n_prompts"] <= params["evaluate"]["max_prompts"]
    assert all(isinstance(r["prompt"], str) and isinstance(r["sft"], str) and isinstance(r["policy"], str)
               for r in samples)
    n = len(samples)
    assert ev["gold_score_policy"] == pytest.approx(sum(r["gold_policy"] for r in samples) / n, rel=1e-9)
    assert ev["gold_score_sft"] == pytest.approx(sum(r["gold_sft"] for r in samples) / n, rel=1e-9)
    wins = [1.0 if r["judge_policy"] > r["judge_sft"] else 0.5 if r["judge_policy"] == r["judge_sft"] else 0.0
            for r in samples]
    assert ev["win_rate_vs_sft"] == pytest.approx(sum(wins) / n, rel=1e-9)
    # The PPO curve: one row per iteration, finite, ending where metrics/ppo.json ends.
    plot = json.loads((project / "plots" / "ppo" / "ppo.json").read_text())
    ppo = params["ppo"]
    n_iter = ppo["total_episodes"] // ppo["rollout_batch_size"]
    assert [r["step"] for r in plot] == list(range(1, n_iter + 1))
    assert [r["episodes"] for r in plot] == [ppo["rollout_batch_size"] * (i + 1) for i in range(n_iter)]
    for key in ("objective/kl", "objective/scores", "objective/entropy", "objective/kl_coef", "loss/policy_avg"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in plot), key
    final = json.loads((project / "metrics" / "ppo.json").read_text())
    assert (plot[-1]["objective/kl"], plot[-1]["objective/scores"]) == (final["objective_kl"], final["objective_scores"])
    assert final["iterations"] == n_iter


def test_second_run_skips_every_stage_and_dvc_is_clean(first_run, project):
    assert first_run["second"] == {s: "skipped" for s in STAGES}
    status = sh("dvc", "status", "--json", cwd=project)
    assert json.loads(status.stdout or "{}") == {}
    repro = sh("dvc", "repro", cwd=project)
    assert "up to date" in repro.stdout.lower() or "didn't change" in repro.stdout.lower(), repro.stdout


def test_models_registered_and_metrics_logged(first_run):
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=first_run["uri"])
    for name in ("rlhf-policy", "rlhf-reward-model"):
        v = client.get_model_version_by_alias(name, "challenger")
        assert str(v.version) == "1"
    exp = client.get_experiment_by_name("rlhf")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "rlhf_pipeline"]
    assert len(parents) == 2
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}
                and r.info.run_name != "promote"]
    assert sorted(r.info.run_name for r in children) == sorted(STAGES)
    ppo = next(r for r in children if r.info.run_name == "ppo")
    history = client.get_metric_history(ppo.info.run_id, "objective/kl")
    assert len(history) == 2                                            # one point per PPO iteration
    assert "final/objective_scores" in ppo.data.metrics


def test_policy_loads_from_registry_and_generates(first_run):
    import mlflow
    import pandas as pd
    mlflow.set_tracking_uri(first_run["uri"])
    model = mlflow.pyfunc.load_model("models:/rlhf-policy@challenger")
    out = model.predict(pd.DataFrame({"prompt": ["the acting in this film", "i watched this"]}))
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
