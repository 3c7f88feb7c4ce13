"""Bad settings fail before any expensive work, with one line naming the params key, in under 10 seconds of the
`rlhf stage` command (interpreter start and imports included): a length beyond the model's positions, a hub id
while the hub is offline, a missing column of a Parquet input."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rlhf.demo.chat_example import build_model, build_tokenizer
from tests.pipeline.conftest import BIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fail_fast")
    tok = build_tokenizer(["a small review of a small film."] * 30, vocab_size=300)
    build_model(tok).save_pretrained(root / "model")          # max_position_embeddings 256
    tok.save_pretrained(root / "model")
    pd.DataFrame([{"conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
                 ).to_parquet(root / "sft.parquet")
    return root


def stage(project: Path, name: str, params: dict) -> tuple[subprocess.CompletedProcess, float]:
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    t0 = time.perf_counter()
    out = subprocess.run([str(BIN / "rlhf"), "stage", name], cwd=project, capture_output=True, text=True, env=env,
                         timeout=120)
    seconds = time.perf_counter() - t0
    print(f"rlhf stage {name}: {seconds:.1f} s: {out.stderr.strip().splitlines()[-1:]}")
    return out, seconds


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rlhf: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[0]


def test_a_length_beyond_the_model_positions(project):
    out, seconds = stage(project, "sft", {"sft": {"model_path": "model", "train": {"max_length": 4096}}})
    line = one_line_error(out)
    assert "sft.train.max_length" in line and "4096" in line and "256 positions" in line and seconds < 10


def test_sampling_lengths_beyond_the_positions(project):
    out, seconds = stage(project, "collect", {"collect": {"model_path": "model", "prompts": "none.jsonl",
                                                          "sampling": {"max_prompt_tokens": 200,
                                                                       "max_new_tokens": 100}}})
    line = one_line_error(out)
    assert "collect.sampling.max_prompt_tokens + collect.sampling.max_new_tokens" in line and seconds < 10


def test_a_hub_id_while_offline(project):
    out, seconds = stage(project, "sft", {"sft": {"model_path": "Qwen/Qwen2.5-0.5B-Instruct"}})
    line = one_line_error(out)
    assert "sft.model_path" in line and "offline" in line and seconds < 10


def test_a_missing_column(project):
    out, seconds = stage(project, "prepare", {"prepare": {"sft": {"path": "sft.parquet",
                                                                  "columns": {"dialogue": "messages"}},
                                                          "use_corpus": False, "prompts": {"path": "sft.parquet"}}})
    line = one_line_error(out)
    assert "prepare.sft" in line and "dialogue" in line and seconds < 10
