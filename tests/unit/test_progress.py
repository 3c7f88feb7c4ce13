"""The stage progress display (tasks/progress.py): throttled plain lines for logs, a tqdm bar on a terminal."""
import io

from rlhf.config import PipelineConfig, from_dict
from tasks.progress import Progress, choose_mode, expected_total, for_stage


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_are_throttled_and_end_on_the_last_step():
    clock, out = Clock(), io.StringIO()
    p = Progress("ppo", total=10, every_s=5.0, stream=out, mode="lines", clock=clock, keys=("objective/kl",))
    for step in range(1, 11):
        clock.t += 1.0
        p(step, {"perf/x": 1.0, "objective/scores": 0.5, "objective/kl": 0.25})
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/10", "6/10", "10/10"]      # first, +5 s, last
    assert "objective/kl=0.25 objective/scores=0.5" in lines[1] and "perf/x" not in lines[1]
    assert "1 step/s" in lines[1] and "eta 0:04" in lines[1] and "100%" in lines[2]
    p.close()
    assert out.getvalue().count("\n") == 3


def test_progress_bar_is_tqdm_redrawn_in_place():
    clock, out = Clock(), io.StringIO()
    with Progress("sft", total=4, stream=out, mode="bar", clock=clock, min_redraw_s=0.0) as p:
        for step in range(1, 5):
            clock.t += 0.5
            p(step, {"loss/train": 2.0})
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")                    # one line, redrawn with \r
    assert text.count("\r") >= 4
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("[sft]") and "4/4" in last and "100%" in last and "loss/train=2" in last


def test_progress_throttles_the_bar_too():
    clock, out = Clock(), io.StringIO()
    p = Progress("sft", total=100, stream=out, mode="bar", clock=clock, min_redraw_s=10.0)
    for step in range(1, 50):
        clock.t += 0.1
        p(step, {})
    assert out.getvalue().count("\r") <= 3                                # first draw only (tqdm may add one)
    p.close()


def test_unknown_total_and_mode_choice():
    clock, out = Clock(), io.StringIO()
    Progress("pretrain", stream=out, mode="lines", clock=clock)(7, {"loss/train": 1.0})
    assert out.getvalue().startswith("[pretrain] step 7 ") and "eta" not in out.getvalue()
    assert choose_mode(io.StringIO(), {}) == "lines" and choose_mode(io.StringIO(), {"RLHF_PROGRESS": "off"}) == "off"


def test_ingest_progress_counts_records_in_lines_mode():
    out = io.StringIO()
    p = Progress("ingest", unit="record", every_s=0.0, stream=out, mode="lines")
    p(1000), p(2000), p.close()
    assert [ln.split()[:3] for ln in out.getvalue().splitlines()] == [["[ingest]", "record", "1000"],
                                                                      ["[ingest]", "record", "2000"]]


def test_expected_totals_match_the_training_plans(tmp_path):
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
    out = io.StringIO()
    p = for_stage("ppo", cfg.ppo, stream=out, mode="lines")
    p(1, {"loss/value_avg": 1.0, "objective/kl": 0.5})
    line = out.getvalue()
    assert line.startswith("[ppo] 1/10 iterations  10% ") and " objective/kl=0.5 loss/value_avg=1" in line
