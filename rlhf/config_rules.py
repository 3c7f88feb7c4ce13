"""Ranges of the numeric config keys (DESIGN.md invariant 3): one table, checked first in every config dataclass's
``__post_init__`` (``rlhf.config.check_ranges``), so a negative learning rate, a zero batch size or ``log_every: 0``
fails when params.yaml loads, naming the key (``ppo.lr must be > 0 and finite, got nan``), never late in a
training loop as a bare ZeroDivisionError.

Every float must be finite: NaN compares false and inf passes ``> 0``, so ``Rule.holds`` tests ``math.isfinite``
before the bounds. Special values a stage gives a meaning (``checkpoint_every: 0`` = none, ``critic_train_layers:
-1`` = every layer) are inside the range and named in its note. Imports nothing from rlhf (rlhf/config.py imports
this module); tests/unit/test_config_ranges.py fails when a numeric field of a config dataclass has no rule.
"""
from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

MAX_TOKENS = 1_000_000      # a generous bound on any length in tokens; a model's own positions: rlhf/limits.py
MAX_SEED = 2**32 - 1        # seeds are 32-bit (the common range of random, numpy and torch generators)


@dataclass(frozen=True)
class Rule:
    """``low <= x <= high`` (a bound excluded when its ``*_open`` is set), x finite; ``note`` explains special
    values."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def holds(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return False
        return (self.low < x if self.low_open else self.low <= x) and (x < self.high if self.high_open else x <= self.high)

    def text(self, integer: bool) -> str:
        """The condition as a message writes it: ``> 0 and finite``, ``>= 1``, ``in (0, 1]``, ``finite``."""
        has_low, has_high = math.isfinite(self.low), math.isfinite(self.high)
        if has_low and has_high:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if not has_low and not has_high:
            return "finite"
        side = (f"{'>' if self.low_open else '>='} {_num(self.low)}" if has_low
                else f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return side if integer else f"{side} and finite"


def _num(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x):_}" if abs(x) >= 10_000 else str(int(x))
    return repr(float(x))


def at_least(low: float, note: str = "") -> Rule:
    return Rule(low=low, note=note)


def above(low: float, note: str = "") -> Rule:
    return Rule(low=low, low_open=True, note=note)


def within(low: float, high: float, bounds: str = "[]", note: str = "") -> Rule:
    """``bounds``: the brackets of the interval, ``"[)"`` = low included, high excluded."""
    return Rule(low=low, high=high, low_open=bounds[0] == "(", high_open=bounds[1] == ")", note=note)


FINITE = Rule()
POSITIVE = above(0)                 # learning rates, clip ranges, temperatures
COUNT = at_least(1)                 # batch sizes, epochs of integers, step intervals
NONNEGATIVE = at_least(0)           # coefficients and penalties (0 = off)
FRACTION = within(0, 1)
SEED = within(0, MAX_SEED)
TOKENS = within(1, MAX_TOKENS)
SHARE = within(0, 0.5, "()")        # held-out shares: some data on each side, the larger part for training

# Class name (rlhf/config.py) -> field -> rule. A stage module's own ``Config`` passes its table to check_ranges.
RANGES: dict[str, dict[str, Rule]] = {
    "TrainConfig": {
        "epochs": POSITIVE, "batch_size": COUNT, "grad_accum": COUNT, "lr": POSITIVE,
        "warmup_ratio": within(0, 1, "[)"), "weight_decay": NONNEGATIVE, "max_grad_norm": POSITIVE,
        "max_length": within(8, MAX_TOKENS), "log_every": COUNT,
        "checkpoint_every": at_least(0, "0 = no checkpoints"),
    },
    "LoRAConfig": {"r": at_least(0, "0 = full fine-tuning"), "alpha": POSITIVE, "dropout": within(0, 1, "[)")},
    "PrepareConfig": {"val_fraction": SHARE, "eval_fraction": within(0, 1, "()"), "max_chars": COUNT, "seed": SEED},
    "TokenizerConfig": {"vocab_size": COUNT, "min_frequency": COUNT},
    "ModelConfig": {"n_layer": COUNT, "n_head": COUNT, "n_embd": COUNT, "n_positions": TOKENS},
    "PretrainConfig": {"seed": SEED},
    "SFTConfig": {"seed": SEED},
    "SamplingConfig": {"max_new_tokens": TOKENS, "temperature": POSITIVE, "batch_size": COUNT,
                       "max_prompt_tokens": TOKENS},
    "CollectConfig": {"k": at_least(2, "a ranking needs at least two responses"),
                      "max_prompts": at_least(0, "0 = all"), "seed": SEED},
    "AnnotateConfig": {"n_annotators": COUNT, "noise": NONNEGATIVE, "overlap": FRACTION, "seed": SEED},
    "PreferencesConfig": {
        "max_reject_share": FRACTION, "max_field_chars": COUNT, "rating_scale": FINITE, "k_factor": POSITIVE,
        "initial_rating": FINITE, "elo_rounds": COUNT, "val_fraction": SHARE,
        "max_responses": within(2, 1024, note="a ranking needs at least two responses"),
        "max_depth": within(2, 256, note="json recurses once per level"), "max_record_bytes": within(1, 2**30),
    },
    "RewardConfig": {"normalize_samples": COUNT, "seed": SEED},
    "PPOConfig": {
        "total_episodes": COUNT, "rollout_batch_size": COUNT, "num_mini_batches": COUNT, "grad_accum": COUNT,
        "ppo_epochs": COUNT, "lr": POSITIVE, "max_grad_norm": POSITIVE, "cliprange": within(0, 1, "()"),
        "cliprange_value": POSITIVE, "vf_coef": NONNEGATIVE, "entropy_coef": NONNEGATIVE, "gamma": within(0, 1, "(]"), "lam": within(0, 1, "(]"),
        "kl_coef": at_least(0, "0 = no KL penalty"), "target_kl": POSITIVE, "kl_horizon": COUNT,
        "missing_eos_penalty": NONNEGATIVE, "critic_train_layers": at_least(-1, "-1 = every layer trains"),
        "value_epochs": at_least(0, "0 = all"), "log_every": COUNT,
        "checkpoint_every": at_least(0, "0 = no checkpoints"), "seed": SEED,
    },
    "ProbeConfig": {"every": at_least(0, "0 = off"), "max_prompts": COUNT, "score_max_length": TOKENS, "seed": SEED},
    "EvaluateConfig": {"max_prompts": COUNT, "gold_tie_margin": NONNEGATIVE, "rm_pairs_k": at_least(2),
                       "score_max_length": TOKENS, "seed": SEED},
    "PromoteConfig": {
        "min_win_rate": FRACTION, "max_kl": NONNEGATIVE, "min_gold_gain": FINITE,
        "min_reward_model_accuracy": FRACTION, "reward_min_accuracy": FRACTION,
        "reward_min_accuracy_gain": within(-1, 1), "max_prompts": COUNT, "rm_pairs_k": at_least(2), "seed": SEED,
    },
    "OrchestrationConfig": {"start_timeout_s": COUNT, "timeout_s": at_least(0, "0 = no limit")},
}


@functools.lru_cache(maxsize=None)
def numeric_fields(cls: type) -> dict[str, tuple[type, bool, bool]]:
    """{field: (int or float, optional, a tuple of them)} for the numeric fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        tp, optional, many = hints[f.name], False, False
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            tp, optional = next(a for a in typing.get_args(tp) if a is not type(None)), True
        if typing.get_origin(tp) is tuple:
            tp, many = typing.get_args(tp)[0], True
        if tp in (int, float):
            out[f.name] = (tp, optional, many)
    return out


def range_problem(cfg: Any, rules: Optional[dict[str, Rule]] = None) -> Optional[str]:
    """The first field of ``cfg`` outside its rule, as one line starting with the field name; None when all hold."""
    rules = RANGES.get(type(cfg).__name__, {}) if rules is None else rules
    kinds = numeric_fields(type(cfg))
    for name, rule in rules.items():
        kind, optional, many = kinds[name]
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        items = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if many else [(name, value)]
        for key, v in items:
            wrong_type = kind is int and not (isinstance(v, int) and not isinstance(v, bool))
            if wrong_type or not rule.holds(v):
                notes = "; ".join(n for n in (rule.note, "null = off" if optional else "") if n)
                what = ("an integer " if wrong_type else "") + rule.text(kind is int)
                return f"{key} must be {what}{f' ({notes})' if notes else ''}, got {v!r}"
    return None
