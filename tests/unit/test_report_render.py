"""`rlhf report` on hand-made run files (fast): figures, tables, numbers, escaping of untrusted text, missing files,
promotion records, the MLflow part of the page, a stage dvc.yaml declares that the report code never heard of."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from report.build import output_path
from report.data import load_run_files
from report.mlflow_runs import StageRun, Tracking, matches
from report.model import Page, fmt
from report.render import render_html, write_html
from report.sections import PPO_PANELS, build_page, promotion_section, stages_section

PROJECT = Path(__file__).resolve().parents[2]
EVALUATE = {"gold_score_sft": -0.8125, "gold_score_policy": 0.4375, "win_rate_vs_sft": 0.71875, "kl_to_ref": 3.25,
            "reward_model_accuracy": 0.6875, "reward_model_pairs": 96, "reward_model_accuracy_all": 0.65625,
            "reward_model_pairs_all": 120, "rm_score_sft": -0.03125, "rm_score_policy": 1.5625,
            "eos_rate_sft": 0.8125, "eos_rate_policy": 0.9375, "distinct2_sft": 0.90625, "distinct2_policy": 0.84375,
            "n_prompts": 12}
PPO_KEYS = sorted({k for _, keys in PPO_PANELS for k in keys})
EVIL = '<script>alert("x")</script>'
EVIL_ATTR = '"><img src=x onerror=alert(1)>'
N_SAMPLES = 12


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_run(root: Path, promote: dict | None = None) -> Path:
    """The files a tiny pipeline run leaves behind, with this project's dvc.yaml (no params.yaml: default paths)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    write(root / "metrics" / "prepare.json", {"records_read": 731, "records_accepted": 720, "records_rejected": 11,
                                              "n_corpus": 400, "n_sft": 120, "n_prompts": 200})
    for stage, loss in (("pretrain", 5.2177), ("sft", 4.0968)):
        write(root / "metrics" / f"{stage}.json", {"train_loss": loss + 0.1, "val_loss": loss, "steps": 8})
        write(root / "plots" / stage / "loss.json", [{"step": s, "loss/train": 6.0 - s / 4} for s in range(1, 9)])
    write(root / "metrics" / "preferences.json", {"read": 40, "accepted": 37, "rejected": 3, "items_train": 30,
                                                  "items_val": 4})
    write(root / "artifacts" / "preferences" / "summary.json", {
        "files": 1, "read": 40, "accepted": 37, "rejected": 3, "reject_share": 0.075,
        "rejected_by_reason": {"cancelled": 2, "ranking names unknown candidate 'r9'": 1}, "items": 34, "pairs": 102,
        "duplicates": 0, "annotators": 3, "elo_responses": 136,
        "agreement": {"pairwise": 0.8125, "kendall_tau": 0.625, "items": 3, "annotator_pairs": 3, "comparisons": 9},
        "per_file": [{"path": "artifacts/annotations/export.json", "format": "labelstudio", "read": 40,
                      "accepted": 37, "rejected": 3}]})
    rejects = [{"source": "data/sft.jsonl", "line": i, "reason": "missing field 'completion'", "record": "{}"}
               for i in range(11)]
    (root / "artifacts" / "data").mkdir(parents=True, exist_ok=True)
    (root / "artifacts" / "data" / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejects))
    write(root / "metrics" / "reward.json", {"train_accuracy": 0.78125, "val_accuracy": 0.59375, "steps": 6})
    write(root / "plots" / "reward" / "loss.json",
          [{"step": s, "loss/reward": 0.7 - s / 100, "reward/accuracy": 0.5 + s / 20} for s in range(1, 7)])
    write(root / "metrics" / "ppo.json", {"iterations": 5, "objective_kl": 2.5})
    write(root / "plots" / "ppo" / "ppo.json",
          [{"step": s, **{k: 0.1 * s + i for i, k in enumerate(PPO_KEYS)}} for s in range(1, 6)])
    write(root / "metrics" / "evaluate.json", EVALUATE)
    samples = [{"prompt": f"prompt {i}", "sft": f"sft answer {i}", "policy": f"ppo answer {i}", "gold_sft": -1.0,
                "gold_policy": 0.5 if i % 2 else -1.5, "rm_sft": 0.0, "rm_policy": 1.0} for i in range(N_SAMPLES)]
    samples[3].update(prompt=EVIL, policy=EVIL_ATTR, sft="a\x00b\x1bc")
    (root / "artifacts" / "evaluate").mkdir(parents=True, exist_ok=True)
    (root / "artifacts" / "evaluate" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if promote is not None:
        write(root / "metrics" / "promote.json", promote)
    return root


def render(run, tracking=None) -> str:
    return render_html(build_page(run, tracking, generated="now"))


def render_sections(*sections) -> str:
    """Only these sections (no charts to draw): what the promotion and stages tests look at."""
    return render_html(Page("t", "", "", {}, [], list(sections)))


def section(page: str, section_id: str) -> str:
    return page.split(f'id="{section_id}"')[1].split("</section>")[0]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    return render(load_run_files(make_run(tmp_path_factory.mktemp("run")), max_samples=50))


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                                                      page)]


def test_every_curve_is_an_embedded_png(page):
    pngs = images(page)
    assert len(pngs) == 2 + 2 + len(PPO_PANELS)          # pretrain, sft; reward loss and accuracy; PPO panels
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 2000 for p in pngs)
    assert page.count("<img") == len(pngs)               # nothing else made an image (the sample is escaped)
    for title, _ in PPO_PANELS:
        assert f'alt="{title}"' in section(page, "stage-ppo")
    assert "http://" not in re.sub(r'href="[^"]*"', "", page) and "<script" not in page   # self-contained


def test_samples_table_has_one_row_per_sample_with_scores(page):
    table = page.split('<table class="samples">')[1].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*><td class=\"num\">(\d+)</td>", table)
    assert rows == [str(i) for i in range(1, N_SAMPLES + 1)]
    assert "sft answer 11" in table and "ppo answer 11" in table
    assert table.count('class="win"') == N_SAMPLES // 2 and table.count('class="loss"') == N_SAMPLES // 2
    assert "<td class=\"num\">0.5</td>" in table and "<td class=\"num\">-1.5</td>" in table
    assert f"the first {N_SAMPLES} of {N_SAMPLES} held-out prompts" in page


def test_untrusted_text_is_escaped(page):
    assert EVIL not in page and EVIL_ATTR not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a\\x00b\\x1bc" in page and "\x00" not in page and "\x1b" not in page


def test_numbers_of_every_file_appear(page):
    evaluate = section(page, "stage-evaluate")
    for key, value in EVALUATE.items():
        assert re.search(rf"<td>{key}</td><td class=\"num\">{re.escape(fmt(value))}</td>", evaluate), key
    assert "-0.8125 → 0.4375 (Δ +1.250)" in section(page, "summary")
    assert "731" in section(page, "stage-prepare") and "missing field &#39;completion&#39;" in page
    preferences = section(page, "stage-preferences")
    for text in ("cancelled", "ranking names unknown candidate &#39;r9&#39;", "102", "0.8125", "0.625",
                 "labelstudio", "items_val"):
        assert text in preferences, text
    reward = section(page, "stage-reward")
    for value in ("0.7812", "0.5938", "0.6875", "0.6562"):        # train/val, gold (tie margin), gold (all pairs)
        assert value in reward
    assert "no promotion recorded" in page


def test_partial_run_renders_with_notes(tmp_path):
    shutil.copy(PROJECT / "dvc.yaml", tmp_path / "dvc.yaml")
    write(tmp_path / "metrics" / "sft.json", {"train_loss": 1.5})
    (tmp_path / "metrics" / "broken.json").write_text("{not json")
    run = load_run_files(tmp_path)
    page = render(run)
    assert "<img" not in page
    assert "not found: metrics/evaluate.json" in page and "not found: metrics/ppo.json" in page
    assert "not found: artifacts/evaluate/samples.jsonl" in page
    assert any("broken.json" in n for n in run.notes) and "broken.json: unreadable" in page


def test_a_stage_the_report_code_does_not_know_is_shown(tmp_path):
    """A fabricated tree: dvc.yaml declares evaluate, a made-up stage and sft (whose outputs are missing)."""
    (tmp_path / "dvc.yaml").write_text("stages:\n  evaluate: {cmd: x}\n  distill: {cmd: y}\n  sft: {cmd: z}\n")
    write(tmp_path / "metrics" / "distill.json", {"kd_loss": 0.3125, "teacher": "<b>big</b>"})
    write(tmp_path / "plots" / "distill" / "kd.json", [{"step": s, "kd/loss": 1.0 / s} for s in range(1, 5)])
    write(tmp_path / "metrics" / "evaluate.json", {"win_rate_vs_sft": 0.75})
    write(tmp_path / "artifacts" / "evaluate" / "samples.jsonl", {"prompt": EVIL, "sft": "s", "policy": "p"})
    page = render(load_run_files(tmp_path))
    distill = section(page, "stage-distill")
    assert '<td>kd_loss</td><td class="num">0.3125</td>' in distill and "&lt;b&gt;big&lt;/b&gt;" in distill
    assert images(distill) and 'alt="distill: kd"' in distill         # its plot, drawn with no code for it
    assert '<tr><td>distill</td><td>metrics/distill.json</td><td>kd</td></tr>' in section(page, "stages")
    assert "not found: metrics/sft.json" in section(page, "stage-sft")
    assert EVIL not in page and "&lt;script&gt;" in section(page, "stage-evaluate")
    assert 'id="stage-prepare"' not in page and 'id="stage-preferences"' not in page   # not declared: not shown
    assert "<b>big</b>" not in page


def test_without_dvc_yaml_the_metrics_files_name_the_stages(tmp_path):
    write(tmp_path / "metrics" / "sft.json", {"train_loss": 1.5})
    run = load_run_files(tmp_path)
    assert run.stages == ["sft"] and "dvc.yaml" in run.notes[0]
    assert '<td>train_loss</td><td class="num">1.5</td>' in section(render(run), "stage-sft")


def test_promotion_record_flat_and_per_model(tmp_path):
    flat = render_sections(promotion_section(load_run_files(make_run(tmp_path / "a", {"promoted": 0,
                                                                                       "win_rate": 0.4}))))
    assert "decision: <b>not promoted</b>" in flat and "win_rate" in flat
    nested = {"reward": {"model": "rlhf-reward-model", "decision": "promoted", "reason": "gates passed: accuracy",
                         "gates": [{"name": "accuracy", "value": 0.71, "threshold": 0.6, "op": ">=",
                                    "status": "pass"}], "metrics": {"accuracy": 0.71}},
              "policy": {"model": "rlhf-policy", "decision": "refused", "reason": "win_rate 0.4 < 0.5 <b>",
                         "gates": [{"name": "win_rate", "value": 0.4, "threshold": 0.5, "op": ">=",
                                    "status": "fail"}], "metrics": {"win_rate": 0.4, "kl_to_ref": 1.5}},
              "run_id": "abc123"}
    page = render_sections(promotion_section(load_run_files(make_run(tmp_path / "b", nested))))
    assert "decision: <b>rlhf-reward-model: promoted; rlhf-policy: refused</b>" in page
    assert "<td>win_rate</td><td class=\"num\">0.4</td><td>&gt;= 0.5</td><td>fail</td>" in page
    assert "win_rate 0.4 &lt; 0.5 &lt;b&gt;" in page and "abc123" in page and "(from <code>metrics/promote.json" in page
    mlflow_only = Tracking("sqlite:///x.db", promotion=nested, promotion_run_id="q" * 32,
                           promotion_url="http://127.0.0.1:5000/#/runs/q")
    page = render_sections(promotion_section(load_run_files(make_run(tmp_path / "c")), mlflow_only))
    assert f'refused</b> (from MLflow run <a href="http://127.0.0.1:5000/#/runs/q">{"q" * 32}</a>)' in page
    assert "no promotion recorded" in render_sections(promotion_section(load_run_files(tmp_path / "c"),
                                                                        Tracking("sqlite:///x.db")))


def test_tracking_ids_and_links(tmp_path):
    run = load_run_files(make_run(tmp_path))
    tracking = Tracking("sqlite:///x.db", parent_run_id="p" * 32, parent_url="http://127.0.0.1:5000/#/runs/p",
                        stages={"ppo": StageRun("r" * 32, "http://127.0.0.1:5000/#/runs/r", True, True, 12.5,
                                                ["rlhf-policy v3 (challenger)"]),
                                "sft": StageRun("s" * 32, "javascript:alert(1)", False, False)})
    page = render_sections(stages_section(run, tracking))
    assert f'<a href="http://127.0.0.1:5000/#/runs/r">{"r" * 32}</a>' in page
    assert "javascript:" not in page and f"<code>{'s' * 32}</code>" in page             # only http(s) links
    assert "rlhf-policy v3 (challenger)" in page and "an earlier run" in page and "NO (files come from" in page
    out = output_path(tmp_path / "reports", run, tracking)
    assert out.name == f"rlhf-report-{'p' * 32}.html"
    text = write_html(build_page(run, tracking), out).read_text()
    assert text.startswith("<!DOCTYPE html>") and f"<h1>RLHF pipeline run {'p' * 32}</h1>" in text


def test_cli_writes_one_page_per_run(tmp_path, capsys):
    from flows.cli import main
    root = make_run(tmp_path / "proj")
    out = tmp_path / "reports"
    args = ["report", "--root", str(root), "--out", str(out), "--no-mlflow", "--samples", "3"]
    assert main(args) == 0
    assert main(args) == 0                                    # same outputs: same page, rewritten
    pages = list(out.glob("rlhf-report-local-*.html"))
    assert len(pages) == 1
    text = pages[0].read_text()
    assert len(re.findall(r"<tr[^>]*><td class=\"num\">\d+</td><td class=\"txt\">", text)) == 3
    assert "(11 figures, 3 of 12 samples)" in capsys.readouterr().out
    assert main(["report", "--root", str(tmp_path / "empty"), "--no-mlflow"]) == 1
    assert "no pipeline outputs" in capsys.readouterr().err


def test_fmt_and_matches():
    assert [fmt(v) for v in (720.0, 0.6875, -0.041501, 32737.33, 2.58e-07, None, float("nan"), True)] == [
        "720", "0.6875", "-0.0415", "32737.3", "2.580e-07", "–", "–", "true"]
    assert matches({"final/a": 1.0, "final/b": 0.5}, {"a": 1, "b": 0.5, "c": None}) is True
    assert matches({"final/a": 1.0}, {"a": 2.0}) is False
    assert matches({}, {"a": 2.0}) is None and matches({"final/a": 1.0}, None) is None


def test_output_paths_come_from_params_yaml(tmp_path):
    make_run(tmp_path)
    (tmp_path / "artifacts" / "evaluate").rename(tmp_path / "artifacts" / "eval2")
    (tmp_path / "params.yaml").write_text("evaluate: {out_dir: artifacts/eval2}\npromote: {max_kl: 3.0}\n")
    run = load_run_files(tmp_path)
    assert run.samples_total == N_SAMPLES and run.notes == []
    (tmp_path / "params.yaml").write_text("evaluate: {out_dirr: x}\n")
    run = load_run_files(tmp_path)
    assert run.samples_total == 0 and "out_dirr" in run.notes[0]
