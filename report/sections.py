"""From a run's data (report/data.py, report/mlflow_runs.py) to the page's sections (report/model.py).

One section per stage that dvc.yaml declares, in its order, built the same way for every stage: its curves
(plots/<stage>/*.json), its metrics file as a table, then whatever report/extras.py adds for that stage. Around
them: a summary, the stages with their MLflow runs, the promotion decision and any other metrics file.
"""
from __future__ import annotations

import json
from typing import Any

from report import extras
from report.data import RunFiles
from report.mlflow_runs import StageRun, Tracking
from report.model import (Block, Cards, Chart, Charts, Decision, Heading, Link, Page, Section, Table, Text,
                          TrackingLine, finite, fmt)

# PPO panels: (title, metric keys of plots/ppo/ppo.json). Names are the metric contract of rlhf/rollout.py and
# rlhf/ppo.py (TRL's names).
PPO_PANELS = (
    ("Reward-model score and RLHF reward", ("objective/scores", "objective/rlhf_reward", "objective/non_score_reward")),
    ("KL to the reference policy (nats per sequence)", ("objective/kl",)),
    ("KL coefficient", ("objective/kl_coef",)),
    ("Policy entropy (nats per sequence)", ("objective/entropy",)),
    ("Approximate KL of each update (policy/approxkl)", ("policy/approxkl_avg",)),
    ("Clip fraction", ("policy/clipfrac_avg", "val/clipfrac_avg")),
    ("Losses", ("loss/policy_avg", "loss/value_avg")),
)
# Curves drawn for any stage whose plot rows carry these keys: (title, keys, reference line: (its label, the key of
# the stage's metrics file holding its value) or None); "{stage}" in a title is the stage's name. A plot file with
# none of these keys gets one chart of its numeric columns.
CURVES = (
    ("{stage}: training loss (per token)", ("loss/train",), ("final validation loss", "val_loss")),
    ("reward model: training loss", ("loss/reward",), None),
    ("reward model: batch pairwise accuracy", ("reward/accuracy",), ("held-out accuracy", "val_accuracy")),
    *((title, keys, None) for title, keys in PPO_PANELS),
)
# Curves against a metric rather than the step, for any stage whose plot rows carry them: (title, x key, y keys).
# PPO's over-optimisation probe (plots/ppo/probe.json, rlhf/probe.py; Gao et al. 2022): the reward model PPO
# optimises (proxy) and the judge against the KL to the reference, points in iteration order.
XY_CURVES = (
    ("Over-optimisation: reward model (proxy) and judge vs KL to the reference, held-out prompts", "probe/kl",
     ("probe/proxy", "probe/judge")),
    ("Held-out diversity (distinct-2) and EOS rate vs KL to the reference", "probe/kl",
     ("probe/distinct2", "probe/eos_rate")),
    ("Held-out KL to the reference (nats per response) at each probe", "step", ("probe/kl",)),
)
MAX_SERIES = 6


def build_page(run: RunFiles, tracking: Tracking | None = None, generated: str = "",
               prov: dict[str, str] | None = None) -> Page:
    sections = [summary_section(run, tracking), stages_section(run, tracking),
                *(stage_section(run, stage) for stage in run.stages),
                promotion_section(run, tracking), other_metrics_section(run)]
    title = "RLHF pipeline run" + (f" {tracking.parent_run_id}" if tracking and tracking.parent_run_id else "")
    return Page(title, generated, str(run.root.resolve()), prov or {}, run.notes, sections)


def stage_section(run: RunFiles, stage: str) -> Section:
    metrics = run.metrics.get(stage)
    blocks = curves(stage, run.plots.get(stage, {}), metrics or {})
    blocks.append(metrics_table(metrics, extras.GLOSSARIES.get(stage)) if metrics
                  else Text(f"not found: metrics/{stage}.json", "muted"))
    return Section(f"stage-{stage}", stage, blocks + extras.for_stage(stage, run))


def curves(stage: str, plots: dict[str, list[dict]], metrics: dict) -> list[Block]:
    charts: list[Chart] = []
    empty: list[Block] = []
    for name, rows in plots.items():
        found = [chart(rows, keys, title.format(stage=stage), ref and (ref[0], metrics.get(ref[1])))
                 for title, keys, ref in CURVES]
        found += [chart(rows, keys, title.format(stage=stage), x=x) for title, x, keys in XY_CURVES]
        if not any(found):                        # a plot no curve above knows: its numeric columns
            keys = list(dict.fromkeys(k for r in rows for k in r if k != "step"))[:MAX_SERIES]
            found = [chart(rows, keys, f"{stage}: {name}")]
        charts += [c for c in found if c]
        if not any(found):
            empty.append(Text(f"no curve in plots/{stage}/{name}.json" + ("" if rows else " (no rows)"), "muted"))
    return ([Charts(charts)] if charts else []) + empty


def chart(rows: list[dict], keys, title: str, ref: tuple[str, Any] | None = None, x: str = "step") -> Chart | None:
    """``keys`` against ``x`` (a column of the rows), in row order; None when no row has a finite value of any."""
    series = []
    for key in keys:
        pts = [(float(r[x]), float(r[key])) for r in rows if finite(r.get(x)) and finite(r.get(key))]
        if pts:
            series.append((key, pts))
    if not series:
        return None
    return Chart(title, series, [(ref[0], float(ref[1]))] if ref and finite(ref[1]) else [], x=x)


def metrics_table(metrics: dict, glossary: dict[str, str] | None = None) -> Table:
    if glossary:
        return Table(("metric", "value", "meaning"), [[k, v, glossary.get(k, "")] for k, v in metrics.items()])
    return Table(("metric", "value"), [[k, v] for k, v in metrics.items()])


def summary_section(run: RunFiles, tracking: Tracking | None) -> Section:
    ev, rw = run.metrics.get("evaluate", {}), run.metrics.get("reward", {})
    pref = run.preferences_summary or {}
    sft, pol = ev.get("gold_score_sft"), ev.get("gold_score_policy")
    delta = f" (Δ {float(pol) - float(sft):+.3f})" if finite(sft) and finite(pol) else ""
    cards = [("evaluate", "gold score SFT → PPO", f"{fmt(sft)} → {fmt(pol)}{delta}"),
             ("evaluate", "win rate vs SFT", fmt(ev.get("win_rate_vs_sft"))),
             ("evaluate", "KL to reference", fmt(ev.get("kl_to_ref"))),
             ("evaluate", "reward model vs gold judge", fmt(ev.get("reward_model_accuracy"))),
             ("reward", "reward model held-out accuracy", fmt(rw.get("val_accuracy"))),
             ("preferences", "annotations accepted / read", f"{fmt(pref.get('accepted'))} / {fmt(pref.get('read'))}")]
    items = [(label, value) for stage, label, value in cards if stage in run.stages]
    items.append(("promotion", promotion_decision(promotion_record(run, tracking)[0])))
    return Section("summary", "Summary", [Cards(items)])


def stages_section(run: RunFiles, tracking: Tracking | None) -> Section:
    headers = ("stage", "metrics file", "plots")
    if tracking:
        headers += ("MLflow run", "run of", "matches metrics file", "seconds", "registered")
    rows = [[stage, f"metrics/{stage}.json" if stage in run.metrics else "missing",
             ", ".join(sorted(run.plots.get(stage, {}))) or "-",
             *(_run_cells(tracking.stages.get(stage)) if tracking else [])] for stage in run.stages]
    if tracking is None:
        return Section("stages", "Stages", [Text("MLflow not consulted (no tracking store found, or --no-mlflow).",
                                                 "muted"), Table(headers, rows)])
    parent = Link(tracking.parent_run_id, tracking.parent_url) if tracking.parent_run_id else None
    return Section("stages", "Stages", [TrackingLine(tracking.tracking_uri, parent, tracking.ui_hint),
                                        *(Text(n, "note") for n in tracking.notes), Table(headers, rows)])


def _run_cells(sr: StageRun | None) -> list[Any]:
    if sr is None:
        return ["-", "-", "-", None, "-"]
    match = {None: "-", True: "yes", False: "NO (files come from another run)"}[sr.matches_files]
    origin = sr.origin or ("this pipeline run" if sr.in_parent else "an earlier run")
    return [Link(sr.run_id, sr.url), origin, match, sr.seconds, ", ".join(sr.registered) or "-"]


def _decision_of(d: dict) -> str | None:
    for key in ("decision", "action", "outcome"):
        if isinstance(d.get(key), str):
            return d[key]
    if "promoted" in d:
        return "promoted" if d["promoted"] else "not promoted"
    return None


def _model_reports(promote: dict) -> dict[str, dict]:
    """The per-model parts of a promotion record (flows/promote.py: {"reward": {...}, "policy": {...}, ...})."""
    return {k: v for k, v in promote.items() if isinstance(v, dict) and _decision_of(v) is not None}


def promotion_decision(promote: dict | None) -> str:
    if promote is None:
        return "no promotion recorded"
    parts = _model_reports(promote)
    if parts:
        return "; ".join(f"{v.get('model', k)}: {_decision_of(v)}" for k, v in parts.items())
    return _decision_of(promote) or "recorded (see Promotion)"


def promotion_record(run: RunFiles, tracking: Tracking | None = None) -> tuple[dict | None, Decision | None]:
    """The promotion record (metrics/promote.json, else the MLflow 'promote' run) and its decision line."""
    if run.promote is not None:
        return run.promote, Decision(promotion_decision(run.promote), Link("metrics/promote.json"))
    if tracking is not None and tracking.promotion is not None:
        link = Link(tracking.promotion_run_id or "", tracking.promotion_url)
        return tracking.promotion, Decision(promotion_decision(tracking.promotion), link, "MLflow run ")
    return None, None


def promotion_section(run: RunFiles, tracking: Tracking | None = None) -> Section:
    promote, decision = promotion_record(run, tracking)
    if promote is None or decision is None:
        where = " or an MLflow 'promote' run" if tracking is not None else ""
        return Section("promotion", "Promotion", [Text(f"no promotion recorded (no metrics/promote.json{where})")])
    blocks: list[Block] = [decision]
    parts = _model_reports(promote)
    for key, r in parts.items():
        blocks += [Heading(f"{r.get('model', key)}: {_decision_of(r)}"), Text(str(r.get("reason", "")))]
        gates = [g for g in r.get("gates") or [] if isinstance(g, dict)]
        if gates:
            blocks.append(Table(("gate", "value", "rule", "status"),
                                [[g.get("name"), g.get("value"), f"{g.get('op', '')} {fmt(g.get('threshold'))}",
                                  g.get("status")] for g in gates]))
        rest = {k: v for k, v in r.items() if k not in ("gates", "metrics", "reason", "decision")}
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        blocks.append(Table(("field", "value"), _plain_rows({**rest, **metrics})))
    flat = {k: v for k, v in promote.items() if k not in parts}
    if flat:
        blocks.append(Table(("field", "value"), _plain_rows(flat)))
    return Section("promotion", "Promotion", blocks)


def _plain_rows(d: dict) -> list[list[Any]]:
    """Scalars as they are, anything nested as compact JSON text."""
    return [[k, v if isinstance(v, (int, float, str)) and not isinstance(v, bool) or v is None
             else json.dumps(v, default=str)[:2000]] for k, v in d.items()]


def other_metrics_section(run: RunFiles) -> Section:
    """Metrics files of no declared stage."""
    blocks: list[Block] = []
    for name, metrics in run.metrics.items():
        if name not in run.stages:
            blocks += [Heading(f"metrics/{name}.json"), metrics_table(metrics)]
    return Section("other-metrics", "Other metrics files", blocks or [Text("none")], nav="other metrics")
