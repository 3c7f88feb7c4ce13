"""`rlhf report` on hand-made run files (fast): figures, tables, numbers, escaping of untrusted text, missing files,
promotion records, the MLflow part of the page; and the progress helper (tasks/progress.py)."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest

from flows.report import (PPO_PANELS, StageRun, Tracking, fmt, load_run_files, render_html, section_promotion,
                          section_stages, write_report)

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
    """The files a tiny pipeline run leaves behind (no params.yaml: the default paths)."""
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


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    root = make_run(tmp_path_factory.mktemp("run"))
    return render_html(load_run_files(root, max_samples=50), generated="now")


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                                                      page)]


def test_every_curve_is_an_embedded_png(page):
    pngs = images(page)
    assert len(pngs) == 2 + 2 + len(PPO_PANELS)          # pretrain, sft; reward loss and accuracy; PPO panels
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 2000 for p in pngs)
    assert page.count("<img") == len(pngs)               # nothing else made an image (the sample is escaped)
    for title, _ in PPO_PANELS:
        assert f'alt="{title}"' in page
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
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a\\x00b\\x1bc" in page and "\x00" not in page and "\x1b" not in page


def test_numbers_of_every_file_appear(page):
    evaluate = page.split('id="evaluate"')[1].split("</section>")[0]
    for key, value in EVALUATE.items():
        assert re.search(rf"<td>{key}</td><td class=\"num\">{re.escape(fmt(value))}</td>", evaluate), key
    assert "-0.8125 → 0.4375 (Δ +1.250)" in page                                        # summary card
    data = page.split('id="data"')[1].split("</section>")[0]
    for text in ("731", "cancelled", "ranking names unknown candidate &#x27;r9&#x27;", "102", "0.8125", "0.625",
                 "missing field &#x27;completion&#x27;", "labelstudio", "items_val"):
        assert text in data, text
    reward = page.split('id="reward"')[1].split("</section>")[0]
    for value in ("0.7812", "0.5938", "0.6875", "0.6562"):        # train/val, gold (tie margin), gold (all pairs)
        assert value in reward
    assert "no promotion recorded" in page


def test_partial_run_renders_with_notes(tmp_path):
    (tmp_path / "metrics").mkdir()
    write(tmp_path / "metrics" / "sft.json", {"train_loss": 1.5})
    (tmp_path / "metrics" / "broken.json").write_text("{not json")
    run = load_run_files(tmp_path)
    page = render_html(run)
    assert "<img" not in page
    assert "not found: metrics/evaluate.json" in page and "no PPO curves (plots/ppo/ppo.json)" in page
    assert "not found: artifacts/evaluate/samples.jsonl" in page
    assert any("broken.json" in n for n in run.notes) and "broken.json: unreadable" in page


def test_promotion_record_flat_and_per_model(tmp_path):
    flat = section_promotion(load_run_files(make_run(tmp_path / "a", {"promoted": 0, "win_rate": 0.4})))
    assert "decision: <b>not promoted</b>" in flat and "win_rate" in flat
    nested = {"reward": {"model": "rlhf-reward-model", "decision": "promoted", "reason": "gates passed: accuracy",
                         "gates": [{"name": "accuracy", "value": 0.71, "threshold": 0.6, "op": ">=",
                                    "status": "pass"}], "metrics": {"accuracy": 0.71}},
              "policy": {"model": "rlhf-policy", "decision": "refused", "reason": "win_rate 0.4 < 0.5 <b>",
                         "gates": [{"name": "win_rate", "value": 0.4, "threshold": 0.5, "op": ">=",
                                    "status": "fail"}], "metrics": {"win_rate": 0.4, "kl_to_ref": 1.5}},
              "run_id": "abc123"}
    page = section_promotion(load_run_files(make_run(tmp_path / "b", nested)))
    assert "decision: <b>rlhf-reward-model: promoted; rlhf-policy: refused</b>" in page
    assert "<td>win_rate</td><td class=\"num\">0.4</td><td>&gt;= 0.5</td><td>fail</td>" in page
    assert "win_rate 0.4 &lt; 0.5 &lt;b&gt;" in page and "abc123" in page and "(from <code>metrics/promote.json" in page
    mlflow_only = Tracking("sqlite:///x.db", promotion=nested, promotion_run_id="q" * 32,
                           promotion_url="http://127.0.0.1:5000/#/runs/q")
    page = section_promotion(load_run_files(make_run(tmp_path / "c")), mlflow_only)
    assert f'refused</b> (from MLflow run <a href="http://127.0.0.1:5000/#/runs/q">{"q" * 32}</a>)' in page
    assert "no promotion recorded" in section_promotion(load_run_files(tmp_path / "c"), Tracking("sqlite:///x.db"))


def test_tracking_ids_and_links(tmp_path):
    run = load_run_files(make_run(tmp_path))
    tracking = Tracking("sqlite:///x.db", parent_run_id="p" * 32, parent_url="http://127.0.0.1:5000/#/runs/p",
                        stages={"ppo": StageRun("r" * 32, "http://127.0.0.1:5000/#/runs/r", True, True, 12.5,
                                                ["rlhf-policy v3 (challenger)"]),
                                "sft": StageRun("s" * 32, "javascript:alert(1)", False, False)})
    page = section_stages(run, tracking)
    assert f'<a href="http://127.0.0.1:5000/#/runs/r">{"r" * 32}</a>' in page
    assert "javascript:" not in page and f"<code>{'s' * 32}</code>" in page             # only http(s) links
    assert "rlhf-policy v3 (challenger)" in page and "an earlier run" in page and "NO (files come from" in page
    out = write_report(run, tmp_path / "reports", tracking)
    assert out.name == f"rlhf-report-{'p' * 32}.html"
    text = out.read_text()
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
    from flows.commands.report import matches
    assert [fmt(v) for v in (720.0, 0.6875, -0.041501, 32737.33, 2.58e-07, None, float("nan"), True)] == [
        "720", "0.6875", "-0.0415", "32737.3", "2.580e-07", "–", "–", "true"]
    assert matches({"final/a": 1.0, "final/b": 0.5}, {"a": 1, "b": 0.5, "c": None}) is True
    assert matches({"final/a": 1.0}, {"a": 2.0}) is False
    assert matches({}, {"a": 2.0}) is None and matches({"final/a": 1.0}, None) is None


# ------------------------------------------------------------------------------------------- tasks/progress.py
class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_lines_are_throttled_and_end_on_the_last_step():
    from tasks.progress import Progress
    clock, out = Clock(), io.StringIO()
    p = Progress("ppo", total=10, every_s=5.0, stream=out, mode="lines", clock=clock,
                 keys=("objective/kl",))
    for step in range(1, 11):
        clock.t += 1.0
        p(step, {"perf/x": 1.0, "objective/scores": 0.5, "objective/kl": 0.25})
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/10", "6/10", "10/10"]      # first, +5 s, last
    assert "objective/kl=0.25 objective/scores=0.5" in lines[1] and "perf/x" not in lines[1]
    assert "1 step/s" in lines[1] and "eta 0:04" in lines[1] and "100%" in lines[2]
    p.close()
    assert out.getvalue().count("\n") == 3


def test_progress_bar_redraws_in_place_and_unknown_total():
    from tasks.progress import Progress, bar, choose_mode
    clock, out = Clock(), io.StringIO()
    with Progress("sft", total=4, stream=out, mode="bar", clock=clock, min_redraw_s=0.0) as p:
        for step in range(1, 5):
            clock.t += 0.5
            p(step, {"loss/train": 2.0})
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert bar(0.5, 4) == "|██  |" and bar(1.0, 4) == "|████|"
    out2 = io.StringIO()
    Progress("pretrain", stream=out2, mode="lines", clock=clock)(7, {"loss/train": 1.0})
    assert out2.getvalue().startswith("[pretrain] step 7 ") and "eta" not in out2.getvalue()
    assert choose_mode(io.StringIO(), {}) == "lines" and choose_mode(io.StringIO(), {"RLHF_PROGRESS": "off"}) == "off"


def test_expected_totals_match_the_training_plans(tmp_path):
    from tasks.progress import expected_total
    from rlhf.config import PipelineConfig, from_dict
    cfg = from_dict(PipelineConfig, {"ppo": {"total_episodes": 640, "rollout_batch_size": 64},
                                     "sft": {"data_dir": str(tmp_path), "train": {"batch_size": 16, "epochs": 3}},
                                     "collect": {"prompts": str(tmp_path / "p.jsonl"), "k": 4, "max_prompts": 5}})
    (tmp_path / "sft_train.jsonl").write_text('{"a": 1}\n' * 40 + "\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n' * 7)
    assert expected_total("ppo", cfg.ppo) == 10
    assert expected_total("sft", cfg.sft) == 9              # ceil(40 / 16) = 3 steps per epoch, 3 epochs
    assert expected_total("collect", cfg.collect) == 20     # 5 prompts x 4 responses
    assert expected_total("reward", cfg.reward, tmp_path / "nowhere") is None
    assert expected_total("pretrain", cfg.pretrain) is None
    from tasks.progress import for_stage
    out = io.StringIO()
    p = for_stage("ppo", cfg.ppo, stream=out, mode="lines")
    p(1, {"loss/value_avg": 1.0, "objective/kl": 0.5})
    line = out.getvalue()
    assert line.startswith("[ppo] 1/10 iterations  10% ") and " objective/kl=0.5 loss/value_avg=1" in line


def test_output_paths_come_from_params_yaml(tmp_path):
    make_run(tmp_path)
    (tmp_path / "artifacts" / "evaluate").rename(tmp_path / "artifacts" / "eval2")
    (tmp_path / "params.yaml").write_text("evaluate: {out_dir: artifacts/eval2}\npromote: {max_kl: 3.0}\n")
    run = load_run_files(tmp_path)
    assert run.samples_total == N_SAMPLES and run.notes == []
    (tmp_path / "params.yaml").write_text("evaluate: {out_dirr: x}\n")
    run = load_run_files(tmp_path)
    assert run.samples_total == 0 and "out_dirr" in run.notes[0]
