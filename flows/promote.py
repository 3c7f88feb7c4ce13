"""Promotion: the ``challenger`` of each registered model takes alias ``champion`` only when its gates pass.

Reward model first (gate: held-out pairwise accuracy against the gold judge, and no loss against the current
champion), then the policy: challenger vs champion on held-out prompts (vs the SFT reference when there is no
champion yet), judged by the gold judge (win rate, gold-score gain), the reward-model champion's scores, and its KL
to the reference. Each decision and its numbers go to a report (JSON + markdown) on an MLflow run ``promote`` and to
``promotion.*`` tags on the version. ``rollback`` points ``champion`` back at the previous one.

``promote()`` is a plain function (the pipeline calls it at the end of a run, the CLI calls it); ``promote_flow`` and
``rollback_flow`` are the same as Prefect flows for deployments and schedules.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow

from rlhf.config import PromoteConfig

from tasks.registry import (CHALLENGER, CHAMPION, POLICY_NAME, REWARD_NAME, RegistryError, connect, load_model,
                            rollback, set_champion, version_by_alias)


# The gates are the ``promote:`` section of params.yaml, typed in the core config like every other section.
Gates = PromoteConfig


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    op: str                                     # ">=" or "<="
    status: str                                 # pass | fail | skip (not measured) | off (threshold null)


def check(name: str, value: float | None, threshold: float | None, op: str) -> GateResult:
    if threshold is None:
        return GateResult(name, value, threshold, op, "off")
    if value is None or not math.isfinite(value):
        return GateResult(name, None, threshold, op, "skip")
    ok = value >= threshold if op == ">=" else value <= threshold
    return GateResult(name, value, threshold, op, "pass" if ok else "fail")


def policy_gates(m: dict, g: Gates) -> list[GateResult]:
    return [check("win_rate", m.get("win_rate"), g.min_win_rate, ">="),
            check("kl_to_ref", m.get("kl_to_ref"), g.max_kl, "<="),
            check("gold_gain", m.get("gold_gain"), g.min_gold_gain, ">="),
            check("reward_model_accuracy", m.get("reward_model_accuracy"), g.min_reward_model_accuracy, ">=")]


def reward_gates(m: dict, g: Gates) -> list[GateResult]:
    return [check("accuracy", m.get("accuracy"), g.reward_min_accuracy, ">="),
            check("accuracy_gain", m.get("accuracy_gain"), g.reward_min_accuracy_gain, ">=")]


def decide(results: list[GateResult]) -> tuple[bool, str]:
    """(promote?, one-line reason)."""
    failed = [r for r in results if r.status == "fail"]
    if failed:
        return False, "; ".join(f"{r.name} {r.value:.4g} {'<' if r.op == '>=' else '>'} {r.threshold:g}"
                                for r in failed)
    passed = [r for r in results if r.status == "pass"]
    if not passed:
        return False, "no gate could be measured"
    return True, "gates passed: " + ", ".join(f"{r.name} {r.value:.4g} {r.op} {r.threshold:g}" for r in passed)


def load_settings(params_path: str | Path):
    """(PipelineConfig, Gates) from params.yaml (the ``promote:`` section is optional)."""
    from rlhf.config import load_params
    cfg = load_params(params_path)
    return cfg, cfg.promote


# ------------------------------------------------------------------------------------------------ measurements
def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def reward_accuracy(scorers: dict, reference, judge, prompts: list[str], g: Gates, sampling, tie_margin: float) -> dict:
    """Held-out pairwise accuracy of each reward model (``scorers``: label -> RewardScorer) against the gold judge on
    ``rm_pairs_k`` reference-policy samples per prompt (the same pairs for every model)."""
    from rlhf.generation import sample_responses
    from rlhf.reward import score_texts
    from rlhf.stages.evaluate import pairwise_agreement
    rep = [p for p in prompts for _ in range(g.rm_pairs_k)]
    texts, ended = sample_responses(reference.model, reference.tok, rep, sampling.max_new_tokens,
                                    sampling.temperature, sampling.batch_size, g.seed + 1)
    gold = judge.score_many(rep, texts, ended)
    out = {}
    for label, rm in scorers.items():
        scores = score_texts(rm.model, rm.tok, rep, texts, ended, 64).tolist()
        out[label], out[f"{label}_pairs"] = pairwise_agreement(scores, gold, g.rm_pairs_k, tie_margin)
    return out


def compare_policies(challenger, baseline, reference, scorer, judge, prompts: list[str], g: Gates, sampling) -> dict:
    """Challenger vs baseline on the same prompts and seed: gold scores and win rate (the reward model's scores
    decide the win rate when there is no judge), reward-model scores, KL of each to the reference (nats/response)."""
    from rlhf.generation import sample_responses
    from rlhf.reward import score_texts
    from rlhf.stages.evaluate import sequence_logprob, win_rate
    s, m = sampling, {}
    samples = {}
    for label, pol in (("challenger", challenger), ("baseline", baseline)):
        texts, ended = sample_responses(pol.model, pol.tok, prompts, s.max_new_tokens, s.temperature, s.batch_size,
                                        g.seed)
        samples[label] = (texts, ended)
        kl = (sequence_logprob(pol.model, pol.tok, prompts, texts, ended, s.temperature)
              - sequence_logprob(reference.model, reference.tok, prompts, texts, ended, s.temperature))
        m[f"kl_to_ref_{label}"] = float(kl.mean())
        m[f"eos_rate_{label}"] = _mean(map(float, ended))
        if judge is not None:
            m[f"gold_{label}_list"] = judge.score_many(prompts, texts, ended)
        if scorer is not None:
            m[f"rm_{label}_list"] = score_texts(scorer.model, scorer.tok, prompts, texts, ended, 64).tolist()
    m["kl_to_ref"] = m.pop("kl_to_ref_challenger")
    key = "gold" if judge is not None else "rm" if scorer is not None else None
    if key:
        m["win_rate"] = win_rate(m[f"{key}_challenger_list"], m[f"{key}_baseline_list"]) if prompts else None
        m["win_rate_by"] = key
    for key in ("gold", "rm"):
        if f"{key}_challenger_list" in m:
            m[f"{key}_challenger"] = _mean(m.pop(f"{key}_challenger_list"))
            m[f"{key}_baseline"] = _mean(m.pop(f"{key}_baseline_list"))
            m[f"{key}_gain"] = m[f"{key}_challenger"] - m[f"{key}_baseline"]
    m["n_prompts"] = len(prompts)
    m["examples"] = [{"prompt": p, "challenger": a, "baseline": b}
                     for p, a, b in list(zip(prompts, samples["challenger"][0], samples["baseline"][0]))[:5]]
    return m


# ------------------------------------------------------------------------------------------------ promotion
def _tag(mv, key: str) -> str | None:
    return (mv.tags or {}).get(key) if mv is not None else None


def _float(x) -> float | None:
    try:
        return float(x) if x not in (None, "") else None
    except ValueError:
        return None


def _load(name: str, version) -> object:
    """The python model (with .tok and .model) of a registered version, loaded through its pyfunc."""
    return load_model(f"models:/{name}/{version}").unwrap_python_model()


def _pending(name: str, force: bool):
    """(challenger, champion, None) when there is something to decide, else (.., .., an "unchanged" report)."""
    ch, champ = version_by_alias(name, CHALLENGER), version_by_alias(name, CHAMPION)
    reason = ("no challenger" if ch is None else "challenger is already champion"
              if champ is not None and ch.version == champ.version else None)
    if reason is None and not force and _tag(ch, "promotion.decision"):
        reason = (f"v{ch.version} already decided ({_tag(ch, 'promotion.decision')} at {_tag(ch, 'promotion.at')});"
                  " force to re-evaluate")
    if reason is None:
        return ch, champ, None
    return ch, champ, {"model": name, "decision": "unchanged", "reason": reason,
                       "champion_before": champ and str(champ.version)}


def _report(name: str, challenger, champion, baseline: str, metrics: dict, gates: list[GateResult]) -> dict:
    ok, reason = decide(gates)
    return {"model": name, "challenger": str(challenger.version), "champion_before": champion and str(champion.version),
            "baseline": baseline, "metrics": metrics, "gates": [asdict(r) for r in gates],
            "decision": "promoted" if ok else "refused", "reason": reason}


def promote_reward(ctx: dict, g: Gates, ch, champ) -> dict:
    """Gate the reward-model challenger on its held-out accuracy (vs the gold judge; else its val_accuracy tag)."""
    if ctx["judge"] is not None:
        scorers = {"accuracy": _load(REWARD_NAME, ch.version)}
        if champ is not None:
            scorers["champion_accuracy"] = _load(REWARD_NAME, champ.version)
        m = reward_accuracy(scorers, ctx["reference"], ctx["judge"], ctx["prompts"], g, ctx["sampling"],
                            ctx["tie_margin"])
        m["accuracy_by"] = "gold judge, held-out prompts"
    else:
        m = {"accuracy": _float(_tag(ch, "metrics.val_accuracy")),
             "champion_accuracy": _float(_tag(champ, "metrics.val_accuracy")), "accuracy_by": "val_accuracy tag"}
    if m.get("champion_accuracy") is not None and m.get("accuracy") is not None:
        m["accuracy_gain"] = m["accuracy"] - m["champion_accuracy"]
    return _report(REWARD_NAME, ch, champ, f"champion v{champ.version}" if champ else "none", m, reward_gates(m, g))


def promote_policy(ctx: dict, g: Gates, reward: dict, ch, champ) -> dict:
    """Gate the policy challenger against the champion (or the SFT reference when there is none). ``reward`` is the
    reward model's report of this promotion: its champion after it scores both policies."""
    from mlflow import MlflowClient
    rm_champ, rm_ch = version_by_alias(REWARD_NAME, CHAMPION), version_by_alias(REWARD_NAME, CHALLENGER)
    scorer_v = (reward["challenger"] if reward["decision"] == "promoted" else
                rm_champ.version if rm_champ is not None else rm_ch.version if rm_ch is not None else None)
    scorer = _load(REWARD_NAME, scorer_v) if scorer_v is not None else None
    baseline = _load(POLICY_NAME, champ.version) if champ is not None else ctx["reference"]
    m = compare_policies(_load(POLICY_NAME, ch.version), baseline, ctx["reference"], scorer, ctx["judge"],
                         ctx["prompts"], g, ctx["sampling"])
    m["scored_by_reward_model"] = scorer_v and str(scorer_v)
    # Accuracy of the reward model the policy was trained against (lineage; else the one scoring here): measured
    # in this promotion when it was, else recorded on that version by an earlier promotion or its stage run.
    trained_on = _tag(ch, "lineage.reward_model_version") or m["scored_by_reward_model"]
    if trained_on:
        measured = {reward.get("challenger"): reward.get("metrics", {}).get("accuracy"),
                    reward.get("champion_before"): reward.get("metrics", {}).get("champion_accuracy")}
        tags = MlflowClient().get_model_version(REWARD_NAME, trained_on).tags or {}
        value = measured.get(str(trained_on))
        m["reward_model_version"] = str(trained_on)
        m["reward_model_accuracy"] = value if value is not None else _float(
            tags.get("promotion.accuracy") or tags.get("metrics.val_accuracy"))
    base = f"champion v{champ.version}" if champ else f"reference {ctx['reference_path']}"
    return _report(POLICY_NAME, ch, champ, base, m, policy_gates(m, g))


def _record(report: dict, run_id: str | None) -> None:
    """Tags on the challenger version: promotion.decision, .reason, .run_id, .baseline, .at and every metric."""
    from mlflow import MlflowClient
    client, name, v = MlflowClient(), report["model"], report["challenger"]
    tags = {"promotion.decision": report["decision"], "promotion.reason": report["reason"][:4900],
            "promotion.baseline": report["baseline"], "promotion.run_id": run_id or "",
            "promotion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tags.update({f"promotion.{k}": f"{x:.6g}" if isinstance(x, float) else str(x)
                 for k, x in report["metrics"].items() if isinstance(x, (int, float, str))})
    for k, x in tags.items():
        client.set_model_version_tag(name, v, k, x)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def report_markdown(reports: list[dict]) -> str:
    """The decision, the gates and the numbers, one section per model."""
    lines = ["# Promotion report", ""]
    for r in reports:
        lines += [f"## {r['model']}: {r['decision']}", "", r["reason"], ""]
        if "challenger" not in r:
            continue
        lines += [f"challenger v{r['challenger']} vs {r['baseline']} (champion before: {r['champion_before']})", "",
                  "| gate | value | rule | status |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {_fmt(x['value'])} | {x['op']} {_fmt(x['threshold'])} | {x['status']} |"
                  for x in r["gates"]]
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["metrics"].items() if k != "examples"]
        examples = r["metrics"].get("examples") or []
        if examples:
            lines += ["", "| prompt | challenger | baseline |", "|---|---|---|"]
            lines += ["| " + " | ".join(_cell(e[k]) for k in ("prompt", "challenger", "baseline")) + " |"
                      for e in examples]
        lines.append("")
    return "\n".join(lines)


def promote(params_path: str = "params.yaml", gates: Gates | None = None, prompts_path: str | None = None,
            corpus_path: str | None = None, reference_path: str | None = None, dry_run: bool = False,
            force: bool = False, report_path: str | None = None) -> dict:
    """Gate and promote the reward model, then the policy. Returns {"reward": report, "policy": report, "run_id",
    "gates"}; a report has model, challenger, champion_before, baseline, metrics, gates, decision (promoted | refused |
    unchanged) and reason. Paths default to params.yaml's ``evaluate`` section, gates to its ``promote`` section.
    The report run (``run_id``) is nested under the active run if any; there is none (None) for a dry run or when
    nothing was decided. ``dry_run`` measures and decides but changes nothing; ``force`` re-evaluates a challenger
    already decided. ``report_path`` (e.g. metrics/promote.json) also gets the returned record as JSON."""
    import mlflow

    from rlhf.data import load_jsonl
    from rlhf.demo.judge import GoldJudge
    from tasks.registry import LocalModel
    from tasks.tracking import setup_tracking
    cfg, file_gates = load_settings(params_path)
    g, ev = gates or file_gates, cfg.evaluate
    connect()
    setup_tracking()
    rm, pol = _pending(REWARD_NAME, force), _pending(POLICY_NAME, force)
    reports = {"reward": rm[2], "policy": pol[2]}
    if not (rm[2] and pol[2]):
        prompts_path, corpus_path = prompts_path or ev.prompts, corpus_path or ev.corpus
        reference_path = reference_path or ev.sft_path
        for what, p in (("held-out prompts", prompts_path), ("reference (SFT) model", reference_path)):
            if not Path(p).exists():
                raise RegistryError(f"{what} {p} not found: run the pipeline (or `dvc pull`) first")
        ctx = {"prompts": [r["prompt"] for r in load_jsonl(prompts_path)][: g.max_prompts],
               "judge": GoldJudge.from_corpus(corpus_path) if Path(corpus_path).exists() else None,
               "reference": LocalModel(Path(reference_path), "policy", {}).unwrap_python_model(),
               "reference_path": str(reference_path), "sampling": ev.sampling, "tie_margin": ev.gold_tie_margin}
        reports["reward"] = rm[2] or promote_reward(ctx, g, rm[0], rm[1])
        reports["policy"] = pol[2] or promote_policy(ctx, g, reports["reward"], pol[0], pol[1])
    for r in reports.values():
        r["dry_run"] = dry_run
    if dry_run or all(r["decision"] == "unchanged" for r in reports.values()):
        return _write({**reports, "run_id": None, "gates": asdict(g)}, report_path)
    with mlflow.start_run(run_name="promote", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tag("rlhf.stage", "promote")
        mlflow.log_params({f"gate.{k}": str(v) for k, v in asdict(g).items()})
        for kind, r in reports.items():
            mlflow.log_metrics({f"{kind}/{k}": float(v) for k, v in r.get("metrics", {}).items()
                                if isinstance(v, (int, float)) and math.isfinite(float(v))})
            mlflow.set_tag(f"promotion.{kind}", r["decision"])
        mlflow.log_dict({**reports, "gates": asdict(g)}, "promotion/report.json")
        mlflow.log_text(report_markdown(list(reports.values())), "promotion/report.md")
        for r in reports.values():
            if "challenger" in r:
                _record(r, run.info.run_id)
                if r["decision"] == "promoted":
                    set_champion(r["model"], r["challenger"])
    return _write({**reports, "run_id": run.info.run_id, "gates": asdict(g)}, report_path)


def _write(result: dict, path: str | None) -> dict:
    if path:
        import json

        from rlhf.data import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


@flow(name="promote")
def promote_flow(params_path: str = "params.yaml", dry_run: bool = False, force: bool = False) -> dict:
    """Gate the challengers and move ``champion`` where the gates pass (see ``promote``)."""
    return promote(params_path, dry_run=dry_run, force=force)


@flow(name="rollback")
def rollback_flow(model: str = POLICY_NAME) -> dict:
    """Point ``champion`` of ``model`` back at the previous champion."""
    connect()
    return rollback(model)


def summary(result: dict) -> str:
    """One line per model: decision, versions and reason."""
    out = []
    for kind in ("reward", "policy"):
        r = result.get(kind) or {}
        ch = f" v{r['challenger']}" if r.get("challenger") else ""
        champ = " -> champion" if r.get("decision") == "promoted" and not r.get("dry_run") else ""
        out.append(f"{r.get('model', kind)}{ch}: {r.get('decision')}{champ}{' (dry run)' if r.get('dry_run') else ''}"
                   f" - {r.get('reason')}")
    return "\n".join(out)
