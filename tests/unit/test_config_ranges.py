"""Range checks of every numeric config key (rlhf/config_rules.py) and numbers that YAML 1.1 reads as text.

The walk covers every int and float field of every config dataclass (rlhf/config.py and any stage module's own
``Config``): NaN and inf refused for floats, a large negative number refused and 0 refused unless the lists below
say the key gives them a meaning. A numeric field added without a rule fails here. The expectations are written out
in this file, not read back from the rule table, so the table is checked against them.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import re
import typing
from pathlib import Path

import pytest
import yaml

import rlhf.config as config_module
from rlhf.config import (ConfigError, ModelConfig, PipelineConfig, PPOConfig, PromoteConfig, SamplingConfig,
                         TrainConfig, check_ranges, from_dict, load_params)
from rlhf.config_rules import RANGES, Rule, at_least, numeric_fields

ROOT = Path(__file__).resolve().parents[2]

# Keys whose 0 is a legitimate value (off, all, none, the low end of an interval); every ``seed`` as well.
ZERO_OK = {
    "TrainConfig.warmup_ratio", "TrainConfig.weight_decay", "TrainConfig.checkpoint_every",
    "LoRAConfig.r", "LoRAConfig.dropout", "CollectConfig.max_prompts", "AnnotateConfig.noise",
    "AnnotateConfig.overlap", "PreferencesConfig.max_reject_share", "PreferencesConfig.rating_scale",
    "PreferencesConfig.initial_rating", "PPOConfig.vf_coef", "PPOConfig.entropy_coef", "PPOConfig.kl_coef", "PPOConfig.missing_eos_penalty",
    "PPOConfig.critic_train_layers", "PPOConfig.value_epochs", "PPOConfig.checkpoint_every", "ProbeConfig.every",
    "EvaluateConfig.gold_tie_margin", "PromoteConfig.min_win_rate", "PromoteConfig.max_kl",
    "PromoteConfig.min_gold_gain", "PromoteConfig.min_reward_model_accuracy", "PromoteConfig.reward_min_accuracy",
    "PromoteConfig.reward_min_accuracy_gain", "OrchestrationConfig.timeout_s",
}
# Keys that take any finite number, negative ones included.
NEGATIVE_OK = {"PreferencesConfig.rating_scale", "PreferencesConfig.initial_rating", "PromoteConfig.min_gold_gain"}


def stage_module_configs() -> list[type]:
    """The ``Config`` dataclasses of rlhf/stages/*.py (found by parsing, so no stage module's torch is imported)."""
    found = []
    for path in sorted((ROOT / "rlhf" / "stages").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.ClassDef) and n.name == "Config" for n in tree.body):
            found.append(importlib.import_module(f"rlhf.stages.{path.stem}").Config)
    return found


def config_classes() -> list[type]:
    """The dataclasses of rlhf/config.py, those it re-exports from its own small modules (rlhf/config_*.py), and the
    stage modules' own ``Config``."""
    own = [c for c in vars(config_module).values()
           if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__.startswith("rlhf.config")]
    return own + stage_module_configs()


def numeric(cls: type) -> dict[str, tuple[type, bool]]:
    """{field: (int or float, is a tuple)}, read from the annotations here (not from rlhf.config_rules)."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        many = typing.get_origin(tp) is tuple
        base = args[0] if args and (many or type(None) in typing.get_args(tp)) else tp
        if base in (int, float):
            out[name] = (base, many)
    return out


FIELDS = [(cls, name, kind, many) for cls in config_classes() for name, (kind, many) in numeric(cls).items()]
ZERO_OK |= {f"{cls.__name__}.seed" for cls, name, _, _ in FIELDS if name == "seed"}


def build(cls: type, name: str, many: bool, value):
    """The default config of ``cls`` with ``name`` (its first element, for a tuple) set to ``value``."""
    default = cls()
    if many:
        value = (value, *getattr(default, name)[1:])
    return dataclasses.replace(default, **{name: value})


def test_the_walk_sees_every_config_class():
    names = {c.__name__ for c in config_classes()}
    assert {"TrainConfig", "SamplingConfig", "PPOConfig", "PromoteConfig", "PreferencesConfig",
            "OrchestrationConfig"} <= names
    assert len(FIELDS) >= 80 and ("PPOConfig", "target_kl") in {(c.__name__, n) for c, n, _, _ in FIELDS}


@pytest.mark.parametrize("cls,name,kind,many", FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _, _ in FIELDS])
def test_every_numeric_field_is_range_checked(cls, name, kind, many):
    key, shown = f"{cls.__name__}.{name}", f"{name}[0]" if many else name
    bad = [math.nan, math.inf, -math.inf] if kind is float else []
    bad += [] if key in NEGATIVE_OK else [kind(-10**9)]
    bad += [] if key in ZERO_OK else [kind(0)]
    for value in bad:
        with pytest.raises(ConfigError) as e:
            build(cls, name, many, value)
        assert str(e.value).startswith(f"{shown} must be "), (value, str(e.value))
    for value in ([kind(0)] if key in ZERO_OK else []) + ([kind(-10**9)] if key in NEGATIVE_OK else []):
        build(cls, name, many, value)                                     # a meaningful value stays valid


def leaf_keys(cfg, prefix: str = "") -> list[tuple[str, type, bool]]:
    out = []
    kinds = numeric(type(cfg))
    for f in dataclasses.fields(cfg):
        value, path = getattr(cfg, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            out += leaf_keys(value, path)
        elif f.name in kinds:
            out.append((path, *kinds[f.name]))
    return out


def nested(path: str, value) -> dict:
    head, _, rest = path.partition(".")
    return {head: nested(rest, value) if rest else value}


LEAVES = leaf_keys(PipelineConfig())


@pytest.mark.parametrize("path,kind,many", LEAVES, ids=[p for p, _, _ in LEAVES])
def test_the_loader_names_the_full_dotted_key(tmp_path, path, kind, many):
    """params.yaml with one key out of range: one line naming the file and the key with its whole path."""
    value = math.nan if kind is float else -10**9
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(nested(path, [value, 7.0] if many else value)))
    with pytest.raises(ConfigError) as e:
        load_params(params)
    message = str(e.value)
    assert message.startswith(f"{params}: {path}{'[0]' if many else ''} must be ") and "\n" not in message


def assert_load_error(tmp_path, text: str, message: str) -> None:
    """Loading ``text`` as params.yaml fails with exactly ``<path>: <message>``."""
    params = tmp_path / "params.yaml"
    params.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_params(params)
    assert str(e.value) == f"{params}: {message}"


@pytest.mark.parametrize("text,message", [
    ("sft: {train: {lr: -0.001}}", "sft.train.lr must be > 0 and finite, got -0.001"),
    ("ppo: {lr: .nan}", "ppo.lr must be > 0 and finite, got nan"),
    ("reward: {train: {batch_size: 0}}", "reward.train.batch_size must be >= 1, got 0"),
    ("pretrain: {train: {log_every: 0}}", "pretrain.train.log_every must be >= 1, got 0"),
    ("ppo: {kl_horizon: 0}", "ppo.kl_horizon must be >= 1, got 0"),
    ("ppo: {target_kl: -1}", "ppo.target_kl must be > 0 and finite, got -1.0"),
    ("ppo: {num_mini_batches: 0}", "ppo.num_mini_batches must be >= 1, got 0"),
    ("ppo: {sampling: {max_new_tokens: 5000000}}", "ppo.sampling.max_new_tokens must be in [1, 1_000_000], got 5000000"),
    ("ppo: {checkpoint_every: -5}", "ppo.checkpoint_every must be >= 0 (0 = no checkpoints), got -5"),
    ("ppo: {critic_train_layers: -2}", "ppo.critic_train_layers must be >= -1 (-1 = every layer trains), got -2"),
    ("promote: {max_kl: -.inf}", "promote.max_kl must be >= 0 and finite (null = off), got -inf"),
    ("prepare: {seed: 4294967296}", "prepare.seed must be in [0, 4_294_967_295], got 4294967296"),
    ("preferences: {rating_scale: [1, .inf]}", "preferences.rating_scale[1] must be finite, got inf"),
])
def test_the_issue_cases_fail_when_loading(tmp_path, text, message):
    assert_load_error(tmp_path, text, message)


def test_range_checks_run_before_cross_field_rules_divide():
    with pytest.raises(ConfigError, match=r"^num_mini_batches must be >= 1, got 0$"):
        PPOConfig(num_mini_batches=0)                    # rollout_batch_size % 0 would be a ZeroDivisionError
    with pytest.raises(ConfigError, match=r"^n_head must be >= 1, got 0$"):
        ModelConfig(n_head=0)
    with pytest.raises(ConfigError, match="overlap > 0 needs n_annotators >= 2"):
        from_dict(PipelineConfig, {"annotate": {"n_annotators": 1}})


def test_special_values_stay_valid(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("ppo: {checkpoint_every: 0, critic_train_layers: -1, value_epochs: 0, kl_coef: 0}\n"
                      "collect: {max_prompts: 0}\nsft: {lora: {r: 0}}\npromote: {max_kl: null, min_gold_gain: -0.5}\n"
                      "annotate: {n_annotators: 1, overlap: 0}\n")
    cfg = load_params(params)
    assert (cfg.ppo.checkpoint_every, cfg.ppo.critic_train_layers, cfg.ppo.kl_coef, cfg.collect.max_prompts) == (
        0, -1, 0.0, 0)
    assert cfg.promote.max_kl is None and cfg.promote.min_gold_gain == -0.5 and cfg.annotate.n_annotators == 1


def test_int_fields_refuse_floats_and_bools_when_built_directly():
    with pytest.raises(ConfigError, match=r"^batch_size must be an integer >= 1, got 2.5$"):
        TrainConfig(batch_size=2.5)                                      # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^max_new_tokens must be an integer in \[1, 1_000_000\], got True$"):
        SamplingConfig(max_new_tokens=True)
    with pytest.raises(ConfigError, match=r"^lr must be > 0 and finite, got True$"):
        TrainConfig(lr=True)


# -- numbers written as text --------------------------------------------------------------------------------------
def test_exponents_without_a_dot_are_read_as_floats(tmp_path):
    text = "ppo: {lr: 1e-4, target_kl: 1E+1}\nsft: {train: {lr: 3e-5}}\nreward: {train: {lr: '2.5e-4'}}\n"
    assert yaml.safe_load(text)["ppo"]["lr"] == "1e-4"              # what PyYAML (YAML 1.1) gives the loader
    params = tmp_path / "params.yaml"
    params.write_text(text)
    cfg = load_params(params)
    assert (cfg.ppo.lr, cfg.ppo.target_kl, cfg.sft.train.lr, cfg.reward.train.lr) == (1e-4, 10.0, 3e-5, 2.5e-4)
    assert isinstance(cfg.ppo.lr, float) and isinstance(cfg.ppo.target_kl, float)


@pytest.mark.parametrize("text,message", [
    ("ppo: {total_episodes: 1e3}", "ppo.total_episodes: expected an integer, got '1e3' (write it as 1000)"),
    ("ppo: {total_episodes: 1.0e+3}", "ppo.total_episodes: expected an integer, got 1000.0 (write it as 1000)"),
    ("ppo: {ppo_epochs: 2.5}", "ppo.ppo_epochs: expected an integer, got 2.5"),
    ("ppo: {ppo_epochs: true}", "ppo.ppo_epochs: expected an integer, got True"),
    ("ppo: {lr: true}", "ppo.lr: expected a number, got True"),
    ("ppo: {lr: false}", "ppo.lr: expected a number, got False"),
    ("ppo: {lr: nan}", "ppo.lr: expected a number, got 'nan'"),
    ("ppo: {lr: inf}", "ppo.lr: expected a number, got 'inf'"),
    ("ppo: {lr: '-Infinity'}", "ppo.lr: expected a number, got '-Infinity'"),
    ("ppo: {lr: 1_0e-4}", "ppo.lr: expected a number, got '1_0e-4'"),
    ("ppo: {lr: 1e-4x}", "ppo.lr: expected a number, got '1e-4x'"),
    ("ppo: {lr: 1e999}", "ppo.lr must be > 0 and finite, got inf"),
    ("promote: {max_kl: NaN}", "promote.max_kl: expected a number, got 'NaN'"),
])
def test_numbers_as_text_bools_and_non_finite_are_refused_with_the_key(tmp_path, text, message):
    assert_load_error(tmp_path, text, message)


# -- the table itself ---------------------------------------------------------------------------------------------
def test_the_table_names_only_numeric_fields_of_existing_classes():
    classes = {c.__name__: c for c in config_classes()}
    for cls_name, rules in RANGES.items():
        assert cls_name in classes, f"RANGES names {cls_name}, not a config class"
        stale = set(rules) - set(numeric_fields(classes[cls_name]))
        assert not stale, f"RANGES[{cls_name!r}] names fields that are not numeric fields: {sorted(stale)}"


def test_rule_texts_and_finiteness():
    assert Rule(low=0, low_open=True).text(integer=False) == "> 0 and finite"
    assert at_least(1).text(integer=True) == ">= 1"
    assert Rule(low=0, high=1, high_open=True).text(integer=False) == "in [0, 1)"
    assert Rule().text(integer=False) == "finite" and Rule(high=5).text(integer=True) == "<= 5"
    assert not Rule().holds(math.nan) and not Rule().holds(math.inf) and not Rule().holds(True)
    assert Rule(low=0, low_open=True).holds(1e-9) and not Rule(low=0, low_open=True).holds(0.0)


@dataclasses.dataclass(frozen=True)
class StepsConfig:
    """A stage module's own Config: its rules are passed to check_ranges."""
    steps: int = 10

    def __post_init__(self) -> None:
        check_ranges(self, {"steps": at_least(1, "optimiser steps")})


def test_a_stage_modules_own_config_passes_its_rules():
    with pytest.raises(ConfigError) as e:
        from_dict(StepsConfig, {"steps": 0}, "mystage")
    assert str(e.value) == "mystage.steps must be >= 1 (optimiser steps), got 0"


# -- docs ---------------------------------------------------------------------------------------------------------
def block_names() -> dict[str, list[str]]:
    """Config class name -> the params blocks it fills (``TrainConfig`` -> pretrain.train, sft.train, ...)."""
    out: dict[str, list[str]] = {}

    def walk(cfg, prefix: str) -> None:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                path = f"{prefix}.{f.name}" if prefix else f.name
                out.setdefault(type(value).__name__, []).append(path)
                walk(value, path)
    walk(PipelineConfig(), "")
    return out


def doc_line(cls_name: str, blocks: list[str]) -> str:
    """The doc's bullet for one class: its blocks, then each key's rule (floats' "and finite" said once above)."""
    kinds = numeric_fields(getattr(config_module, cls_name))
    rules = "; ".join(f"`{name}` {rule.text(integer=True)}" + (f" ({rule.note})" if rule.note else "")
                      for name, rule in RANGES[cls_name].items() if name in kinds)
    return "- " + ", ".join(f"`{b}`" for b in blocks) + ": " + rules


def test_the_docs_list_every_range():
    doc = " ".join((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").split())
    section = doc.split("## Ranges of numeric keys", 1)[-1].split("## ", 1)[0]
    blocks = block_names()
    missing = [line for name in RANGES if name in blocks
               for line in [doc_line(name, blocks[name])] if line not in section]
    assert not missing, "docs/configuration.md, section 'Ranges of numeric keys', should read:\n" + "\n".join(missing)
    assert re.search(r"NaN", section) and "1e-4" in doc
