"""Promotion: the ``challenger`` of each registered model takes alias ``champion`` only when its gates pass.

This module only composes: the measurements are the core's (rlhf/evaluation.py), the gate arithmetic too
(rlhf/gates.py), the registry reads and writes are tasks/promotion.py's. The reward model is decided first, then
the policy (scored by the reward model that decision leaves as champion). ``rollback`` points ``champion`` back at
the previous one.

``promote()`` is a plain function (the pipeline calls it at the end of a run, the CLI calls it); ``promote_flow`` and
``rollback_flow`` are the same as Prefect flows for deployments and schedules.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict

from prefect import flow

from rlhf.config import PromoteConfig, load_params
from tasks.promotion import judge_policy, judge_reward, log_decisions, pending, setting, unloadable
from tasks.lock import project_lock
from tasks.registry import POLICY_NAME, REWARD_NAME, RegistryError, connect, rollback
from tasks.tracking import setup_tracking


def promote(params_path: str = "params.yaml", gates: PromoteConfig | None = None, prompts_path: str | None = None,
            corpus_path: str | None = None, reference_path: str | None = None, dry_run: bool = False,
            force: bool = False, report_path: str | None = None) -> dict:
    """Gate and promote the reward model, then the policy. Returns {"reward": report, "policy": report, "run_id",
    "gates"} (a report: tasks/promotion.py). Paths default to params.yaml's ``evaluate`` section, gates to its
    ``promote`` section. The report run (``run_id``) is nested under the active run if any; there is none (None)
    for a dry run or when nothing was decided. ``dry_run`` measures and decides but changes nothing; ``force``
    re-evaluates a challenger already decided. ``report_path`` (e.g. metrics/promote.json) also gets the returned
    record as JSON."""
    cfg = load_params(params_path)
    g = gates or cfg.promote
    with contextlib.nullcontext() if dry_run else project_lock("rlhf promote"):
        return _promote(cfg, g, prompts_path, corpus_path, reference_path, dry_run, force, report_path)


def _promote(cfg, g: PromoteConfig, prompts_path, corpus_path, reference_path, dry_run: bool, force: bool,
             report_path: str | None) -> dict:
    connect()
    setup_tracking()
    rm, pol = pending(REWARD_NAME, force), pending(POLICY_NAME, force)
    reports = {"reward": rm.unchanged, "policy": pol.unchanged}
    if not (rm.unchanged and pol.unchanged):
        s = setting(cfg.evaluate, g, prompts_path, corpus_path, reference_path)
        reports["reward"] = rm.unchanged or _judged(REWARD_NAME, rm, lambda: judge_reward(s, g, rm))
        reports["policy"] = pol.unchanged or _judged(POLICY_NAME, pol, lambda: judge_policy(s, g, reports["reward"],
                                                                                             pol))
    for r in reports.values():
        r["dry_run"] = dry_run
    run_id = None
    if not (dry_run or all(r["decision"] == "unchanged" for r in reports.values())):
        run_id = log_decisions(reports, g)
    return _write({**reports, "run_id": run_id, "gates": asdict(g)}, report_path)


def _judged(name: str, pend, judge) -> dict:
    """``judge()``, or a refusal when one of its versions does not load as data (stored code, another format)."""
    try:
        return judge()
    except RegistryError as e:
        return unloadable(name, pend, e)


def _write(result: dict, path: str | None) -> dict:
    if path:
        from rlhf.tempdirs import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


@flow(name="promote")
def promote_flow(params_path: str = "params.yaml", dry_run: bool = False, force: bool = False) -> dict:
    """Gate the challengers and move ``champion`` where the gates pass (see ``promote``)."""
    return promote(params_path, dry_run=dry_run, force=force)


def rollback_champion(model: str = POLICY_NAME) -> dict:
    """Point ``champion`` of ``model`` back at the previous champion, under the project lock (the CLI and the flow)."""
    with project_lock("rlhf rollback"):
        connect()
        return rollback(model)


@flow(name="rollback")
def rollback_flow(model: str = POLICY_NAME) -> dict:
    """Point ``champion`` of ``model`` back at the previous champion."""
    return rollback_champion(model)


def summary(result: dict) -> str:
    """One line per model: decision, versions and reason."""
    out = []
    for kind in ("reward", "policy"):
        r = result.get(kind) or {}
        ch = f" v{r['challenger']}" if r.get("challenger") else ""
        champ = (f" -> champion (serve: {r['serve']})" if r.get("decision") == "promoted" and not r.get("dry_run")
                 else "")
        out.append(f"{r.get('model', kind)}{ch}: {r.get('decision')}{champ}{' (dry run)' if r.get('dry_run') else ''}"
                   f" - {r.get('reason')}")
    return "\n".join(out)
