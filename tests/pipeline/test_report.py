"""`rlhf report` on a real tiny run: the flow on the tiny config in its own throwaway project (real Prefect harness,
DVC, a temporary MLflow store), then the page: figures, sample rows, evaluate numbers, one MLflow run per stage whose
final metrics match the files, registered versions; and, after a second (fully skipped) flow run, the run-id choice.

The project is this module's own, not conftest's shared ``project``: running the flow there first would leave
test_pipeline's "first run runs every stage" nothing to run when the modules execute in another order.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tasks.graph import declared_stages
from tests.pipeline.conftest import make_project, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(prefect_harness, tmp_path_factory):
    """Two flow runs (the second skips every stage) in a fresh project; yields its path, store and parent run ids."""
    import mlflow
    from mlflow import MlflowClient

    repo = make_project(tmp_path_factory.mktemp("report_project"))
    uri = f"sqlite:///{tmp_path_factory.mktemp('report_mlflow') / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "DVC_SITE_CACHE_DIR")}
    cwd = os.getcwd()
    os.environ["DVC_SITE_CACHE_DIR"] = str(repo / ".dvc" / "tmp" / "site_cache")
    mlflow.set_tracking_uri(uri)                 # sets the global URI (it wins over the env var) and the env var
    os.chdir(repo)
    try:
        from flows.pipeline import rlhf_pipeline
        first = rlhf_pipeline(params_path="params.yaml")
        second = rlhf_pipeline(params_path="params.yaml")
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(None)            # unset global and env, then put back what was there
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert all(r != "skipped" for r in first.values()) and all(r == "skipped" for r in second.values())
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rlhf")
    parents = client.search_runs([exp.experiment_id], "attributes.run_name = 'rlhf_pipeline'",
                                 order_by=["attributes.start_time ASC"])
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    stages = declared_stages(repo)
    yield {"repo": repo, "uri": uri, "first": parents[0].info.run_id, "second": parents[1].info.run_id,
           "stages": stages,
           "stage_runs": {r.info.run_name: r.info.run_id for r in children if r.info.run_name in stages}}


def report(tiny_run, out: Path, *extra: str) -> str:
    from flows.cli import main
    args = ["report", "--root", str(tiny_run["repo"]), "--out", str(out), "--tracking-uri", tiny_run["uri"], *extra]
    assert main(args) == 0
    pages = list(out.glob("*.html"))
    assert len(pages) == 1, pages
    return pages[0].read_text(encoding="utf-8")


def stage_rows(page: str) -> dict[str, str]:
    """The Stages table: stage name -> its row's HTML."""
    table = page.split('id="stages"')[1].split("</table>")[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"<tr><td>(\w+)</td>.*?</tr>", table)}


def test_report_of_a_given_run_has_every_part(tiny_run, tmp_path):
    page = report(tiny_run, tmp_path, "--run-id", tiny_run["first"])
    assert f"<h1>RLHF pipeline run {tiny_run['first']}</h1>" in page
    assert page.count('<img alt="') == 14                     # pretrain, sft, reward x2, PPO x7, PPO probe x3
    assert len(re.findall(r'<tr(?: class="\w+")?><td class="num">\d+</td><td class="txt">', page)) == 8
    evaluate = json.loads((tiny_run["repo"] / "metrics" / "evaluate.json").read_text())
    from report.model import fmt
    section = page.split('id="stage-evaluate"')[1].split("</section>")[0]
    for key, value in evaluate.items():
        assert f"<td>{key}</td><td class=\"num\">{fmt(value)}</td>" in section, key
    summary = json.loads((tiny_run["repo"] / "artifacts" / "preferences" / "summary.json").read_text())
    data = page.split('id="stage-preferences"')[1].split("</section>")[0]
    assert f"<td>read</td><td class=\"num\">{summary['read']}</td>" in data
    assert f"<td>pairs</td><td class=\"num\">{summary['pairs']}</td>" in data
    rows = stage_rows(page)
    assert list(rows) == tiny_run["stages"]
    for stage, run_id in tiny_run["stage_runs"].items():
        assert run_id in rows[stage] and "this pipeline run" in rows[stage] and "<td>yes</td>" in rows[stage], stage
    # Version and aliases as the registry holds them (champion too when the tiny run's gates happened to pass).
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=tiny_run["uri"])
    for stage, name in (("ppo", "rlhf-policy"), ("reward", "rlhf-reward-model")):
        aliases = list(client.get_model_version(name, "1").aliases)
        assert "challenger" in aliases and f"{name} v1 ({', '.join(aliases)})" in rows[stage], (aliases, rows[stage])
    # The flow gates its challengers at the end: the page shows that decision (from the MLflow promote run).
    promotion = page.split('id="promotion"')[1].split("</section>")[0]
    assert "decision: <b>" in promotion and "rlhf-policy" in promotion and "rlhf-reward-model" in promotion


def test_latest_run_skipped_every_stage_so_runs_come_from_the_earlier_one(tiny_run, tmp_path):
    page = report(tiny_run, tmp_path)                          # default: the latest pipeline run (the second)
    assert f"<h1>RLHF pipeline run {tiny_run['second']}</h1>" in page
    rows = stage_rows(page)
    for stage, run_id in tiny_run["stage_runs"].items():
        assert run_id in rows[stage] and "an earlier run" in rows[stage] and "<td>yes</td>" in rows[stage], stage


def test_promotion_logged_on_a_promote_run_is_shown(tiny_run, tmp_path):
    """flows/promote.py logs promotion/report.json on a run named 'promote' (nested when the flow runs it)."""
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=tiny_run["uri"])
    exp = client.get_experiment_by_name("rlhf")
    run = client.create_run(exp.experiment_id, run_name="promote",
                            tags={"mlflow.parentRunId": tiny_run["second"]})
    record = {"reward": {"model": "rlhf-reward-model", "decision": "promoted", "reason": "gates passed"},
              "policy": {"model": "rlhf-policy", "decision": "refused", "reason": "win_rate 0.3 < 0.5",
                         "gates": [{"name": "win_rate", "value": 0.3, "threshold": 0.5, "op": ">=", "status": "fail"}]},
              "run_id": run.info.run_id}
    try:
        client.log_dict(run.info.run_id, record, "promotion/report.json")
        client.set_terminated(run.info.run_id)
        page = report(tiny_run, tmp_path)
        assert "rlhf-reward-model: promoted; rlhf-policy: refused" in page
        assert "(from MLflow run <a href=" in page and run.info.run_id in page.split('id="promotion"')[1]
        assert "<td>win_rate</td><td class=\"num\">0.3</td>" in page
        first = report(tiny_run, tmp_path / "first", "--run-id", tiny_run["first"])
        # The first pipeline run shows its own (nested) promote run's decision, whatever the tiny run's gates said.
        own = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{tiny_run['first']}' and "
                                                      "attributes.run_name = 'promote'")
        decision = client.download_artifacts(own[0].info.run_id, "promotion/report.json", str(tmp_path))
        policy = json.loads(Path(decision).read_text())["policy"]["decision"]
        assert f"rlhf-policy: {policy}" in first
    finally:
        client.delete_run(run.info.run_id)       # the other tests see no promotion


def test_a_stage_run_id_resolves_to_its_pipeline_run(tiny_run, tmp_path, capsys):
    page = report(tiny_run, tmp_path, "--run-id", tiny_run["stage_runs"]["ppo"])
    assert f"<h1>RLHF pipeline run {tiny_run['first']}</h1>" in page
    assert "is the &#39;ppo&#39; stage run; showing its pipeline run" in page


def test_files_rewritten_outside_the_pipeline_run_are_traced_to_their_run(tiny_run, tmp_path, monkeypatch):
    """Last in this module: it changes the project's evaluate outputs (4 prompts instead of 8)."""
    import yaml
    repo = tiny_run["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["max_prompts"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run["uri"])
    sh("rlhf", "stage", "evaluate", "--params", str(tmp_path / "params.yaml"), cwd=repo)
    page = report(tiny_run, tmp_path / "out", "--run-id", tiny_run["first"])
    rows = stage_rows(page)
    assert tiny_run["stage_runs"]["evaluate"] not in rows["evaluate"]
    assert "another run (not of this pipeline run)" in rows["evaluate"] and "<td>yes</td>" in rows["evaluate"]
    assert tiny_run["stage_runs"]["ppo"] in rows["ppo"] and "this pipeline run" in rows["ppo"]
    assert len(re.findall(r'<tr(?: class="\w+")?><td class="num">\d+</td><td class="txt">', page)) == 4
