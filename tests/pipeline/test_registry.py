"""The model registry against a real `mlflow server` on 127.0.0.1: register tiny models with lineage (checked against
the dvc.lock DVC writes), load them back and predict, promote (gate passes -> champion), refuse (gate fails ->
champion unchanged, decision recorded), rollback (as a Prefect flow), and the CLI (promote, generate, score,
lineage; one-line errors). The embedded SQLite store gets the same calls with only MLFLOW_TRACKING_URI changed.

The tests run in file order and share one registry: each step builds on the previous one."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.pipeline.conftest import BIN, restored_tracking_uri, sh

pytestmark = pytest.mark.slow

TEXTS = [f"the {a} was {b} and the {c} felt {d}." for a in ("film", "plot", "cast", "score")
         for b in ("great", "bad", "dull", "superb") for c in ("ending", "music") for d in ("long", "short", "warm")]
PROMPTS = ["the film was", "the plot was", "the cast was", "the score was", "the ending felt", "the music felt"]
DVC_YAML = """stages:
  reward:
    cmd: "true"
    deps: [models/sft, data]
    outs: [models/reward]
  ppo:
    cmd: "true"
    deps: [models/sft, models/reward, data]
    outs: [models/policy]
"""
# Gates for the tiny random models: the policy gates that matter here are KL to the reference and the win rate.
GATES = dict(min_win_rate=0.5, max_kl=1.0, min_gold_gain=0.0, min_reward_model_accuracy=None,
             reward_min_accuracy=0.0, reward_min_accuracy_gain=0.0, max_prompts=6, rm_pairs_k=3, seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, local artifact store, one worker). Started here, waited for
    in ``registry``, so it boots while the tiny models are built."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    yield {"uri": f"http://127.0.0.1:{port}", "proc": proc, "log": root / "server.log"}
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def wait_healthy(server: dict, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(server["uri"] + "/health", timeout=2):
                return server["uri"]
        except OSError:
            if server["proc"].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{server['log'].read_text()[-2000:]}")
            time.sleep(0.5)


def save(model, tok, path: Path) -> Path:
    from rlhf.stages.common import save_tokenizer_and_model
    if path.exists():
        shutil.rmtree(path)
    save_tokenizer_and_model(model, tok, path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC project holding tiny models: sft (the reference), far (another init, sharp), near (sft with
    small noise), reward (a scalar head on the sft trunk); data/ under DVC; params.yaml with evaluate paths."""
    import yaml
    from dvc.repo import Repo

    from rlhf.config import ModelConfig, TokenizerConfig
    from rlhf.modeling import RewardModel, build_gpt2, train_tokenizer
    root = tmp_path_factory.mktemp("registry_project")
    tok = train_tokenizer(TEXTS * 3, TokenizerConfig(vocab_size=300, min_frequency=1))
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64)
    sft = build_gpt2(cfg, tok, seed=0)
    save(sft, tok, root / "models" / "sft")
    far = build_gpt2(cfg, tok, seed=1)
    with torch.no_grad():
        far.transformer.wte.weight.mul_(40.0)          # peaked next-token distributions: far from the reference
    save(far, tok, root / "spare" / "far")
    near = build_gpt2(cfg, tok, seed=0)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    save(near, tok, root / "spare" / "near")
    torch.manual_seed(0)
    save(RewardModel(sft.transformer), tok, root / "models" / "reward")
    shutil.copytree(root / "models" / "sft", root / "models" / "policy")
    (root / "data").mkdir()
    (root / "data" / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (root / "data" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "evaluate": {"sft_path": "models/sft", "prompts": "data/prompts.jsonl", "corpus": "data/corpus.jsonl",
                     "sampling": {"max_new_tokens": 8, "batch_size": 16}},
        "promote": GATES}))
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("/models\n/spare\n/mlflow.db\n/mlartifacts\n")
    os.environ["DVC_SITE_CACHE_DIR"] = str(root / ".dvc" / "tmp" / "site_cache")
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "test@example.com", cwd=root)
    sh("git", "config", "user.name", "test", cwd=root)
    Repo.init(str(root)).close()
    with Repo(str(root)) as repo:
        repo.add(str(root / "data"))
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "tiny registry project", cwd=root)
    return root


@pytest.fixture(scope="module")
def registry(server, project):
    """Tests run inside the project, tracking to the server."""
    import mlflow
    uri = wait_healthy(server)
    cwd = os.getcwd()
    with restored_tracking_uri():
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.chdir(project)
        mlflow.set_tracking_uri(uri)
        try:
            yield {"uri": uri, "root": project}
        finally:
            os.chdir(cwd)


def register(stage: str, kind: str, name: str, folder: str, params: dict, metrics: dict) -> tuple[str, str, str]:
    """What tasks/stage.py does: a stage run nested under a pipeline run, then log_and_register."""
    import mlflow

    from tasks.registry import log_and_register
    from tasks.tracking import setup_tracking
    setup_tracking()
    with mlflow.start_run(run_name="rlhf_pipeline") as parent:
        with mlflow.start_run(run_name=stage, nested=True) as run:
            mlflow.log_params(params)
            mlflow.log_metrics({f"final/{k}": v for k, v in metrics.items()})
            version = log_and_register(folder, name, kind, {"stage": stage, "run_id": run.info.run_id})
    return version, run.info.run_id, parent.info.run_id


def use_policy(project: Path, spare: str) -> None:
    """The ppo stage's output folder now holds another model."""
    shutil.rmtree(project / "models" / "policy")
    shutil.copytree(project / "spare" / spare, project / "models" / "policy")


def cli(*args: str) -> tuple[int, str, str]:
    """`rlhf ...` in this process (the real entry point's main)."""
    import contextlib
    import io

    from flows.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_register_records_lineage_that_matches_dvc_lock(registry):
    from dvc.repo import Repo
    from mlflow import MlflowClient

    root = registry["root"]
    rv, _, _ = register("reward", "reward", "rlhf-reward-model", "models/reward", {"model_path": "models/sft"},
                        {"val_accuracy": 0.75})
    pv, run_id, parent_id = register("ppo", "policy", "rlhf-policy", "models/policy",
                                     {"policy_path": "models/sft", "reward_path": "models/reward", "lr": 1e-4},
                                     {"objective/kl": 0.0})
    assert (rv, pv) == ("1", "1")
    client = MlflowClient()
    mv = client.get_model_version_by_alias("rlhf-policy", "challenger")
    tags = mv.tags
    head = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    assert tags["lineage.git_commit"] == head and tags["lineage.git_dirty"] == "false"
    assert tags["lineage.run_id"] == run_id and tags["lineage.parent_run_id"] == parent_id
    assert json.loads(tags["lineage.params"])["reward_path"] == "models/reward"
    assert tags["lineage.reward_model_version"] == "1"          # the reward model it was trained on, by hash
    assert tags["metrics.objective/kl"] == "0"
    assert tags["lineage.hash_method"] == "dvc"
    data_md5 = (root / "data.dvc").read_text().split("md5: ")[1].split()[0]
    assert tags["lineage.data_dvc_md5"] == data_md5
    # dvc.lock is written after the stage: the hashes recorded at registration are exactly what DVC writes.
    with Repo(str(root)) as repo:
        repo.commit("ppo", force=True)
    import yaml
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["ppo"]
    assert {f"lineage.dep.{d['path']}": d["md5"] for d in lock["deps"]} == \
        {k: v for k, v in tags.items() if k.startswith("lineage.dep.")}
    assert lock["outs"][0]["md5"] == tags["lineage.model_md5"]
    # Model card: version description and a run artifact.
    assert mv.description.startswith("# rlhf-policy v1") and head in mv.description
    card = client.download_artifacts(run_id, "model_card/rlhf-policy-v1.md", str(root / "spare"))
    assert "## Lineage" in Path(card).read_text()


def test_registered_models_load_back_with_signature_and_predict(registry):
    import mlflow
    import pandas as pd

    from rlhf.modeling import RewardModel, load_tokenizer
    from rlhf.train_reward import score_texts
    from tasks.model_loading import load_model
    from tasks.registry import EXAMPLE_PROMPT
    # The policy is a transformers model: MLflow's own flavour loads it as a text-generation pipeline.
    info = mlflow.models.get_model_info("models:/rlhf-policy@challenger")
    assert set(info.flavors) == {"transformers", "python_function"}
    assert info.flavors["transformers"]["task"] == "text-generation"
    assert info.flavors["python_function"]["loader_module"] == "mlflow.transformers"
    assert {p.name for p in info.signature.params} >= {"temperature", "max_new_tokens", "do_sample"}
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    pipe = mlflow.transformers.load_model("models:/rlhf-policy@challenger")
    assert type(pipe).__name__ == "TextGenerationPipeline"
    served = mlflow.pyfunc.load_model("models:/rlhf-policy@challenger")
    out = served.predict([EXAMPLE_PROMPT, PROMPTS[0]], params={"max_new_tokens": 4})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # Our loader reads the same weights as data and samples reproducibly.
    policy = load_model("models:/rlhf-policy@challenger")
    df = pd.DataFrame({"prompt": PROMPTS[:2]})
    a = policy.predict(df, params={"seed": 3, "temperature": 0.7})
    assert len(a) == 2 and all(isinstance(t, str) for t in a)
    assert a == policy.predict(df, params={"seed": 3, "temperature": 0.7})      # seeded: reproducible
    local = load_model(str(registry["root"] / "models" / "policy"))
    assert a == local.predict(df, params={"seed": 3, "temperature": 0.7})       # the registered weights, exactly
    # A downloaded MLflow model folder loads the same, and is left as it was.
    folder = Path(mlflow.artifacts.download_artifacts("models:/rlhf-policy@challenger",
                                                      dst_path=str(registry["root"] / "spare" / "dl")))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    assert a == load_model(str(folder)).predict(df, params={"seed": 3, "temperature": 0.7})
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    # The reward model: a scoring signature, its folder a one-label sequence-classification model.
    rinfo = mlflow.models.get_model_info("models:/rlhf-reward-model/1")
    assert rinfo.signature.inputs.input_names() == ["prompt", "response", "ended"]
    assert rinfo.saved_input_example_info["artifact_path"] == "input_example.json"
    rm = load_model("models:/rlhf-reward-model/1")
    scores = rm.predict(pd.DataFrame({"prompt": PROMPTS[:2], "response": ["was great.", "was bad."]}))
    root = registry["root"]
    tok = load_tokenizer(root / "models" / "reward")
    ref = score_texts(RewardModel.from_pretrained(root / "models" / "reward"), tok, PROMPTS[:2],
                      ["was great.", "was bad."], [True, True], 64).tolist()
    assert scores == pytest.approx(ref, abs=1e-6)                               # the same weights, read as data


def test_first_promotion_compares_against_reference(registry):
    from mlflow import MlflowClient

    from flows.promote import promote
    result = promote("params.yaml")
    pol, rm = result["policy"], result["reward"]
    assert rm["decision"] == "promoted" and pol["decision"] == "promoted", (rm["reason"], pol["reason"])
    assert pol["baseline"] == "reference models/sft"
    assert pol["metrics"]["kl_to_ref"] == pytest.approx(0.0, abs=1e-5)           # v1 is the reference's weights
    assert pol["metrics"]["win_rate"] == 0.5 and pol["metrics"]["win_rate_by"] == "gold"
    client = MlflowClient()
    assert client.get_model_version_by_alias("rlhf-policy", "champion").version == "1"
    assert client.get_model_version_by_alias("rlhf-reward-model", "champion").version == "1"
    tags = client.get_model_version("rlhf-policy", "1").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.run_id"] == result["run_id"]
    dst = registry["root"] / "spare" / "report1"
    report = json.loads(Path(client.download_artifacts(result["run_id"], "promotion/report.json", str(dst)))
                        .read_text())
    assert report["policy"]["decision"] == "promoted" and report["gates"]["max_kl"] == 1.0
    md = Path(client.download_artifacts(result["run_id"], "promotion/report.md", str(dst))).read_text()
    assert "## rlhf-policy: promoted" in md and "| kl_to_ref |" in md
    # The report says how to serve the new champion.
    assert pol["serve"] == "rlhf serve --model models:/rlhf-policy@champion" and pol["serves"] == "1"
    assert "serve: `rlhf serve --model models:/rlhf-policy@champion` (now v1;" in md


def test_failing_gate_refuses_and_keeps_champion(registry):
    from mlflow import MlflowClient

    from flows.promote import promote
    use_policy(registry["root"], "far")                     # another random init: far from the reference
    pv, _, _ = register("ppo", "policy", "rlhf-policy", "models/policy", {"reward_path": "models/reward"}, {})
    assert pv == "2"
    client = MlflowClient()
    rc, out, err = cli("promote", "--dry-run", "--json", "--report", "spare/promote.json")
    assert rc == 0, err
    dry = json.loads(out)
    assert json.loads((registry["root"] / "spare" / "promote.json").read_text()) == dry
    assert dry["policy"]["decision"] == "refused" and dry["policy"]["dry_run"] and dry["run_id"] is None
    assert "promotion.decision" not in client.get_model_version("rlhf-policy", "2").tags     # dry run: no change
    result = promote("params.yaml")
    pol = result["policy"]
    assert pol["decision"] == "refused" and "kl_to_ref" in pol["reason"]
    assert pol["metrics"]["kl_to_ref"] > 1.0 and pol["baseline"] == "champion v1"
    assert result["reward"]["decision"] == "unchanged"     # its challenger is already champion
    assert client.get_model_version_by_alias("rlhf-policy", "champion").version == "1"
    tags = client.get_model_version("rlhf-policy", "2").tags
    assert tags["promotion.decision"] == "refused" and "kl_to_ref" in tags["promotion.reason"]
    assert float(tags["promotion.kl_to_ref"]) > 1.0
    again = promote("params.yaml")                         # decided versions are not re-evaluated
    assert again["policy"]["decision"] == "unchanged" and "already decided" in again["policy"]["reason"]


def test_promotion_then_rollback(registry, prefect_harness):
    from mlflow import MlflowClient

    from flows.promote import promote, rollback_flow
    from rlhf.config import PromoteConfig as Gates
    use_policy(registry["root"], "near")                    # close to the reference: small KL
    pv, _, _ = register("ppo", "policy", "rlhf-policy", "models/policy", {"reward_path": "models/reward"}, {})
    gates = Gates(**{**GATES, "min_win_rate": 0.0, "min_gold_gain": None})
    result = promote("params.yaml", gates=gates)
    assert result["policy"]["decision"] == "promoted", result["policy"]["reason"]
    assert 0 < result["policy"]["metrics"]["kl_to_ref"] < 1.0
    client = MlflowClient()
    assert client.get_model_version_by_alias("rlhf-policy", "champion").version == pv == "3"
    assert client.get_registered_model("rlhf-policy").tags["previous_champion"] == "1"
    from tasks.model_loading import servable
    assert servable("models:/rlhf-policy@champion") == ("models:/rlhf-policy/3", "policy")
    moved = rollback_flow("rlhf-policy")                   # the Prefect flow (deployments, schedules)
    assert servable("models:/rlhf-policy@champion") == ("models:/rlhf-policy/1", "policy")   # the next start
    assert moved == {"model": "rlhf-policy", "champion": "1", "rolled_back": "3", "previous_champion": None}
    assert client.get_model_version_by_alias("rlhf-policy", "champion").version == "1"
    assert "promotion.rolled_back" in client.get_model_version("rlhf-policy", "3").tags
    rc, out, err = cli("rollback", "--model", "rlhf-policy")
    assert rc == 1 and err.strip().count("\n") == 0 and "no previous champion" in err


def test_cli_generate_score_and_lineage(registry):
    rc, out, err = cli("generate", "--model", "models:/rlhf-policy@champion", "--prompt", "the film was",
                       "--n", "3", "--temperature", "0.7", "--seed", "0", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and {r["prompt"] for r in rows} == {"the film was"}
    rc, local, err = cli("generate", "--model", "models/sft", "--prompt", "the film was", "--n", "3",
                         "--temperature", "0.7", "--seed", "0", "--json")
    assert rc == 0, err
    assert json.loads(local) == rows                       # champion v1 is the reference's weights
    rc, out, err = cli("score", "--model", "models:/rlhf-reward-model@champion", "--prompt", "the film was",
                       "--response", "great.", "--response", "bad and dull.")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[1].endswith("bad and dull.")
    float(lines[0].split("\t")[0])
    rc, out, err = cli("lineage", "--model", "models:/rlhf-policy@champion")
    assert rc == 0 and "git checkout" in out and "lineage.data_dvc_md5" in out
    rc, out, err = cli("generate", "--model", "models:/rlhf-policy@nope", "--prompt", "x")
    assert rc == 1 and err.count("\n") == 1 and "has no alias 'nope'" in err and "champion" in err
    rc, out, err = cli("generate", "--model", "models:/rlhf-reward-model@champion", "--prompt", "x")
    assert rc == 1 and err.count("\n") == 1 and "is a reward model, not a policy model" in err


# A registered model's stored code that leaves a trace when it runs (only when the test arms it, so that MLflow's own
# check at log time does not trip it).
MARKER_CODE = """import os, pathlib
if os.environ.get("RLHF_TEST_MARKER"):
    pathlib.Path(os.environ["RLHF_TEST_MARKER"]).write_text("stored code ran")
import mlflow
from mlflow.pyfunc import PythonModel


class Planted(PythonModel):
    def predict(self, context, model_input, params=None):
        return [0.0] * len(model_input)


mlflow.models.set_model(Planted())
"""


def test_stored_code_never_runs(registry, tmp_path, monkeypatch):
    """Versions whose stored code would write a marker: `rlhf generate`, `rlhf score`, `rlhf serve` and promotion
    refuse them (one line, naming why) and the marker never appears."""
    import mlflow
    from mlflow import MlflowClient

    from flows.promote import promote
    from tasks.model_loading import ENTRY
    root, entry, marker = registry["root"], tmp_path / "planted_model.py", tmp_path / "marker"
    entry.write_text(MARKER_CODE)
    client = MlflowClient()
    names = ("rlhf-policy", "rlhf-reward-model")
    champions = {n: client.get_model_version_by_alias(n, "champion").version for n in names}
    with mlflow.start_run(run_name="planted"):
        pv = mlflow.pyfunc.log_model(name="policy", python_model=str(entry), registered_model_name="rlhf-policy",
                                     artifacts={"model": str(root / "models" / "policy")}).registered_model_version
        rv = mlflow.pyfunc.log_model(name="reward", python_model=str(entry), registered_model_name="rlhf-reward-model",
                                     artifacts={"model": str(root / "models" / "reward")}).registered_model_version
        # The installed entry file, but with a stored code path beside it (what the old format looked like).
        cv = mlflow.pyfunc.log_model(name="reward2", python_model=str(ENTRY), code_paths=[str(entry)],
                                     artifacts={"model": str(root / "models" / "reward")},
                                     registered_model_name="rlhf-reward-model").registered_model_version
    monkeypatch.setenv("RLHF_TEST_MARKER", str(marker))
    rc, _, err = cli("generate", "--model", f"models:/rlhf-policy/{pv}", "--prompt", "the film was")
    assert rc == 1 and err.count("\n") == 1 and "differs from this install's" in err, err
    rc, _, err = cli("score", "--model", f"models:/rlhf-reward-model/{rv}", "--prompt", "p", "--response", "r")
    assert rc == 1 and err.count("\n") == 1 and "differs from this install's" in err, err
    rc, _, err = cli("score", "--model", f"models:/rlhf-reward-model/{cv}", "--prompt", "p", "--response", "r")
    assert rc == 1 and err.count("\n") == 1 and "stores code paths" in err, err
    rc, _, err = cli("serve", "--model", f"models:/rlhf-reward-model/{rv}", "--port", str(free_port()))
    assert rc == 1 and "refused" in err, err
    client.set_registered_model_alias("rlhf-policy", "challenger", pv)
    client.set_registered_model_alias("rlhf-reward-model", "challenger", rv)
    result = promote("params.yaml")
    for kind in ("reward", "policy"):
        r = result[kind]
        assert r["decision"] == "refused" and r["reason"].startswith("not loaded:"), r
        assert client.get_model_version(r["model"], r["challenger"]).tags["promotion.decision"] == "refused"
    assert {n: client.get_model_version_by_alias(n, "champion").version for n in champions} == champions
    assert not marker.exists()


def test_cli_errors_are_one_line_without_a_server(registry):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run([str(BIN / "rlhf"), "score", "--prompt", "p", "--response", "r"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no MLflow server at http://127.0.0.1" in out.stderr, out.stderr


def test_embedded_sqlite_store_works_the_same(registry, tmp_path):
    """No code change beyond MLFLOW_TRACKING_URI: register, load by alias, generate through the CLI."""
    import mlflow
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        version, _, _ = register("ppo", "policy", "rlhf-policy", "models/policy", {"reward_path": "models/reward"}, {})
        assert version == "1"
        rc, out, err = cli("generate", "--model", "models:/rlhf-policy@challenger", "--prompt", "the plot was")
        assert rc == 0 and out.strip(), err
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = registry["uri"]
        mlflow.set_tracking_uri(registry["uri"])
