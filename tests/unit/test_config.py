from pathlib import Path

import pytest

from rlhf.config import ConfigError, PipelineConfig, from_dict, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_load():
    cfg = load_params(ROOT / "params.yaml")
    assert cfg.ppo.rollout_batch_size % cfg.ppo.num_mini_batches == 0
    assert cfg.collect.k == 4


def test_unknown_key_names_path_and_suggests(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("ppo:\n  cliprang: 0.1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: ppo.cliprang: unknown key \(did you mean 'cliprange'\?\)"):
        load_params(p)


def test_nested_unknown_key():
    with pytest.raises(ConfigError, match=r"sft.train.lrr"):
        from_dict(PipelineConfig, {"sft": {"train": {"lrr": 1.0}}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"ppo.total_episodes: expected an integer"):
        from_dict(PipelineConfig, {"ppo": {"total_episodes": "many"}})


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="divisible by num_mini_batches"):
        from_dict(PipelineConfig, {"ppo": {"rollout_batch_size": 10, "num_mini_batches": 4}})
    with pytest.raises(ConfigError, match="divisible by grad_accum"):
        from_dict(PipelineConfig, {"sft": {"train": {"batch_size": 10, "grad_accum": 4}}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_params(bad)


def test_config_is_frozen():
    cfg = PipelineConfig()
    with pytest.raises(Exception):
        cfg.ppo.lr = 1.0  # type: ignore[misc]


def test_pairwise_agreement_by_hand():
    from rlhf.evaluation import distinct_n, pairwise_agreement
    gold = [1.0, 0.5, 0.45, 0.0]          # one group of 4: 6 pairs, one of them (0.5 vs 0.45) within 0.1
    scores = [3.0, 1.0, 2.0, 0.0]         # orders (0.5, 0.45) wrongly, everything else right
    assert pairwise_agreement(scores, gold, 4) == (5 / 6, 6)
    assert pairwise_agreement(scores, gold, 4, tie_margin=0.1) == (1.0, 5)
    assert distinct_n(["a b a b", "a b c"]) == 3 / 5
