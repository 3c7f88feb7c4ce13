"""The seed sweep's table maths and parsing (benchmarks/seeds_table.py), against numbers computed by hand."""
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from seeds_table import (TARGETS, apply_sets, distinct2_ratio, markdown, misses, parse_seeds, parse_sets,  # noqa: E402
                         seed_configs, seed_values, summarize)

from rlhf.config import ConfigError, PipelineConfig  # noqa: E402

# Two seeds' evaluate metrics (metrics/evaluate.json names): seed 0 meets every target, seed 1 misses the win rate.
SEED0 = {"reward_model_accuracy": 0.92, "win_rate_vs_sft": 0.80, "kl_to_ref": 2.0, "eos_rate_policy": 0.95,
         "distinct2_policy": 0.45, "distinct2_sft": 0.50, "gold_score_policy": 0.5, "gold_score_sft": -0.3}
SEED1 = {"reward_model_accuracy": 0.94, "win_rate_vs_sft": 0.70, "kl_to_ref": 4.0, "eos_rate_policy": 0.91,
         "distinct2_policy": 0.48, "distinct2_sft": 0.50, "gold_score_policy": 0.2, "gold_score_sft": -0.3}


def test_seed_values_distinct_ratio_and_gold_gain():
    v = seed_values(SEED0)
    assert v["distinct2_ratio"] == pytest.approx(0.9)          # 0.45 / 0.50
    assert v["gold_gain"] == pytest.approx(0.8)                # 0.5 - (-0.3)
    assert v["kl_to_ref"] == 2.0 and v["win_rate_vs_sft"] == 0.8
    assert distinct2_ratio({"distinct2_policy": 0.4, "distinct2_sft": 0.0}) is None   # no ratio over 0
    assert seed_values({})["gold_gain"] is None                 # a judge other than gold: no gold scores


def test_summary_mean_worst_std_by_hand():
    s = summarize({0: seed_values(SEED0), 1: seed_values(SEED1)})
    win = s["win_rate_vs_sft"]
    assert win["mean"] == pytest.approx(0.75) and win["worst"] == pytest.approx(0.70)
    assert win["std"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))      # sample std of (0.8, 0.7): 0.0707
    assert win["met"] == 1 and win["n"] == 2
    kl = s["kl_to_ref"]                                               # lower is better: the worst seed is the max
    assert kl["mean"] == pytest.approx(3.0) and kl["worst"] == pytest.approx(4.0) and kl["std"] == pytest.approx(math.sqrt(2))
    assert kl["met"] == 2
    d = s["distinct2_ratio"]
    assert d["mean"] == pytest.approx(0.93) and d["worst"] == pytest.approx(0.9) and d["met"] == 2   # 0.9 >= 0.9 holds
    g = s["gold_gain"]                                                # reported, not gated: worst = min
    assert g["mean"] == pytest.approx(0.65) and g["worst"] == pytest.approx(0.5) and g["met"] is None
    assert g["std"] == pytest.approx(statistics.stdev([0.8, 0.5]))
    assert summarize({0: seed_values(SEED0)})["kl_to_ref"]["std"] is None   # one seed: no spread


def test_a_target_miss_is_detected_and_marked():
    per_seed = {0: seed_values(SEED0), 1: seed_values(SEED1)}
    assert misses(per_seed) == ["seed 1: win rate vs SFT 0.700 (target >= 0.75)"]
    assert misses({0: seed_values(SEED0)}) == []
    table = markdown(per_seed)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "**0.700 miss**" in rows["1"] and "miss" not in rows["0"]
    assert "**0.700 miss**" in rows["worst (min; max for KL)"]
    assert "0.750" in rows["mean"] and "miss" not in rows["mean"]          # 0.75 >= 0.75
    assert "1/2" in rows["seeds meeting"] and "2/2" in rows["seeds meeting"]
    assert "| 4.00 |" in rows["worst (min; max for KL)"]
    assert "+0.500" in rows["worst (min; max for KL)"]                     # gold gain's min, never marked
    assert table.splitlines()[0].count("|") == len(TARGETS) + 2


def test_unmeasured_kl_and_failed_seed_miss():
    per_seed = {0: seed_values({**SEED0, "kl_to_ref": 7.5})}
    assert misses(per_seed, failed=[3]) == ["seed 3: failed", "seed 0: KL to SFT 7.50 (target <= 6)"]
    assert misses({0: seed_values({k: v for k, v in SEED0.items() if k != "eos_rate_policy"})}) \
        == ["seed 0: EOS rate n/a (target >= 0.9)"]
    assert "| 3 | failed |" in markdown(per_seed, failed=[3])


@pytest.mark.parametrize("text, seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("0-2,7", [0, 1, 2, 7]),
                                         ("3", [3]), (" 1 , 2 ", [1, 2])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "4-2", "0-", "-1", "0,0", "0-2,1", "1.5"])
def test_parse_seeds_refuses(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_parse_sets_yaml_scalars_and_nesting():
    assert parse_sets(["ppo.kl_coef=0.1", "ppo.sampling.temperature=0.7", "ppo.adaptive_kl=false",
                       "reward.loss=elo", "ppo.lr=1e-4"]) == {
        "ppo": {"kl_coef": 0.1, "sampling": {"temperature": 0.7}, "adaptive_kl": False, "lr": "1e-4"},
        "reward": {"loss": "elo"}}
    for bad in ("kl_coef=0.1", "ppo.kl_coef", "ppo..x=1", "ppo.x=[1"):
        with pytest.raises(ValueError, match="--set"):
            parse_sets([bad])


def test_apply_sets_through_the_loader():
    cfg = apply_sets(PipelineConfig(), parse_sets(["ppo.kl_coef=0.1", "ppo.lr=1e-4", "ppo.sampling.temperature=0.7"]))
    assert cfg.ppo.kl_coef == 0.1 and cfg.ppo.lr == 1e-4 and cfg.ppo.sampling.temperature == 0.7
    assert cfg.ppo.sampling.max_new_tokens == PipelineConfig().ppo.sampling.max_new_tokens   # the rest kept
    assert cfg.reward == PipelineConfig().reward
    with pytest.raises(ConfigError, match=r"ppo\.kl_cof: unknown key \(did you mean 'kl_coef'\?\)"):
        apply_sets(PipelineConfig(), parse_sets(["ppo.kl_cof=0.1"]))
    with pytest.raises(ConfigError, match="expected a number"):
        apply_sets(PipelineConfig(), parse_sets(["ppo.kl_coef=high"]))
    with pytest.raises(ConfigError, match="divisible"):                       # the config's cross-field rules
        apply_sets(PipelineConfig(), parse_sets(["ppo.num_mini_batches=5"]))
    with pytest.raises(ConfigError, match="set by the sweep"):
        apply_sets(PipelineConfig(), parse_sets(["ppo.seed=3"]))
    with pytest.raises(ConfigError, match="cannot change sft"):
        apply_sets(PipelineConfig(), parse_sets(["sft.seed=3"]))


def test_seed_configs_move_every_output_and_keep_evaluate_seed(tmp_path):
    base = PipelineConfig()
    c = seed_configs(base, 3, tmp_path / "seed-3", tmp_path / "seed-3" / "reward")
    assert c["reward"].seed == 3 and c["ppo"].seed == 3 and c["evaluate"].seed == base.evaluate.seed
    outs = [c["reward"].out_dir, c["ppo"].reward_path, c["ppo"].out_dir, c["evaluate"].policy_path,
            c["evaluate"].reward_path, c["evaluate"].out_dir]
    assert all(Path(p).is_relative_to(tmp_path / "seed-3") for p in outs)
    assert c["ppo"].reward_path == c["evaluate"].reward_path == c["reward"].out_dir
    assert c["ppo"].out_dir == c["evaluate"].policy_path
    # The project's upstream outputs are read, unchanged.
    assert (c["reward"].model_path, c["reward"].data_dir, c["ppo"].policy_path, c["ppo"].prompts) == \
        (base.reward.model_path, base.reward.data_dir, base.ppo.policy_path, base.ppo.prompts)
    assert (c["evaluate"].sft_path, c["evaluate"].prompts, c["evaluate"].corpus) == \
        (base.evaluate.sft_path, base.evaluate.prompts, base.evaluate.corpus)
