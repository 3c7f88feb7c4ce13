"""The promotion decision without a registry: gates, thresholds, missing numbers, params.yaml's promote section,
the report, and the pure helpers of the registry (URIs, folder hashes, model card)."""
from __future__ import annotations

import dataclasses
import math

import pytest

from flows.promote import summary
from rlhf.config import ConfigError, PromoteConfig as Gates, load_params
from rlhf.gates import GateResult, check, decide, policy_gates, reward_gates
from tasks.lineage import md5_path
from tasks.promotion_report import report_markdown
from tasks.registry import model_card, parse_model_uri


def load_settings(path):
    cfg = load_params(path)
    return cfg, cfg.promote

GOOD = {"win_rate": 0.62, "kl_to_ref": 2.5, "gold_gain": 0.3, "reward_model_accuracy": 0.7}


def statuses(results: list[GateResult]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_check_compares_in_the_gate_direction_and_equality_passes():
    assert check("w", 0.5, 0.5, ">=").status == "pass"
    assert check("w", 0.49, 0.5, ">=").status == "fail"
    assert check("kl", 6.0, 6.0, "<=").status == "pass"
    assert check("kl", 6.01, 6.0, "<=").status == "fail"


def test_missing_numbers_skip_and_null_threshold_turns_a_gate_off():
    assert check("w", None, 0.5, ">=").status == "skip"
    assert check("w", 0.1, None, ">=").status == "off"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gate_value_fails_and_blocks_promotion(bad):
    assert check("kl", bad, 6.0, "<=").status == "fail" and check("w", bad, 0.5, ">=").status == "fail"
    ok, reason = decide(policy_gates({**GOOD, "kl_to_ref": bad}, Gates()))
    assert not ok and reason.startswith("kl_to_ref ")


def test_default_policy_gates_pass_a_good_challenger():
    ok, reason = decide(policy_gates(GOOD, Gates()))
    assert ok and reason.startswith("gates passed: win_rate 0.62 >= 0.5")


@pytest.mark.parametrize("key,value,needle", [("win_rate", 0.45, "win_rate 0.45 < 0.5"),
                                              ("kl_to_ref", 7.0, "kl_to_ref 7 > 6"),
                                              ("gold_gain", -0.1, "gold_gain -0.1 < 0"),
                                              ("reward_model_accuracy", 0.5, "reward_model_accuracy 0.5 < 0.55")])
def test_any_failing_policy_gate_refuses_and_names_itself(key, value, needle):
    results = policy_gates({**GOOD, key: value}, Gates())
    ok, reason = decide(results)
    assert not ok and reason == needle
    assert statuses(results)[key] == "fail"


def test_reasons_list_every_failed_gate():
    ok, reason = decide(policy_gates({**GOOD, "win_rate": 0.1, "kl_to_ref": 9.0}, Gates()))
    assert not ok and reason == "win_rate 0.1 < 0.5; kl_to_ref 9 > 6"


def test_nothing_measured_is_not_a_promotion():
    ok, reason = decide(policy_gates({}, Gates()))
    assert not ok and reason == "no gate could be measured"


def test_gates_turned_off_do_not_block():
    gates = Gates(min_win_rate=None, max_kl=None)
    results = policy_gates({**GOOD, "win_rate": 0.0, "kl_to_ref": 100.0}, gates)
    assert statuses(results) == {"win_rate": "off", "kl_to_ref": "off", "gold_gain": "pass",
                                 "reward_model_accuracy": "pass"}
    assert decide(results)[0]


def test_without_a_judge_the_gold_gate_is_skipped_not_failed():
    results = policy_gates({"win_rate": 0.6, "kl_to_ref": 1.0}, Gates())
    assert statuses(results)["gold_gain"] == "skip" and decide(results)[0]


def test_first_reward_model_is_judged_on_accuracy_alone():
    results = reward_gates({"accuracy": 0.65}, Gates())
    assert statuses(results) == {"accuracy": "pass", "accuracy_gain": "skip"}
    assert decide(results)[0]


def test_reward_model_must_not_lose_accuracy_against_its_champion():
    ok, reason = decide(reward_gates({"accuracy": 0.7, "accuracy_gain": -0.05}, Gates()))
    assert not ok and reason == "accuracy_gain -0.05 < 0"
    assert not decide(reward_gates({"accuracy": 0.55}, Gates()))[0]


def test_gates_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Gates().max_kl = 1.0                                                  # type: ignore[misc]
    with pytest.raises(ConfigError, match="max_prompts"):
        Gates(max_prompts=0)


def test_params_promote_section_is_typed(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("evaluate: {max_prompts: 16}\npromote: {min_win_rate: 0.6, max_kl: null, seed: 3}\n")
    cfg, gates = load_settings(p)
    assert cfg.evaluate.max_prompts == 16
    assert (gates.min_win_rate, gates.max_kl, gates.seed, gates.min_gold_gain) == (0.6, None, 3, 0.0)


def test_params_without_promote_section_use_the_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("evaluate: {max_prompts: 16}\n")
    assert load_settings(p)[1] == Gates()


@pytest.mark.parametrize("body,needle", [
    ("promote: {min_winrate: 0.6}", "promote.min_winrate: unknown key (did you mean 'min_win_rate'?)"),
    ("promote: {max_kl: high}", "promote.max_kl: expected a number"),
    ("promote: {max_prompts: 0}", "max_prompts must be >= 1")])
def test_bad_promote_section_is_one_clear_error(tmp_path, body, needle):
    p = tmp_path / "params.yaml"
    p.write_text(body + "\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert needle in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_report_and_summary_show_decision_gates_and_numbers():
    report = {"model": "rlhf-policy", "challenger": "3", "champion_before": "1", "baseline": "champion v1",
              "metrics": {"win_rate": 0.4, "kl_to_ref": 2.0, "examples": [{"prompt": "p", "challenger": "a\nb",
                                                                             "baseline": "c"}]},
              "gates": [dataclasses.asdict(g) for g in policy_gates({"win_rate": 0.4, "kl_to_ref": 2.0}, Gates())],
              "decision": "refused", "reason": "win_rate 0.4 < 0.5", "dry_run": False}
    md = report_markdown([report, {"model": "rlhf-reward-model", "decision": "unchanged", "reason": "no challenger"}])
    assert "## rlhf-policy: refused" in md and "| win_rate | 0.4 | >= 0.5 | fail |" in md
    assert "| gold_gain | n/a | >= 0 | skip |" in md and "| p | a b | c |" in md
    assert "## rlhf-reward-model: unchanged" in md
    text = summary({"policy": report, "reward": {"model": "rlhf-reward-model", "decision": "unchanged",
                                                 "reason": "no challenger"}})
    assert text.splitlines() == ["rlhf-reward-model: unchanged - no challenger",
                                 "rlhf-policy v3: refused - win_rate 0.4 < 0.5"]


def test_model_uris_parse():
    assert parse_model_uri("models:/rlhf-policy@champion") == ("rlhf-policy", "champion", None)
    assert parse_model_uri("models:/rlhf-policy/3") == ("rlhf-policy", None, "3")


def test_folder_hash_is_stable_and_content_addressed(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.json").write_text("{}")
    first = md5_path(tmp_path / "m")
    assert first.endswith(".dir") and md5_path(tmp_path / "m") == first
    (tmp_path / "m" / "a.json").write_text("{ }")
    assert md5_path(tmp_path / "m") != first


def test_model_card_says_how_to_load_and_reproduce():
    tags = {"lineage.git_commit": "abc123", "lineage.stage": "ppo", "lineage.data_dvc_md5": "d41d.dir",
            "lineage.params": '{"lr":"0.0001"}', "metrics.objective/kl": "1.5"}
    card = model_card("rlhf-policy", "4", "policy", tags)
    assert card.startswith("# rlhf-policy v4")
    assert "git checkout abc123 && dvc checkout" in card and "dvc repro ppo" in card
    assert "| objective/kl | 1.5 |" in card and "| lr | 0.0001 |" in card
    assert 'mlflow.transformers.load_model("models:/rlhf-policy/4")' in card
    assert "rlhf serve --model models:/rlhf-policy/4" in card
    unnumbered = model_card("rlhf-reward-model", None, "reward", tags)       # logged before the registry numbers it
    assert unnumbered.startswith("# rlhf-reward-model\n") and "models:/rlhf-reward-model/<version>" in unnumbered
    assert 'mlflow.pyfunc.load_model("models:/rlhf-reward-model/<version>")' in unnumbered
