"""The run report: one self-contained HTML page (figures embedded as base64 PNG, inline CSS, no script, nothing
fetched) built from what a pipeline run leaves in the working tree: metrics/*.json, plots/<stage>/*.json,
artifacts/preferences/summary.json, artifacts/evaluate/samples.jsonl and, when present, metrics/promote.json.

``load_run_files`` reads those files (a missing one becomes a note on the page, never an error), ``render_html``
turns them and the optional MLflow lookup (``Tracking``, filled by ``flows.commands.report``) into the page.
Every string that comes from data (samples, prompts, reject reasons, file names, metric keys) is HTML-escaped:
sampled text is untrusted.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

STAGES = ("prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate")

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

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
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


# ---------------------------------------------------------------------------------------------------------- data
@dataclass
class RunFiles:
    """What one pipeline run left in the working tree (every part optional)."""
    root: Path
    metrics: dict[str, dict] = field(default_factory=dict)                # stage -> metrics/<stage>.json
    plots: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # stage -> plot name -> rows
    preferences_summary: dict | None = None
    prepare_rejects: dict[str, int] = field(default_factory=dict)          # reason -> count
    samples: list[dict] = field(default_factory=list)
    samples_total: int = 0
    promote: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)                   # role -> path shown on the page
    notes: list[str] = field(default_factory=list)                        # files missing or unreadable


@dataclass
class StageRun:
    """One stage's MLflow run as the report shows it."""
    run_id: str
    url: str | None = None
    in_parent: bool = True          # False: the stage was skipped in this pipeline run; this is the run it came from
    matches_files: bool | None = None   # its final/* metrics equal metrics/<stage>.json (None: nothing to compare)
    seconds: float | None = None
    registered: list[str] = field(default_factory=list)   # "rlhf-policy v3 (challenger)"
    origin: str = ""                # overrides the "run of" text (e.g. a run outside the pipeline run)


@dataclass
class Tracking:
    """The MLflow side of a report (see flows/commands/report.py)."""
    tracking_uri: str
    parent_run_id: str | None = None
    parent_url: str | None = None
    experiment_id: str | None = None
    stages: dict[str, StageRun] = field(default_factory=dict)
    ui_hint: str = ""
    notes: list[str] = field(default_factory=list)
    promotion: dict | None = None               # promotion/report.json of the run's 'promote' MLflow run
    promotion_run_id: str | None = None
    promotion_url: str | None = None


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e})")
        return None


def _config_paths(root: Path, notes: list[str]) -> dict[str, str]:
    """Where params.yaml puts the preferences and evaluate outputs (the defaults when it cannot be read)."""
    import yaml

    from rlhf.config import ConfigError, PipelineConfig, from_dict
    cfg = PipelineConfig()
    path = root / "params.yaml"
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            raw.pop("promote", None)           # flows/promote.py's section, not a stage
            cfg = from_dict(PipelineConfig, raw)
        except (ConfigError, yaml.YAMLError, AttributeError) as e:
            notes.append(f"params.yaml not used ({e}); default paths assumed")
    return {"preferences": cfg.preferences.out_dir, "evaluate": cfg.evaluate.out_dir, "prepare": cfg.prepare.out_dir}


def load_run_files(root: str | Path = ".", max_samples: int = 20) -> RunFiles:
    """Read the run's files under ``root``; missing ones become notes, nothing raises for a partial run."""
    root = Path(root)
    run = RunFiles(root=root)
    dirs = _config_paths(root, run.notes)
    others = sorted(p.stem for p in (root / "metrics").glob("*.json") if p.stem not in (*STAGES, "promote"))
    for stage in (*STAGES, *others):
        data = _read_json(root / "metrics" / f"{stage}.json", run.notes)
        if isinstance(data, dict):
            run.metrics[stage] = data
    for path in sorted((root / "plots").glob("*/*.json")):
        rows = _read_json(path, run.notes)
        if isinstance(rows, list):
            run.plots.setdefault(path.parent.name, {})[path.stem] = [r for r in rows if isinstance(r, dict)]
    summary_path = root / dirs["preferences"] / "summary.json"
    run.paths["preferences_summary"] = str(Path(dirs["preferences"]) / "summary.json")
    summary = _read_json(summary_path, run.notes)
    run.preferences_summary = summary if isinstance(summary, dict) else None
    run.prepare_rejects = _tally_reasons(root / dirs["prepare"] / "rejects.jsonl")
    samples_path = Path(dirs["evaluate"]) / "samples.jsonl"
    run.paths["samples"] = str(samples_path)
    run.samples, run.samples_total = _read_samples(root / samples_path, max_samples, run.notes)
    promote = _read_json(root / "metrics" / "promote.json", run.notes)
    run.promote = promote if isinstance(promote, dict) else None
    return run


def _tally_reasons(path: Path, limit: int = 1_000_000) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            try:
                reason = str(json.loads(line).get("reason", "?"))
            except (ValueError, AttributeError):
                reason = "unreadable reject line"
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _read_samples(path: Path, limit: int, notes: list[str]) -> tuple[list[dict], int]:
    if not path.exists():
        return [], 0
    rows, total = [], 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            total += 1
            if len(rows) < limit:
                try:
                    obj = json.loads(line)
                except ValueError:
                    notes.append(f"{path}: line {total} is not JSON")
                    continue
                if isinstance(obj, dict):
                    rows.append(obj)
    return rows, total


# ----------------------------------------------------------------------------------------------------- formatting
def esc(value: Any) -> str:
    """Text from data, safe in HTML element content and attribute values; control characters made visible."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return html.escape(text, quote=True)


def fmt(value: Any) -> str:
    """A number as the report prints it (integers whole, others 4 significant digits); None/NaN as a dash."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 1e6 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(value)


def _link(url: str | None, text: str) -> str:
    if url and url.startswith(("http://", "https://")):
        return f'<a href="{esc(url)}">{esc(text)}</a>'
    return f"<code>{esc(text)}</code>"


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """An HTML table; numbers right-aligned and formatted, everything else escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, Raw):
                cells.append(f"<td>{v.html}</td>")
            elif isinstance(v, (int, float)) or v is None:
                cells.append(f'<td class="num">{fmt(v)}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


@dataclass
class Raw:
    """Already-safe HTML for a table cell (built from escaped parts only)."""
    html: str


def metrics_table(metrics: dict, glossary: dict[str, str] | None = None) -> str:
    gl = glossary or {}
    return table(("metric", "value", "meaning") if gl else ("metric", "value"),
                 ((k, v, gl.get(k, "")) if gl else (k, v) for k, v in metrics.items()))


# ------------------------------------------------------------------------------------------------------- figures
def line_chart(rows: list[dict], keys: Iterable[str], title: str, hlines: dict[str, float] | None = None) -> str | None:
    """A PNG line chart of ``keys`` against ``step`` as an <img> with a data: URI; None when there is nothing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = []
    for key in keys:
        pts = [(r.get("step"), r.get(key)) for r in rows]
        pts = [(float(s), float(v)) for s, v in pts if _finite(s) and _finite(v)]
        if pts:
            series.append((key, pts))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 2.9), dpi=90)
    for key, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, label=key)
    for label, y in (hlines or {}).items():
        if _finite(y):
            ax.axhline(float(y), ls="--", lw=1, color="grey", label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(series) + len(hlines or {}) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def figures(items: list[str | None], missing: str) -> str:
    imgs = [i for i in items if i]
    return f'<div class="figs">{"".join(imgs)}</div>' if imgs else f'<p class="muted">{esc(missing)}</p>'


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
