"""Adding a stage touches dvc.yaml, params.yaml, the stage's core module (its Config dataclass and run) and its docs
row, and nothing else: a new stage `wordcount` is added that way to a throwaway copy of the project, then runs
through `rlhf run` (Prefect flow, its own temporary Prefect server) and `dvc repro`, with its metrics in MLflow and
in the HTML report. The copy's dvc.yaml keeps only `prepare` (the new stage's upstream) so the test stays quick;
no file outside the copy is edited, and its code is found through PYTHONPATH."""
from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import BIN, ROOT, sh

pytestmark = pytest.mark.slow

STAGE_MODULE = '''
"""wordcount: how often each word occurs in the training corpus (a stage added by a test)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlhf.data import load_jsonl
from rlhf.stages.common import StageResult


@dataclass(frozen=True)
class Config:
    corpus: str = "artifacts/data/corpus_train.jsonl"
    out_dir: str = "artifacts/wordcount"
    min_count: int = 2


def run(cfg: Config, on_log=None) -> StageResult:
    counts = Counter(w for r in load_jsonl(cfg.corpus) for w in r["text"].split())
    frequent = {w: n for w, n in counts.items() if n >= cfg.min_count}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "counts.json").write_text(json.dumps(frequent, sort_keys=True))
    if on_log:
        on_log(1, {"progress/words": len(counts)})
    return StageResult({"distinct_words": len(counts), "frequent_words": len(frequent)},
                       outputs={"counts": str(out / "counts.json")})
'''


def add_stage(repo: Path) -> None:
    """The four edits: dvc.yaml, params.yaml, the core module, the docs row."""
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc["stages"] = {"prepare": dvc["stages"]["prepare"], "wordcount": {
        "cmd": "rlhf stage wordcount", "deps": ["artifacts/data/corpus_train.jsonl", "rlhf/stages/wordcount.py"],
        "params": ["wordcount"], "outs": ["${wordcount.out_dir}"],
        "metrics": [{"metrics/wordcount.json": {"cache": False}}]}}
    dvc.pop("plots", None)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["wordcount"] = {"corpus": "artifacts/data/corpus_train.jsonl", "out_dir": "artifacts/wordcount",
                           "min_count": 2}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "rlhf" / "stages" / "wordcount.py").write_text(textwrap.dedent(STAGE_MODULE).lstrip())
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs" / "stages.md").write_text("| `wordcount` | counts the corpus' words | `artifacts/wordcount/` |\n")


@pytest.fixture(scope="module")
def stage_project(tmp_path_factory):
    from tests.pipeline.conftest import make_project
    repo = make_project(tmp_path_factory.mktemp("new_stage"))
    add_stage(repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "add the wordcount stage", cwd=repo)
    return repo


def run_in(repo: Path, *cmd: str):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(repo),
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "PREFECT_HOME": str(repo / ".prefect"),
           "DVC_SITE_CACHE_DIR": str(repo / ".dvc" / "tmp" / "site_cache"), "RLHF_PROGRESS": "lines"}
    env.pop("PREFECT_API_URL", None)
    import subprocess
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_a_new_stage_runs_through_the_flow_dvc_mlflow_and_the_report(stage_project):
    repo = stage_project
    words = {w for line in (repo / "data" / "corpus.jsonl").read_text().splitlines()
             for w in json.loads(line)["text"].split()}
    out = run_in(repo, str(BIN / "rlhf"), "run")
    assert "stages run: prepare, wordcount" in out.stdout
    first = json.loads((repo / "metrics" / "wordcount.json").read_text())
    assert 0 < first["frequent_words"] < first["distinct_words"] <= len(words)
    assert run_in(repo, "dvc", "status").stdout.strip() in ("Data and pipelines are up to date.", "")

    # dvc repro runs the new stage's own command when its params change, and only it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["wordcount"]["min_count"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = run_in(repo, "dvc", "repro")
    assert "Running stage 'wordcount'" in repro.stdout and "Running stage 'prepare'" not in repro.stdout
    second = json.loads((repo / "metrics" / "wordcount.json").read_text())
    assert second["frequent_words"] == second["distinct_words"] == first["distinct_words"]

    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rlhf")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'wordcount'",
                              order_by=["attributes.start_time ASC"])
    assert [r.data.metrics["final/frequent_words"] for r in runs] == [first["frequent_words"],
                                                                    second["frequent_words"]]

    run_in(repo, str(BIN / "rlhf"), "report", "--out", "reports/page.html")
    page = (repo / "reports" / "page.html").read_text()
    assert 'id="stage-wordcount"' in page
    assert f'frequent_words</td><td class="num">{int(second["frequent_words"])}</td>' in page
    assert not (ROOT / "rlhf" / "stages" / "wordcount.py").exists()       # nothing outside the copy was touched

    # an edit to a core module that prepare imports only indirectly (rlhf/jsonl.py, through rlhf/data.py and
    # rlhf/sources.py) makes prepare stale, and so everything after it (DESIGN invariant 1; dvc.yaml's deps)
    with (repo / "rlhf" / "jsonl.py").open("a") as f:
        f.write("\n# an edit\n")
    status = run_in(repo, str(BIN / "rlhf"), "status").stdout
    assert "prepare      stale: changed deps rlhf/jsonl.py: modified" in status, status
    shutil.rmtree(repo / ".prefect", ignore_errors=True)
