"""Promotion-gate arithmetic: pure functions of measured numbers and the ``promote:`` thresholds (PromoteConfig).
The measurements come from rlhf/evaluation.py; tasks/promotion.py records the decisions in the registry."""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf.config import PromoteConfig


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    op: str                                     # ">=" or "<="
    status: str                                 # pass | fail | skip (not measured) | off (threshold null)


def check(name: str, value: float | None, threshold: float | None, op: str) -> GateResult:
    """One gate: ``value op threshold``; off when the threshold is null, skipped when the value was not measured,
    failed when it was measured and is NaN or infinite (a broken measurement never promotes)."""
    if threshold is None:
        return GateResult(name, value, threshold, op, "off")
    if value is None:
        return GateResult(name, None, threshold, op, "skip")
    if not math.isfinite(value):
        return GateResult(name, value, threshold, op, "fail")
    ok = value >= threshold if op == ">=" else value <= threshold
    return GateResult(name, value, threshold, op, "pass" if ok else "fail")


def policy_gates(measured: dict, gates: PromoteConfig) -> list[GateResult]:
    return [check("win_rate", measured.get("win_rate"), gates.min_win_rate, ">="),
            check("kl_to_ref", measured.get("kl_to_ref"), gates.max_kl, "<="),
            check("gold_gain", measured.get("gold_gain"), gates.min_gold_gain, ">="),
            check("reward_model_accuracy", measured.get("reward_model_accuracy"), gates.min_reward_model_accuracy,
                  ">=")]


def reward_gates(measured: dict, gates: PromoteConfig) -> list[GateResult]:
    return [check("accuracy", measured.get("accuracy"), gates.reward_min_accuracy, ">="),
            check("accuracy_gain", measured.get("accuracy_gain"), gates.reward_min_accuracy_gain, ">=")]


def decide(results: list[GateResult]) -> tuple[bool, str]:
    """(promote?, one-line reason): no gate failed and at least one passed."""
    failed = [r for r in results if r.status == "fail"]
    if failed:
        return False, "; ".join(f"{r.name} {r.value:.4g} {'<' if r.op == '>=' else '>'} {r.threshold:g}"
                                for r in failed)
    passed = [r for r in results if r.status == "pass"]
    if not passed:
        return False, "no gate could be measured"
    return True, "gates passed: " + ", ".join(f"{r.name} {r.value:.4g} {r.op} {r.threshold:g}" for r in passed)
