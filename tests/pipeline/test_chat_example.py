"""The chat example (examples/chat, `make example-chat`) end to end on a smaller config: its writer builds the tiny
chat model and the Parquet data, `rlhf run` in that folder runs prepare, sft, preferences, reward, ppo and evaluate
with the reward-model judge, registers both models in MLflow and leaves `dvc status` clean; a second writer call
keeps what is there (your own model and data are never overwritten)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import BIN, ROOT, restored_tracking_uri, sh

pytestmark = pytest.mark.slow

SMALLER = {"sft": {"train": {"epochs": 1}}, "reward": {"train": {"epochs": 1}},
           "ppo": {"total_episodes": 128, "rollout_batch_size": 32},
           "evaluate": {"max_prompts": 24}, "promote": {"max_prompts": 16}}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A git repository holding the core (the example's deps point at ../../rlhf) and a copy of examples/chat."""
    repo = tmp_path_factory.mktemp("chat_repo")
    shutil.copytree(ROOT / "rlhf", repo / "rlhf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples" / "chat", repo / "examples" / "chat",
                    ignore=shutil.ignore_patterns("model", "data", "artifacts", "metrics", "mlflow.db", "mlartifacts",
                                                  "dvc.lock", "tmp"))
    chat = repo / "examples" / "chat"
    params = merge(yaml.safe_load((chat / "params.yaml").read_text()), SMALLER)
    (chat / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "t@example.com", cwd=repo)
    sh("git", "config", "user.name", "t", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "chat example", cwd=repo)
    return chat


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PREFECT_HOME": str(cwd / ".prefect"),
           "DVC_SITE_CACHE_DIR": str(cwd / ".dvc" / "tmp" / "site_cache"), "RLHF_PROGRESS": "lines"}
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def test_the_chat_example_runs_end_to_end(example):
    write = [str(BIN / "python"), "-m", "rlhf.demo.chat_example", ".", "--n-sft", "300", "--n-prompts", "160",
             "--warmup-steps", "60"]
    first = run(example, *write)
    assert "data/sft.parquet" in first.stdout and "model/ (Qwen2" in first.stdout
    weights = (example / "model" / "model.safetensors").read_bytes()
    assert "already there (kept)" in run(example, *write).stdout
    assert (example / "model" / "model.safetensors").read_bytes() == weights

    out = run(example, str(BIN / "rlhf"), "run")
    assert "stages run: prepare, sft, preferences, reward, ppo, evaluate" in out.stdout
    m = json.loads((example / "metrics" / "evaluate.json").read_text())
    for key in ("win_rate_vs_sft", "kl_to_ref", "reward_model_accuracy", "reward_model_heldout_accuracy",
                "judge_score_sft", "judge_score_policy", "eos_rate_policy"):
        assert isinstance(m[key], float), key
    assert "gold_score_sft" not in m                                      # no gold judge on real data
    assert 0.0 <= m["win_rate_vs_sft"] <= 1.0 and m["reward_model_heldout_pairs"] > 0
    row = json.loads((example / "artifacts" / "evaluate" / "samples.jsonl").read_text().splitlines()[0])
    assert isinstance(row["prompt"], list) and row["prompt"][0]["role"] == "user"
    assert row["rendered_prompt"].startswith("<|im_start|>user\n") and row["rendered_prompt"].endswith(
        "<|im_start|>assistant\n")
    sft_rows = (example / "artifacts" / "data" / "sft_train.jsonl").read_text().splitlines()
    assert "messages" in json.loads(sft_rows[0])
    assert run(example, "dvc", "status").stdout.strip() in ("Data and pipelines are up to date.", "")

    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{example / 'mlflow.db'}")
    names = {rm.name for rm in client.search_registered_models()}
    assert {"rlhf-policy", "rlhf-reward-model"} <= names
    # A chat policy is registered for MLflow's chat task: messages in, the chat template applied, a completion out.
    import mlflow

    from tasks.model_loading import load_model
    with restored_tracking_uri():
        mlflow.set_tracking_uri(f"sqlite:///{example / 'mlflow.db'}")     # the process-wide URI and the variable
        info = mlflow.models.get_model_info("models:/rlhf-policy@challenger")
        assert info.flavors["transformers"]["inference_task"] == "llm/v1/chat"   # on a text-generation pipeline
        reply = mlflow.pyfunc.load_model("models:/rlhf-policy@challenger").predict(
            {"messages": [{"role": "user", "content": "Continue this movie review: the acting"}], "max_tokens": 8})
        assert reply[0]["object"] == "chat.completion"
        assert isinstance(reply[0]["choices"][0]["message"]["content"], str)
        assert load_model("models:/rlhf-policy@challenger", kind="policy").kind == "policy"   # ours: as data
