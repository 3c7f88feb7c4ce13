"""The pure parts of the seed sweep (benchmarks/seeds.py): parsing ``--seeds`` and ``--set``, the per-seed configs,
the demo targets checked per seed, their summary over seeds (mean, worst case, spread) and the markdown table.
No torch here: the sweep's parent process imports only this and rlhf.config."""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from rlhf.config import ConfigError, PipelineConfig, from_dict

STAGES = ("reward", "ppo", "evaluate")          # what the sweep runs, in this order, on the project's upstream outputs
# Keys the sweep sets for every seed itself: a --set of one of them would be overwritten, so it is refused.
MANAGED = {"reward": ("seed", "out_dir"), "ppo": ("seed", "reward_path", "out_dir"),
           "evaluate": ("policy_path", "reward_path", "out_dir")}


@dataclass(frozen=True)
class Target:
    """One demo target: ``value(evaluate_metrics)`` compared with ``threshold`` (``op`` '>=' or '<='; None: the
    number is reported, never gated). The worst seed is the smallest value for '>=' (and report-only numbers), the
    largest for '<='."""
    key: str
    label: str
    value: Callable[[dict], Optional[float]]
    op: Optional[str] = None
    threshold: Optional[float] = None
    fmt: str = ".3f"

    def met(self, v: Optional[float]) -> Optional[bool]:
        """True/False against the threshold; None for a report-only number. An unmeasured value (None, NaN) misses."""
        if self.op is None:
            return None
        if v is None or math.isnan(v):
            return False
        return v >= self.threshold if self.op == ">=" else v <= self.threshold

    def worst(self, values: list[float]) -> float:
        return max(values) if self.op == "<=" else min(values)

    def header(self) -> str:
        if self.op is None:
            return self.label
        suffix = "x SFT" if self.key == "distinct2_ratio" else ""
        return f"{self.label} ({self.op} {self.threshold:g}{suffix})"

    def show(self, v: Optional[float]) -> str:
        return "n/a" if v is None or math.isnan(v) else format(v, self.fmt)


def metric(name: str) -> Callable[[dict], Optional[float]]:
    return lambda m: None if m.get(name) is None else float(m[name])


def distinct2_ratio(m: dict) -> Optional[float]:
    """distinct-2 of the policy's samples over the SFT policy's (same prompts); None when SFT's is 0 or missing."""
    p, s = m.get("distinct2_policy"), m.get("distinct2_sft")
    return None if p is None or not s else float(p) / float(s)


def gold_gain(m: dict) -> Optional[float]:
    p, s = m.get("gold_score_policy"), m.get("gold_score_sft")
    return None if p is None or s is None else float(p) - float(s)


# The demo's targets (issue "learning that holds for every seed"; README "What the demo shows" for the metrics), read
# from evaluate's metrics (metrics/evaluate.json names).
TARGETS = (
    Target("reward_model_accuracy", "RM accuracy vs gold", metric("reward_model_accuracy"), ">=", 0.90),
    Target("win_rate_vs_sft", "win rate vs SFT", metric("win_rate_vs_sft"), ">=", 0.75),
    Target("kl_to_ref", "KL to SFT", metric("kl_to_ref"), "<=", 6.0, ".2f"),
    Target("eos_rate_policy", "EOS rate", metric("eos_rate_policy"), ">=", 0.90),
    Target("distinct2_ratio", "distinct-2 policy/SFT", distinct2_ratio, ">=", 0.90, ".2f"),
    Target("gold_gain", "gold gain", gold_gain, None, None, "+.3f"),
)


# -- command line ------------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"``; ``"0-2,7"``. Non-negative integers, each at most once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"--seeds: {part!r} is not a seed (N) or a range (N-M) of non-negative integers")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"--seeds: range {part!r} ends before it starts")
        seeds.extend(range(a, b + 1))
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds: seed {twice[0]} given twice")
    return seeds


def parse_sets(items: list[str]) -> dict:
    """``["ppo.kl_coef=0.1", "ppo.sampling.temperature=0.7"]`` -> {"ppo": {"kl_coef": 0.1, "sampling": {...}}}.
    Values are YAML scalars (``true``, ``1e-4``, ``null``, ``[a, b]``), as params.yaml would have them."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"--set {item!r}: expected section.key=value (e.g. ppo.kl_coef=0.1)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: not a YAML value: {e}") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p} is set to a value and to a section")
        node[parts[-1]] = value
    return out


def apply_sets(cfg: PipelineConfig, sets: dict, stages=STAGES) -> PipelineConfig:
    """``cfg`` with the overrides of ``parse_sets`` applied through the loader (rlhf/config_loader.from_dict): an
    unknown key, a wrong type or a broken cross-field rule raises ConfigError exactly as in params.yaml."""
    for section, data in sets.items():
        if section not in stages:
            raise ConfigError(f"--set {section}.*: the sweep runs {', '.join(stages)}; it cannot change {section}")
        managed = sorted(k for k in data if k in MANAGED[section])
        if managed:
            raise ConfigError(f"--set {section}.{managed[0]}: set by the sweep for every seed")
        base = cfg.section(section)
        cfg = dataclasses.replace(cfg, **{section: from_dict(type(base), data, section, base)})
    return cfg


def seed_configs(cfg: PipelineConfig, seed: int, seed_dir: Path, reward_dir: Path) -> dict:
    """The reward, ppo and evaluate configs of one seed: reward.seed and ppo.seed = ``seed``, every output (and its
    ``.ckpt`` sibling) under ``seed_dir``, the reward model read from ``reward_dir``. evaluate keeps its own seed, so
    every seed is judged on the same held-out prompts with the same sampling seed; inputs stay the project's."""
    seed_dir, reward_dir = Path(seed_dir), Path(reward_dir)
    policy = str(seed_dir / "policy")
    return {"reward": dataclasses.replace(cfg.reward, seed=seed, out_dir=str(seed_dir / "reward")),
            "ppo": dataclasses.replace(cfg.ppo, seed=seed, reward_path=str(reward_dir), out_dir=policy),
            "evaluate": dataclasses.replace(cfg.evaluate, policy_path=policy, reward_path=str(reward_dir),
                                            out_dir=str(seed_dir / "evaluate"))}


# -- the table -----------------------------------------------------------------------------------------------------
def seed_values(evaluate_metrics: dict, targets=TARGETS) -> dict[str, Optional[float]]:
    return {t.key: t.value(evaluate_metrics) for t in targets}


def summarize(per_seed: dict[int, dict], targets=TARGETS) -> dict[str, dict]:
    """Per target over the seeds that finished (``per_seed``: seed -> seed_values): mean, worst, std (sample
    standard deviation, n - 1; None for one seed), n, and how many seeds meet the target."""
    out = {}
    for t in targets:
        vals = [v for v in (m.get(t.key) for m in per_seed.values()) if v is not None and not math.isnan(v)]
        met = [t.met(m.get(t.key)) for m in per_seed.values()]
        out[t.key] = {"mean": statistics.fmean(vals) if vals else None, "worst": t.worst(vals) if vals else None,
                      "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals),
                      "met": None if t.op is None else sum(bool(x) for x in met)}
    return out


def misses(per_seed: dict[int, dict], failed=(), targets=TARGETS) -> list[str]:
    """Every reason the sweep fails its gate, one line each: a seed that failed, a seed that misses a target."""
    lines = [f"seed {s}: failed" for s in failed]
    for s in sorted(per_seed):
        for t in targets:
            v = per_seed[s].get(t.key)
            if t.met(v) is False:
                lines.append(f"seed {s}: {t.label} {t.show(v)} (target {t.op} {t.threshold:g})")
    return lines


def cell(t: Target, v: Optional[float]) -> str:
    return f"**{t.show(v)} miss**" if t.met(v) is False else t.show(v)


def markdown(per_seed: dict[int, dict], failed=(), targets=TARGETS) -> str:
    """One row per seed (misses in bold, marked ``miss``; a failed seed says so), then mean, worst (min; max for a
    '<=' target such as KL), std and the count of seeds meeting each target."""
    n = len(per_seed) + len(failed)
    rows = [["seed", *(t.header() for t in targets)], ["---"] * (len(targets) + 1)]
    for s in sorted([*per_seed, *failed]):
        rows.append([str(s), *(["failed"] + [""] * (len(targets) - 1) if s in failed
                               else [cell(t, per_seed[s].get(t.key)) for t in targets])])
    summary = summarize(per_seed, targets)
    rows.append(["mean", *(cell(t, summary[t.key]["mean"]) for t in targets)])
    rows.append(["worst (min; max for KL)", *(cell(t, summary[t.key]["worst"]) for t in targets)])
    rows.append(["std (seed to seed)", *(format(summary[t.key]["std"], t.fmt.lstrip("+"))
                                         if summary[t.key]["std"] is not None else "n/a" for t in targets)])
    rows.append(["seeds meeting", *("" if t.op is None else f"{summary[t.key]['met']}/{n}" for t in targets)])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)
