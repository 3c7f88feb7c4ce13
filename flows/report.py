"""The run report: one self-contained HTML page (figures embedded as base64 PNG, inline CSS, no script, nothing
fetched) built from what a pipeline run leaves in the working tree: metrics/*.json, plots/<stage>/*.json,
artifacts/preferences/summary.json, artifacts/evaluate/samples.jsonl and, when present, metrics/promote.json.

``load_run_files`` reads those files (a missing one becomes a note on the page, never an error), ``render_html``
turns them and the optional MLflow lookup (``Tracking``, filled by ``flows.commands.report``) into the page.
Every string that comes from data (samples, prompts, reject reasons, file names, metric keys) is HTML-escaped:
sampled text is untrusted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from flows.report_data import STAGES, RunFiles, StageRun, Tracking, load_run_files  # noqa: F401 (re-exported)
from flows.report_html import Raw, _finite, _link, esc, figures, fmt, line_chart, metrics_table, table  # noqa: F401


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

# Meaning of the evaluate stage's metrics (rlhf/stages/evaluate.py).
EVALUATE_GLOSSARY = {
    "gold_score_sft": "mean gold-judge score of the SFT policy's responses",
    "gold_score_policy": "mean gold-judge score of the PPO policy's responses",
    "win_rate_vs_sft": "share of prompts where the PPO response beats the SFT one (gold judge; ties count 0.5)",
    "kl_to_ref": "mean KL(policy || SFT) per response, on the policy's own samples (nats)",
    "reward_model_accuracy": "reward model vs gold judge: pairwise accuracy, pairs closer than the tie margin skipped",
    "reward_model_pairs": "pairs counted in reward_model_accuracy",
    "reward_model_accuracy_all": "reward model vs gold judge: pairwise accuracy over every non-equal pair",
    "reward_model_pairs_all": "pairs counted in reward_model_accuracy_all",
    "rm_score_sft": "mean reward-model score of the SFT responses",
    "rm_score_policy": "mean reward-model score of the PPO responses",
    "eos_rate_sft": "share of SFT responses that ended with EOS (not cut at the length limit)",
    "eos_rate_policy": "share of PPO responses that ended with EOS",
    "distinct2_sft": "distinct word bigrams / all bigrams, SFT responses",
    "distinct2_policy": "distinct word bigrams / all bigrams, PPO responses",
    "n_prompts": "held-out prompts evaluated",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 18px 40px;color:#1d1d1f}
h1{font-size:24px;margin:22px 0 4px}h2{font-size:19px;margin:30px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid #d8d8d8;padding:3px 8px;vertical-align:top;text-align:left}th{background:#f4f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.txt{white-space:pre-wrap;word-break:break-word;max-width:330px;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d8d8d8;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:20px}.muted{color:#6e6e73}
.note{background:#fff8e1;border-left:3px solid #f0b400;padding:6px 10px}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs figure{margin:0}.figs figcaption{font-size:12px;color:#555}
.win{background:#e8f6ea}.loss{background:#fdecea}code{font-size:12.5px}nav a{margin-right:10px}
"""


# ------------------------------------------------------------------------------------------------------ sections
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


def _promotion_decision(promote: dict | None) -> str:
    if promote is None:
        return "no promotion recorded"
    parts = _model_reports(promote)
    if parts:
        return "; ".join(f"{v.get('model', k)}: {_decision_of(v)}" for k, v in parts.items())
    return _decision_of(promote) or "recorded (see Promotion)"


def section_summary(run: RunFiles, tracking: Tracking | None = None) -> str:
    ev, rw = run.metrics.get("evaluate", {}), run.metrics.get("reward", {})
    pref = run.preferences_summary or {}
    sft, pol = ev.get("gold_score_sft"), ev.get("gold_score_policy")
    delta = f" (Δ {float(pol) - float(sft):+.3f})" if _finite(sft) and _finite(pol) else ""
    cards = [("gold score SFT → PPO", f"{fmt(sft)} → {fmt(pol)}{delta}"),
             ("win rate vs SFT", fmt(ev.get("win_rate_vs_sft"))), ("KL to reference", fmt(ev.get("kl_to_ref"))),
             ("reward model vs gold judge", fmt(ev.get("reward_model_accuracy"))),
             ("reward model held-out accuracy", fmt(rw.get("val_accuracy"))),
             ("annotations accepted / read", f"{fmt(pref.get('accepted'))} / {fmt(pref.get('read'))}"),
             ("promotion", _promotion_decision(promotion_record(run, tracking)[0]))]
    body = "".join(f'<div class="card"><span class="muted">{esc(k)}</span><b>{esc(v)}</b></div>' for k, v in cards)
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div></section>'


def section_data(run: RunFiles) -> str:
    out = ['<section id="data"><h2>Data</h2>']
    prep = run.metrics.get("prepare")
    out.append("<h3>prepare: raw data</h3>" + (metrics_table(prep) if prep else _missing("metrics/prepare.json")))
    if run.prepare_rejects:
        out.append("<p>prepare rejects by reason:</p>" + table(("reason", "records"), run.prepare_rejects.items()))
    for stage, what in (("collect", "responses sampled for annotation"), ("annotate", "annotation campaign")):
        if stage in run.metrics:
            out.append(f"<h3>{stage}: {what}</h3>" + metrics_table(run.metrics[stage]))
    out.append("<h3>preferences: annotation ingest</h3>")
    s = run.preferences_summary
    if s is None:
        out.append(_missing(run.paths.get("preferences_summary", "summary.json")))
    else:
        rows = [(k, s.get(k)) for k in ("files", "read", "accepted", "rejected", "reject_share", "duplicates", "items",
                                        "pairs", "elo_responses", "annotators")]
        split = run.metrics.get("preferences", {})
        rows += [(k, split[k]) for k in ("items_train", "items_val") if k in split]
        agreement = s.get("agreement") or {}
        rows += [(f"agreement {k}", v) for k, v in agreement.items()]
        out.append(table(("count", "value"), rows))
        reasons = s.get("rejected_by_reason") or {}
        out.append(table(("rejected because", "records"), reasons.items()) if reasons
                   else "<p>no annotation record was rejected.</p>")
        per_file = [f for f in s.get("per_file") or [] if isinstance(f, dict)]
        if per_file:
            out.append(table(("file", "format", "read", "accepted", "rejected"),
                             [(f.get("path"), str(f.get("format")), f.get("read"), f.get("accepted"), f.get("rejected"))
                              for f in per_file]))
    return "".join(out) + "</section>"


def _missing(what: str) -> str:
    return f'<p class="muted">not found: {esc(what)}</p>'


def section_training(run: RunFiles) -> str:
    out = ['<section id="training"><h2>Pretraining and SFT</h2>']
    for stage in ("pretrain", "sft"):
        m = run.metrics.get(stage, {})
        rows = run.plots.get(stage, {}).get("loss", [])
        chart = line_chart(rows, ("loss/train",), f"{stage}: training loss (per token)",
                           {"final validation loss": m.get("val_loss")})
        out.append(f"<h3>{stage}</h3>" + figures([chart], f"no loss curve (plots/{stage}/loss.json)"))
        if m:
            out.append(metrics_table(m))
    return "".join(out) + "</section>"


def section_reward(run: RunFiles) -> str:
    m, ev = run.metrics.get("reward", {}), run.metrics.get("evaluate", {})
    rows = run.plots.get("reward", {}).get("loss", [])
    charts = [line_chart(rows, ("loss/reward",), "reward model: training loss"),
              line_chart(rows, ("reward/accuracy",), "reward model: batch pairwise accuracy",
                         {"held-out accuracy": m.get("val_accuracy")})]
    acc = [("train pairwise accuracy (annotator rankings)", m.get("train_accuracy")),
           ("held-out pairwise accuracy (annotator rankings)", m.get("val_accuracy")),
           ("accuracy vs gold judge (evaluate, tie margin)", ev.get("reward_model_accuracy")),
           ("pairs judged (evaluate, tie margin)", ev.get("reward_model_pairs")),
           ("accuracy vs gold judge (evaluate, all pairs)", ev.get("reward_model_accuracy_all")),
           ("pairs judged (evaluate, all pairs)", ev.get("reward_model_pairs_all"))]
    return ('<section id="reward"><h2>Reward model</h2>' + table(("accuracy", "value"), acc)
            + figures(charts, "no reward-model curve (plots/reward/loss.json)")
            + (metrics_table(m) if m else _missing("metrics/reward.json")) + "</section>")


def section_ppo(run: RunFiles) -> str:
    rows = run.plots.get("ppo", {}).get("ppo", [])
    charts = [line_chart(rows, keys, title) for title, keys in PPO_PANELS]
    m = run.metrics.get("ppo")
    return ('<section id="ppo"><h2>PPO</h2>' + figures(charts, "no PPO curves (plots/ppo/ppo.json)")
            + (metrics_table(m) if m else _missing("metrics/ppo.json")) + "</section>")


def _score_cell(v: Any) -> str:
    return f'<td class="num">{esc(fmt(v))}</td>'


def section_samples(run: RunFiles) -> str:
    head = ('<section id="samples"><h2>Samples: SFT vs PPO on the same prompts</h2>')
    if not run.samples:
        return head + _missing(run.paths.get("samples", "samples.jsonl")) + "</section>"
    rows = []
    for i, s in enumerate(run.samples, 1):
        g_sft, g_pol = s.get("gold_sft"), s.get("gold_policy")
        cls = ""
        if _finite(g_sft) and _finite(g_pol) and g_pol != g_sft:
            cls = ' class="win"' if g_pol > g_sft else ' class="loss"'
        rows.append(f"<tr{cls}><td class=\"num\">{i}</td><td class=\"txt\">{esc(s.get('prompt', ''))}</td>"
                    f"<td class=\"txt\">{esc(s.get('sft', ''))}</td>{_score_cell(g_sft)}{_score_cell(s.get('rm_sft'))}"
                    f"<td class=\"txt\">{esc(s.get('policy', ''))}</td>{_score_cell(g_pol)}"
                    f"{_score_cell(s.get('rm_policy'))}</tr>")
    head_row = "".join(f"<th>{h}</th>" for h in ("#", "prompt", "SFT response", "gold", "RM", "PPO response", "gold",
                                                  "RM"))
    return (head + f'<p class="muted">the first {len(run.samples)} of {run.samples_total} held-out prompts '
            f"({esc(run.paths.get('samples', ''))}); gold = gold-judge score, RM = reward-model score; green rows: "
            f'the PPO response scores higher with the gold judge, red: lower.</p><table class="samples"><thead><tr>'
            f'{head_row}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def section_evaluate(run: RunFiles) -> str:
    m = run.metrics.get("evaluate")
    body = metrics_table(m, EVALUATE_GLOSSARY) if m else _missing("metrics/evaluate.json")
    return f'<section id="evaluate"><h2>Evaluation (metrics/evaluate.json)</h2>{body}</section>'


def _plain_rows(d: dict) -> list[tuple[str, Any]]:
    """Scalars as they are, anything nested as compact JSON text."""
    return [(k, v if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None
             else v if isinstance(v, str) else json.dumps(v, default=str)[:2000]) for k, v in d.items()]


def promotion_record(run: RunFiles, tracking: Tracking | None = None) -> tuple[dict | None, str]:
    """(the promotion record, where it comes from as HTML): metrics/promote.json, else the MLflow 'promote' run."""
    if run.promote is not None:
        return run.promote, "<code>metrics/promote.json</code>"
    if tracking is not None and tracking.promotion is not None:
        return tracking.promotion, "MLflow run " + _link(tracking.promotion_url, tracking.promotion_run_id or "")
    return None, ""


def section_promotion(run: RunFiles, tracking: Tracking | None = None) -> str:
    head = '<section id="promotion"><h2>Promotion</h2>'
    promote, source = promotion_record(run, tracking)
    if promote is None:
        where = " or an MLflow 'promote' run" if tracking is not None else ""
        return head + (f'<p>no promotion recorded <span class="muted">(no metrics/promote.json{where})</span></p>'
                       "</section>")
    out = [head, f"<p>decision: <b>{esc(_promotion_decision(promote))}</b> (from {source})</p>"]
    parts = _model_reports(promote)
    for key, r in parts.items():
        out.append(f"<h3>{esc(r.get('model', key))}: {esc(_decision_of(r))}</h3><p>{esc(r.get('reason', ''))}</p>")
        gates = [g for g in r.get("gates") or [] if isinstance(g, dict)]
        if gates:
            out.append(table(("gate", "value", "rule", "status"),
                             [(g.get("name"), g.get("value"), f"{g.get('op', '')} {fmt(g.get('threshold'))}",
                               g.get("status")) for g in gates]))
        rest = {k: v for k, v in r.items() if k not in ("gates", "metrics", "reason", "decision")}
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        out.append(table(("field", "value"), _plain_rows({**rest, **metrics})))
    flat = {k: v for k, v in promote.items() if k not in parts}
    if flat:
        out.append(table(("field", "value"), _plain_rows(flat)))
    return "".join(out) + "</section>"


def section_stages(run: RunFiles, tracking: Tracking | None) -> str:
    headers = ["stage", "metrics file", "plots"]
    if tracking:
        headers += ["MLflow run", "run of", "matches metrics file", "seconds", "registered"]
    rows = []
    for stage in STAGES:
        row: list[Any] = [stage, f"metrics/{stage}.json" if stage in run.metrics else "missing",
                          ", ".join(sorted(run.plots.get(stage, {}))) or "-"]
        if tracking:
            sr = tracking.stages.get(stage)
            if sr is None:
                row += ["-", "-", "-", None, "-"]
            else:
                match = {None: "-", True: "yes", False: "NO (files come from another run)"}[sr.matches_files]
                origin = sr.origin or ("this pipeline run" if sr.in_parent else "an earlier run")
                row += [Raw(_link(sr.url, sr.run_id)), origin, match, sr.seconds, ", ".join(sr.registered) or "-"]
        rows.append(row)
    out = ['<section id="stages"><h2>Stages</h2>']
    if tracking:
        parent = (_link(tracking.parent_url, tracking.parent_run_id) if tracking.parent_run_id
                  else "none (stages were run one by one)")
        out.append(f"<p>MLflow <code>{esc(tracking.tracking_uri)}</code>, pipeline run {parent}. "
                   f"{esc(tracking.ui_hint)}</p>")
        out += [f'<p class="note">{esc(n)}</p>' for n in tracking.notes]
    else:
        out.append('<p class="muted">MLflow not consulted (no tracking store found, or --no-mlflow).</p>')
    return "".join(out) + table(headers, rows) + "</section>"


SHOWN_IN_SECTIONS = ("prepare", "pretrain", "sft", "collect", "annotate", "reward", "ppo", "evaluate")


def section_other_metrics(run: RunFiles) -> str:
    """The metrics files no section above shows in full (preferences' flat metrics, any extra stage's file)."""
    parts = [f"<h3>metrics/{esc(stage)}.json</h3>{metrics_table(m)}" for stage, m in run.metrics.items()
             if stage not in SHOWN_IN_SECTIONS]
    return '<section id="metrics"><h2>Other metrics files</h2>' + ("".join(parts) or "<p>none</p>") + "</section>"


# ---------------------------------------------------------------------------------------------------------- page
def provenance(root: Path) -> dict[str, str]:
    """Git commit and the hashes of params.yaml and dvc.lock: with the seed, what reproduces this run."""
    import hashlib
    import subprocess
    out = {}
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        out["git commit"] = res.stdout.strip() or "-"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["git working tree"] = "modified" if dirty else "clean"
    except (OSError, subprocess.SubprocessError):
        out["git commit"] = "-"
    for name in ("params.yaml", "dvc.lock"):
        p = root / name
        out[f"{name} sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "missing"
    return out


def render_html(run: RunFiles, tracking: Tracking | None = None, generated: str = "",
                prov: dict[str, str] | None = None) -> str:
    """The whole page as one string."""
    sections = [section_summary(run, tracking), section_stages(run, tracking), section_data(run),
                section_training(run), section_reward(run), section_ppo(run), section_samples(run),
                section_evaluate(run), section_promotion(run, tracking), section_other_metrics(run)]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "summary"), ("stages", "stages"), ("data", "data"), ("training", "pretrain/SFT"),
        ("reward", "reward model"), ("ppo", "PPO"), ("samples", "samples"), ("evaluate", "evaluation"),
        ("promotion", "promotion"), ("metrics", "other metrics")))
    title = "RLHF pipeline run" + (f" {tracking.parent_run_id}" if tracking and tracking.parent_run_id else "")
    prov_rows = table(("provenance", ""), prov.items()) if prov else ""
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in run.notes)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
            f"<p class=\"muted\">generated {esc(generated)} from <code>{esc(run.root.resolve())}</code></p>"
            f"{prov_rows}<nav>{nav}</nav>{notes}{''.join(sections)}</body></html>\n")


def write_report(run: RunFiles, out: str | Path, tracking: Tracking | None = None, generated: str = "") -> Path:
    """Write the page into ``out`` (a folder, or a path ending in .html); returns the file written."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        run_id = tracking.parent_run_id if tracking and tracking.parent_run_id else None
        out = out / f"rlhf-report-{run_id or 'local-' + _content_key(run)}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(run, tracking, generated, provenance(run.root))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _content_key(run: RunFiles) -> str:
    """A short key of the run's metrics: the same outputs give the same file name."""
    import hashlib
    blob = json.dumps(run.metrics, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
