"""The real flow on a tiny config: real Prefect (test harness), real DVC in a temporary git repo, a temporary
MLflow SQLite store. Checks registered models, logged metrics, dvc.lock, and that a second run skips everything."""
from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from tests.pipeline.conftest import restored_tracking_uri, sh

pytestmark = pytest.mark.slow

STAGES = ["prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate"]


@pytest.fixture(scope="module")
def first_run(project, prefect_harness, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    cwd = os.getcwd()
    with restored_tracking_uri():                # the tests below set the process-wide URI (and the variable) too
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
    """MLflow's own loaders (transformers flavour, its pyfunc): no code of this project involved."""
    import mlflow
    mlflow.set_tracking_uri(first_run["uri"])
    pipe = mlflow.transformers.load_model("models:/rlhf-policy@challenger")
    assert type(pipe).__name__ == "TextGenerationPipeline"
    out = mlflow.pyfunc.load_model("models:/rlhf-policy@challenger").predict(
        ["the acting in this film", "i watched this"], params={"max_new_tokens": 6})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    import urllib.request
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _serve(project, model: str):
    """`rlhf serve` in its own process group on a free port; waits until it answers /ping. The virtualenv is not on
    PATH (as for a user who runs .venv/bin/rlhf without activating it)."""
    import subprocess
    import time
    import urllib.request

    from pathlib import Path

    from tests.pipeline.conftest import BIN
    port = _free_port()
    log = open(project / f"serve-{port}.log", "w")
    proc = subprocess.Popen([str(BIN / "rlhf"), "serve", "--model", model, "--port", str(port)], cwd=project,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PATH": os.pathsep.join(
                                p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)})
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return proc, f"http://127.0.0.1:{port}/invocations", log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise AssertionError(f"rlhf serve did not start:\n{(project / log.name).read_text()[-3000:]}")
            time.sleep(0.5)


def _stop(proc, log) -> None:
    import signal
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def test_serve_champion_policy_and_reward_model_over_http(first_run, project):
    """The real scoring server on 127.0.0.1 for the champions of the tiny run: two prompts in, two completions out;
    the reward model's scores equal `rlhf score` on the same inputs."""
    from mlflow import MlflowClient

    from tasks.registry import CHALLENGER, CHAMPION, POLICY_NAME, REWARD_NAME, set_champion, version_by_alias
    import mlflow
    mlflow.set_tracking_uri(first_run["uri"])
    for name in (POLICY_NAME, REWARD_NAME):      # the tiny run's gates may refuse: serving is the subject here
        if version_by_alias(name, CHAMPION) is None:
            set_champion(name, str(version_by_alias(name, CHALLENGER).version))
    assert MlflowClient().get_model_version_by_alias(POLICY_NAME, CHAMPION)
    prompts = ["the acting in this film", "i watched this"]
    responses = ["was superb and moving.", "was dull."]
    policy, policy_url, policy_log = _serve(project, f"models:/{POLICY_NAME}@{CHAMPION}")
    try:
        reward, reward_url, reward_log = _serve(project, f"models:/{REWARD_NAME}@{CHAMPION}")
        try:
            out = _post(policy_url, {"inputs": prompts, "params": {"max_new_tokens": 8}})
            assert len(out["predictions"]) == 2 and all(isinstance(t, str) for t in out["predictions"]), out
            got = _post(reward_url, {"dataframe_records": [{"prompt": prompts[0], "response": r} for r in responses]})
        finally:
            _stop(reward, reward_log)
    finally:
        _stop(policy, policy_log)
    args = [a for r in responses for a in ("--response", r)]
    cli = sh("rlhf", "score", "--model", f"models:/{REWARD_NAME}@{CHAMPION}", "--prompt", prompts[0], *args,
             "--json", cwd=project)
    want = [row["score"] for row in json.loads(cli.stdout)]
    assert got["predictions"] == pytest.approx(want, abs=1e-5)
    served = (project / policy_log.name).read_text()
    assert "a policy model" in served and f"{POLICY_NAME}@{CHAMPION}" in served


def test_policy_loads_with_mlflow_and_transformers_alone(first_run):
    """`mlflow.transformers.load_model` in an interpreter that cannot import this project: no site processing (so
    no editable install of rlhf-pipeline), only the site-packages folder on the path."""
    import subprocess
    import sys
    import sysconfig
    code = (
        "import sys; sys.path.append(sys.argv[1]); import importlib.util as u\n"
        "assert not any(u.find_spec(m) for m in ('rlhf', 'tasks', 'flows')), 'the project is importable'\n"
        "import mlflow; mlflow.set_tracking_uri(sys.argv[2])\n"
        "pipe = mlflow.transformers.load_model('models:/rlhf-policy@challenger')\n"
        "out = pipe(['the acting in this film', 'i watched this'], max_new_tokens=6, do_sample=True, "
        "return_full_text=False)\n"
        "print(len(out), type(pipe).__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, sysconfig.get_paths()["purelib"], first_run["uri"]],
                         capture_output=True, text=True, env=env, timeout=600, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["2", "TextGenerationPipeline"]
