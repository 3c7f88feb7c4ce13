"""`rlhf ingest`: exit status, the printed summary, the reject-limit message, one-line errors, progress lines, and
(marked slow: a real MLflow SQLite store) the --log-mlflow run and the preferences stage's dataset lineage."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from rlhf.preferences import summary_metrics

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "preferences"
RLHF = Path(sys.executable).parent / "rlhf"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["ingest", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, label: str) -> str:
    """The value column of one summary table row."""
    line = next(x for x in out.splitlines() if x.startswith(label + " "))
    return line[len(label):].strip()


def test_good_file_exits_0_and_prints_the_summary(tmp_path, capsys):
    code, out, err = run(capsys, FIXTURES / "kwise.jsonl", "--out", tmp_path / "o")
    assert code == 0, err
    assert row(out, "records read") == "4" and row(out, "accepted") == "4" and row(out, "rejected") == "0 (0.0%)"
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert row(out, "pairs") == str(summary["pairs"]) and summary["pairs"] > 0
    assert f"rejects: {tmp_path / 'o' / 'rejects.jsonl'}" in out
    assert "kwise" in out.split("file", 1)[1]                        # the per-file table names the format
    assert len((tmp_path / "o" / "pairs.jsonl").read_text().splitlines()) == summary["pairs"]
    assert err == ""                                                   # quick input: no progress line


def test_over_the_reject_limit_exits_1_with_one_line_naming_share_limit_and_rejects(tmp_path, capsys):
    out_dir = tmp_path / "o"
    code, out, err = run(capsys, FIXTURES / "ls_ranker_export.json", "--out", out_dir, "--max-reject-share", "0.25")
    assert code == 1
    assert err == (f"rlhf ingest: reject limit exceeded: 2 of 6 records rejected, share 0.333 > limit 0.25; "
                   f"see {out_dir / 'rejects.jsonl'}\n")
    assert row(out, "rejected") == "2 (33.3%)" and row(out, "  cancelled") == "1"    # the summary still printed
    rejects = [json.loads(x) for x in (out_dir / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["cancelled", "no annotations"]
    # the same data within a looser limit passes
    assert run(capsys, FIXTURES / "ls_ranker_export.json", "--out", out_dir, "--max-reject-share", "0.34")[0] == 0


def test_missing_path_is_one_clear_line(tmp_path, capsys):
    code, out, err = run(capsys, FIXTURES / "kwise.jsonl", tmp_path / "nope.json", "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert err == f"rlhf ingest: error: {tmp_path / 'nope.json'}: no such file or directory\n"
    assert not (tmp_path / "o").exists()                              # nothing written


@pytest.mark.parametrize("content, message", [
    ("", "empty.jsonl: empty file: no records"),
    ("\n\n", "empty.jsonl: empty file: no records"),
])
def test_unusable_file_is_one_clear_line(tmp_path, capsys, content, message):
    (tmp_path / "empty.jsonl").write_text(content)
    code, out, err = run(capsys, tmp_path / "empty.jsonl", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and err.startswith("rlhf ingest: error: ") and message in err


def test_folder_without_inputs_and_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code, _, err = run(capsys, tmp_path / "in", "--out", tmp_path / "o")
    assert code == 2 and err == f"rlhf ingest: error: {tmp_path / 'in'}: no input files\n"
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, FIXTURES / "kwise.jsonl", "--out", tmp_path / "file")
    assert code == 2 and err == f"rlhf ingest: error: {tmp_path / 'file'}: --out exists and is not a folder\n"


@pytest.mark.parametrize("args, message", [
    (["--max-reject-share", "1.5"], "argument --max-reject-share: must be within [0, 1], got 1.5"),
    (["--max-reject-share", "nan"], "argument --max-reject-share: not a finite number: 'nan'"),
    (["--max-field-chars", "0"], "argument --max-field-chars: must be >= 1, got 0"),
    (["--k-factor", "-3"], "argument --k-factor: must be > 0, got -3"),
    (["--format", "csv"], "argument --format: invalid choice: 'csv'"),
])
def test_bad_options_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(FIXTURES / "kwise.jsonl"), "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_rating_scale_must_be_increasing(tmp_path, capsys):
    code, _, err = run(capsys, FIXTURES / "ratings.jsonl", "--out", tmp_path / "o", "--rating-scale", "5", "1")
    assert code == 2 and err == "rlhf ingest: error: --rating-scale: LO must be below HI, got 5 1\n"


def test_options_reach_the_ingest(tmp_path, capsys):
    # ratings.jsonl on a 1..7 scale: a 1..3 scale rejects every out-of-range record.
    default = run(capsys, FIXTURES / "ratings.jsonl", "--out", tmp_path / "a", "--max-reject-share", "1")
    narrow = run(capsys, FIXTURES / "ratings.jsonl", "--out", tmp_path / "b", "--max-reject-share", "1",
                 "--rating-scale", "1", "3")
    assert default[0] == narrow[0] == 0
    assert int(row(narrow[1], "accepted")) < int(row(default[1], "accepted"))
    a = {r["response"]: r["elo"] for r in map(json.loads, (tmp_path / "a" / "elo.jsonl").open())}
    run(capsys, FIXTURES / "ratings.jsonl", "--out", tmp_path / "c", "--max-reject-share", "1", "--k-factor", "64")
    c = {r["response"]: r["elo"] for r in map(json.loads, (tmp_path / "c" / "elo.jsonl").open())}
    assert a.keys() == c.keys() and any(abs(c[k] - 1000) > abs(a[k] - 1000) for k in a)   # larger steps


def _many_records(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"k{i}", "prompt": f"prompt {i}", "responses": [f"a{i}", f"b{i}"],
                                "ranking": [i % 2, 1 - i % 2], "annotator": "ann"}) + "\n")


def test_progress_lines_on_long_inputs_without_bar_spam(tmp_path, capsys):
    _many_records(tmp_path / "big.jsonl", 2500)
    code, out, err = run(capsys, tmp_path / "big.jsonl", "--out", tmp_path / "o", "--progress-every", "0")
    assert code == 0 and row(out, "records read") == "2500"
    progress = err.splitlines()
    assert progress[:2] == [x for x in progress[:2] if x.startswith("[ingest] ")]
    assert progress[0].startswith("[ingest] record 1000 ") and progress[-1].startswith("[ingest] record 2500 ")
    assert "\r" not in err                                             # stderr is not a terminal: plain lines


def test_summary_metric_names_are_valid_for_mlflow(tmp_path):
    from mlflow import MlflowClient
    metrics = summary_metrics({"read": 3, "accepted": 1, "rejected": 2, "reject_share": 2 / 3, "per_file": [],
                               "agreement": {"pairwise": None, "items": 0},
                               "rejected_by_reason": {"missing field 'prompt'": 1, "wrong type for 'data.x'": 1,
                                                      "bad <chars> & (more)!": 1}})
    assert metrics["rejected/missing field prompt"] == 1.0 and metrics["rejected/wrong type for data.x"] == 1.0
    assert metrics["agreement_items"] == 0.0 and "agreement_pairwise" not in metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'names.db'}")
    run = client.create_run(client.create_experiment("names"))
    for name, value in metrics.items():                                 # a real store refuses an invalid name
        client.log_metric(run.info.run_id, name, value)
    assert set(client.get_run(run.info.run_id).data.metrics) == set(metrics)


def test_entry_point_error_has_no_traceback(tmp_path):
    done = subprocess.run([str(RLHF), "ingest", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"rlhf ingest: error: {tmp_path / 'missing.json'}: no such file or directory\n"


# --- MLflow (real SQLite store) --------------------------------------------------------------------------------
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _inputs(run) -> dict[str, dict]:
    return {d.dataset.name: {**{t.key: t.value for t in d.tags}, "digest": d.dataset.digest}
            for d in run.inputs.dataset_inputs}


@pytest.mark.slow
def test_log_mlflow_records_metrics_and_datasets(mlflow_store, tmp_path, capsys):
    export = FIXTURES / "ls_ranker_export.json"
    code, out, err = run(capsys, export, FIXTURES / "kwise.jsonl", "--out", tmp_path / "o", "--log-mlflow",
                         "--max-reject-share", "0.5")
    assert code == 0, err
    run_id = out.strip().splitlines()[-1].split()[2]
    r = mlflow_store.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "ingest"
    assert r.data.metrics["read"] == 10 and r.data.metrics["rejected/cancelled"] == 1
    assert r.data.params["max_reject_share"] == "0.5"
    ds = _inputs(r)
    exp = ds["ingest/input/ls_ranker_export.json"]
    assert exp["mlflow.data.context"] == "input" and exp["md5"] == _md5(export) and exp["digest"] == _md5(export)[:16]
    assert (exp["format"], exp["read"], exp["accepted"], exp["rejected"], exp["rows"]) == \
        ("labelstudio", "6", "4", "2", "4")                             # 6 annotations in 4 tasks
    pairs = ds["ingest/pairs"]
    assert pairs["md5"] == _md5(tmp_path / "o" / "pairs.jsonl") and pairs["rows"] == pairs["ingest.pairs"]
    assert set(ds) >= {"ingest/rankings", "ingest/elo", "ingest/rejects", "ingest/input/kwise.jsonl"}
    assert "summary.json" in [a.path for a in mlflow_store.list_artifacts(run_id)]


@pytest.mark.slow
def test_log_mlflow_over_the_limit_marks_the_run_failed(mlflow_store, tmp_path, capsys):
    code, out, err = run(capsys, FIXTURES / "broken_lines.jsonl", "--out", tmp_path / "o", "--log-mlflow")
    assert code == 1 and "reject limit exceeded" in err
    r = mlflow_store.get_run(out.strip().splitlines()[-1].split()[2])
    assert r.info.status == "FAILED" and r.data.tags["rlhf.ingest.status"] == "reject_limit_exceeded"
    assert r.data.metrics["rejected/missing field prompt"] == 1


@pytest.mark.slow
def test_preferences_stage_lineage_logs_inputs_outputs_and_counts(mlflow_store, tmp_path):
    import mlflow

    from rlhf.preferences import ingest
    from rlhf.stages.common import StageResult
    from tasks.lineage import log_lineage
    from tasks.tracking import setup_tracking

    export = FIXTURES / "ls_ranker_export.json"
    out = tmp_path / "artifacts" / "preferences"
    ingest([export], out, max_reject_share=0.5)
    (out / "rankings_train.jsonl").write_text((out / "rankings.jsonl").read_text())
    result = StageResult({}, outputs={"dir": str(out), "rejects": str(out / "rejects.jsonl")})
    setup_tracking(tmp_path)
    with mlflow.start_run(run_name="preferences") as active:
        log_lineage("preferences", result)
    ds = _inputs(mlflow_store.get_run(active.info.run_id))
    assert set(ds) == {"preferences/input/ls_ranker_export.json", "preferences/rankings", "preferences/pairs",
                       "preferences/elo", "preferences/rejects", "preferences/rankings_train"}   # rejects once
    assert ds["preferences/input/ls_ranker_export.json"]["mlflow.data.context"] == "input"
    rankings = ds["preferences/rankings"]
    assert rankings["mlflow.data.context"] == "preferences" and rankings["md5"] == _md5(out / "rankings.jsonl")
    assert (rankings["rows"], rankings["ingest.read"], rankings["ingest.accepted"], rankings["ingest.items"]) == \
        ("3", "6", "4", "3")
