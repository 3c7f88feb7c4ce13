"""Promotion's service side: which versions wait for a decision, loading them, measuring them with the core
(rlhf/evaluation.py, rlhf/gates.py), and writing the decision to the registry and an MLflow run.

Reward model first (gate: held-out pairwise accuracy against the gold judge, and no loss against the current
champion), then the policy: challenger vs champion on held-out prompts (vs the SFT reference when there is no
champion yet), judged by the gold judge (win rate, gold-score gain), the reward-model champion's scores, and its KL
to the reference. A decision report is a dict: model, challenger, champion_before, baseline, metrics, gates,
decision (promoted | refused | unchanged) and reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import mlflow
from mlflow import MlflowClient

from rlhf.config import EvaluateConfig, PromoteConfig, SamplingConfig
from rlhf.evaluation import (PolicyComparison, compare_policies, mean, preference_accuracy, reward_model_accuracy,
                             win_rate)
from rlhf.gates import GateResult, decide, policy_gates, reward_gates
from tasks.model_loading import LocalModel, load_model
from tasks.registry import (CHALLENGER, CHAMPION, POLICY_NAME, REWARD_NAME, RegistryError, set_champion,
                            version_by_alias)


@dataclass(frozen=True)
class Setting:
    """What every measurement of one promotion shares: the held-out prompts, the judge (None without the demo's
    corpus), the reference (SFT) policy and how to sample."""
    prompts: list[str]
    judge: Any
    reference: Any
    reference_path: str
    sampling: SamplingConfig
    tie_margin: float
    heldout: Optional[list] = None        # held-out human rankings: the reward gate's accuracy when the judge is no gold
    score_max_length: int = 64


class Pending(NamedTuple):
    """A registered model's challenger and champion versions; ``unchanged`` is the report when there is nothing to
    decide (no challenger, already champion, already decided)."""
    challenger: Any
    champion: Any
    unchanged: Optional[dict]


def _tag(mv, key: str) -> str | None:
    return (mv.tags or {}).get(key) if mv is not None else None


def _float(x) -> float | None:
    try:
        return float(x) if x not in (None, "") else None
    except ValueError:
        return None


def load_version(name: str, version) -> Any:
    """The python model (with .tok and .model) of a registered version, its weights read as data."""
    return load_model(f"models:/{name}/{version}").unwrap_python_model()


def pending(name: str, force: bool) -> Pending:
    ch, champ = version_by_alias(name, CHALLENGER), version_by_alias(name, CHAMPION)
    reason = ("no challenger" if ch is None else "challenger is already champion"
              if champ is not None and ch.version == champ.version else None)
    if reason is None and not force and _tag(ch, "promotion.decision"):
        reason = (f"v{ch.version} already decided ({_tag(ch, 'promotion.decision')} at {_tag(ch, 'promotion.at')});"
                  " force to re-evaluate")
    if reason is None:
        return Pending(ch, champ, None)
    return Pending(ch, champ, {"model": name, "decision": "unchanged", "reason": reason,
                               "champion_before": champ and str(champ.version)})


def setting(ev: EvaluateConfig, gates: PromoteConfig, prompts_path: str | None = None, corpus_path: str | None = None,
            reference_path: str | None = None) -> Setting:
    """The measurement setting from the ``evaluate`` section's paths (each overridable)."""
    from rlhf.data import load_jsonl
    from rlhf.reward_scoring import load_scorer
    from rlhf.judges import load_judge
    prompts_path, corpus_path = prompts_path or ev.prompts, corpus_path or ev.corpus
    reference_path = reference_path or ev.sft_path
    for what, p in (("held-out prompts", prompts_path), ("reference (SFT) model", reference_path)):
        if not Path(p).exists():
            raise RegistryError(f"{what} {p} not found: run the pipeline (or `dvc pull`) first")
    return Setting(prompts=[r["prompt"] for r in load_jsonl(prompts_path)][: gates.max_prompts],
                   judge=None if ev.judge == "gold" and not Path(corpus_path).exists() else load_judge(
                       ev.judge, corpus_path, ev.reward_path, load_scorer, ev.score_max_length),
                   heldout=load_jsonl(ev.heldout_preferences) if ev.heldout_preferences and Path(
                       ev.heldout_preferences).exists() else None, score_max_length=ev.score_max_length,
                   reference=LocalModel(Path(reference_path), "policy", {}).unwrap_python_model(),
                   reference_path=str(reference_path), sampling=ev.sampling, tie_margin=ev.gold_tie_margin)


def _decision(name: str, pend: Pending, baseline: str, metrics: dict, gates: list[GateResult]) -> dict:
    ok, reason = decide(gates)
    return {"model": name, "challenger": str(pend.challenger.version),
            "champion_before": pend.champion and str(pend.champion.version), "baseline": baseline,
            "metrics": metrics, "gates": [asdict(r) for r in gates], "decision": "promoted" if ok else "refused",
            "reason": reason, **serving(name, str(pend.challenger.version) if ok else
                                        pend.champion and str(pend.champion.version))}


def serving(name: str, version: str | None) -> dict:
    """What a scoring server started after this decision serves: ``champion`` is resolved when the server starts,
    so a later promotion or rollback moves what the next start serves."""
    return {"serve": f"rlhf serve --model models:/{name}@champion", "serves": version}


def unloadable(name: str, pend: Pending, error: Exception) -> dict:
    """The decision when a version of this promotion cannot be loaded as data (tasks/model_loading.py): refused,
    with the loader's reason; nothing of it ran."""
    champ = pend.champion and str(pend.champion.version)
    return {"model": name, "challenger": str(pend.challenger.version), "champion_before": champ, "baseline": "n/a",
            "metrics": {}, "gates": [], "decision": "refused", "reason": f"not loaded: {error}", **serving(name, champ)}


def judge_reward(s: Setting, g: PromoteConfig, pend: Pending) -> dict:
    """Gate the reward-model challenger on its held-out accuracy (vs the gold judge; else its val_accuracy tag)."""
    ch, champ = pend.challenger, pend.champion
    if s.judge is not None and s.judge.name != "gold" and s.heldout:
        versions = {"accuracy": ch, "champion_accuracy": champ}
        m = {label: preference_accuracy(load_version(REWARD_NAME, mv.version), s.heldout, s.score_max_length)[
            "accuracy"] for label, mv in versions.items() if mv is not None}
        m["accuracy_by"] = "held-out human preferences"
    elif s.judge is not None and s.judge.name == "gold":
        scorers = {"accuracy": load_version(REWARD_NAME, ch.version)}
        if champ is not None:
            scorers["champion_accuracy"] = load_version(REWARD_NAME, champ.version)
        measured = reward_model_accuracy(scorers, s.reference, s.judge, s.prompts, g.rm_pairs_k, s.sampling,
                                         g.seed + 1, s.tie_margin, score_max_length=s.score_max_length)
        m: dict = {}
        for label, acc in measured.items():
            m[label], m[f"{label}_pairs"] = acc["accuracy"], acc["pairs"]
        m["accuracy_by"] = "gold judge, held-out prompts"
    else:
        m = {"accuracy": _float(_tag(ch, "metrics.val_accuracy")),
             "champion_accuracy": _float(_tag(champ, "metrics.val_accuracy")), "accuracy_by": "val_accuracy tag"}
    if m.get("champion_accuracy") is not None and m.get("accuracy") is not None:
        m["accuracy_gain"] = m["accuracy"] - m["champion_accuracy"]
    baseline = f"champion v{champ.version}" if champ else "none"
    return _decision(REWARD_NAME, pend, baseline, m, reward_gates(m, g))


def comparison_metrics(c: PolicyComparison) -> dict:
    """Promotion's metric names for a challenger vs baseline comparison."""
    m = {"kl_to_ref_baseline": float(c.kl_baseline.mean()) if c.kl_baseline is not None else 0.0,
         "eos_rate_challenger": mean(map(float, c.challenger.ended)),
         "eos_rate_baseline": mean(map(float, c.baseline.ended)), "kl_to_ref": float(c.kl_challenger.mean())}
    by = "gold" if c.gold_challenger is not None else "rm" if c.rm_challenger is not None else None
    if by:
        ours, theirs = getattr(c, f"{by}_challenger"), getattr(c, f"{by}_baseline")
        m["win_rate"], m["win_rate_by"] = (win_rate(ours, theirs) if c.prompts else None), by
    for key in ("gold", "rm"):
        ours, theirs = getattr(c, f"{key}_challenger"), getattr(c, f"{key}_baseline")
        if ours is not None:
            m[f"{key}_challenger"], m[f"{key}_baseline"] = mean(ours), mean(theirs)
            m[f"{key}_gain"] = m[f"{key}_challenger"] - m[f"{key}_baseline"]
    m["n_prompts"] = len(c.prompts)
    m["examples"] = [{"prompt": p, "challenger": a, "baseline": b}
                     for p, a, b in list(zip(c.prompts, c.challenger.texts, c.baseline.texts))[:5]]
    return m


def _scoring_version(reward: dict) -> str | None:
    """The reward model that scores the policies: this promotion's new champion, else the champion, else the
    challenger."""
    if reward.get("decision") == "promoted":
        return reward["challenger"]
    for alias in (CHAMPION, CHALLENGER):
        mv = version_by_alias(REWARD_NAME, alias)
        if mv is not None:
            return mv.version
    return None


def _trained_on_accuracy(ch, reward: dict, scorer_v: str | None) -> dict:
    """Accuracy of the reward model the policy was trained against (lineage; else the one scoring here): measured in
    this promotion when it was, else recorded on that version by an earlier promotion or its stage run."""
    trained_on = _tag(ch, "lineage.reward_model_version") or scorer_v
    if not trained_on:
        return {}
    measured = {reward.get("challenger"): reward.get("metrics", {}).get("accuracy"),
                reward.get("champion_before"): reward.get("metrics", {}).get("champion_accuracy")}
    tags = MlflowClient().get_model_version(REWARD_NAME, trained_on).tags or {}
    value = measured.get(str(trained_on))
    return {"reward_model_version": str(trained_on), "reward_model_accuracy": value if value is not None else _float(
        tags.get("promotion.accuracy") or tags.get("metrics.val_accuracy"))}


def judge_policy(s: Setting, g: PromoteConfig, reward: dict, pend: Pending) -> dict:
    """Gate the policy challenger against the champion (or the SFT reference when there is none). ``reward`` is the
    reward model's report of this promotion: its champion after it scores both policies."""
    scorer_v = _scoring_version(reward)
    scorer = load_version(REWARD_NAME, scorer_v) if scorer_v is not None else None
    champ = pend.champion
    baseline = load_version(POLICY_NAME, champ.version) if champ is not None else s.reference
    c = compare_policies(load_version(POLICY_NAME, pend.challenger.version), baseline, s.reference, s.prompts,
                         s.sampling, g.seed, judge=s.judge, scorer=scorer, score_max_length=s.score_max_length)
    m = comparison_metrics(c)
    m["scored_by_reward_model"] = scorer_v and str(scorer_v)
    m.update(_trained_on_accuracy(pend.challenger, reward, m["scored_by_reward_model"]))
    base = f"champion v{champ.version}" if champ else f"reference {s.reference_path}"
    return _decision(POLICY_NAME, pend, base, m, policy_gates(m, g))


def record(report: dict, run_id: str | None) -> None:
    """Write one decision to the registry, in the order that leaves a consistent registry after a failure at any
    step: re-read the champion (refuse when it moved since it was measured), move ``champion`` when promoted, tag the
    challenger (.reason, .run_id, .baseline, .at and every metric), and write ``promotion.decision`` last: a
    version counts as decided (``pending`` skips it) only once everything else is in place."""
    client, name, v = MlflowClient(), report["model"], report["challenger"]
    now = version_by_alias(name, CHAMPION)
    now_v = str(now.version) if now is not None else None
    if now_v != report.get("champion_before") and now_v != str(v):
        raise RegistryError(f"{name}: champion moved from {_v(report.get('champion_before'))} to {_v(now_v)} while "
                            f"v{v} was measured against it; nothing recorded: run the promotion again")
    if report["decision"] == "promoted":
        set_champion(name, v)
    tags = {"promotion.reason": report["reason"][:4900], "promotion.baseline": report["baseline"],
            "promotion.run_id": run_id or "", "promotion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tags.update({f"promotion.{k}": f"{x:.6g}" if isinstance(x, float) else str(x)
                 for k, x in report["metrics"].items() if isinstance(x, (int, float, str))})
    tags.pop("promotion.decision", None)
    tags["promotion.decision"] = report["decision"]           # last (dicts keep insertion order)
    for k, x in tags.items():
        client.set_model_version_tag(name, v, k, x)


def _v(version) -> str:
    return f"v{version}" if version else "none"


def log_decisions(reports: dict[str, dict], gates: PromoteConfig) -> str:
    """One MLflow run ``promote`` (nested under the active run, if any): gates as params, every measured number,
    the report as JSON and markdown; then each decision recorded on its version. Returns the run id."""
    from tasks.promotion_report import report_markdown
    with mlflow.start_run(run_name="promote", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tag("rlhf.stage", "promote")
        mlflow.log_params({f"gate.{k}": str(v) for k, v in asdict(gates).items()})
        for kind, r in reports.items():
            mlflow.log_metrics({f"{kind}/{k}": float(v) for k, v in r.get("metrics", {}).items()
                                if isinstance(v, (int, float)) and math.isfinite(float(v))})
            mlflow.set_tag(f"promotion.{kind}", r["decision"])
        mlflow.log_dict({**reports, "gates": asdict(gates)}, "promotion/report.json")
        mlflow.log_text(report_markdown(list(reports.values())), "promotion/report.md")
        for r in reports.values():
            if "challenger" in r:
                record(r, run.info.run_id)
        return run.info.run_id
