"""What a stage's section shows beyond its curves and metrics table, keyed on that stage's name: used only when
dvc.yaml declares the stage, and a stage with no entry here gets the generic section alone."""
from __future__ import annotations

from typing import Callable

from report.data import RunFiles
from report.model import Block, Heading, SampleRow, Samples, Table, Text, finite, fmt

EXTRAS: dict[str, Callable[[RunFiles], list[Block]]] = {}

# Meaning of a stage's metrics, a third column of its metrics table (rlhf/stages/evaluate.py).
GLOSSARIES = {"evaluate": {
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
}}


def extra(stage: str):
    def register(fn: Callable[[RunFiles], list[Block]]):
        EXTRAS[stage] = fn
        return fn
    return register


def for_stage(stage: str, run: RunFiles) -> list[Block]:
    fn = EXTRAS.get(stage)
    return fn(run) if fn else []


@extra("prepare")
def rejects(run: RunFiles) -> list[Block]:
    if not run.prepare_rejects:
        return []
    return [Text("rejects by reason:"), Table(("reason", "records"), [[k, n] for k, n in run.prepare_rejects.items()])]


@extra("preferences")
def annotation_ingest(run: RunFiles) -> list[Block]:
    s = run.preferences_summary
    if s is None:
        return [Text(f"not found: {run.paths.get('preferences_summary', 'summary.json')}", "muted")]
    rows = [[k, s.get(k)] for k in ("files", "read", "accepted", "rejected", "reject_share", "duplicates", "items",
                                    "pairs", "elo_responses", "annotators")]
    rows += [[f"agreement {k}", v] for k, v in (s.get("agreement") or {}).items()]
    out: list[Block] = [Heading("annotation ingest (summary.json)"), Table(("count", "value"), rows)]
    reasons = s.get("rejected_by_reason") or {}
    out.append(Table(("rejected because", "records"), [[k, n] for k, n in reasons.items()]) if reasons
               else Text("no annotation record was rejected."))
    per_file = [f for f in s.get("per_file") or [] if isinstance(f, dict)]
    if per_file:
        out.append(Table(("file", "format", "read", "accepted", "rejected"),
                         [[f.get("path"), str(f.get("format")), f.get("read"), f.get("accepted"), f.get("rejected")]
                          for f in per_file]))
    return out


@extra("reward")
def reward_accuracy(run: RunFiles) -> list[Block]:
    m, ev = run.metrics.get("reward", {}), run.metrics.get("evaluate", {})
    rows = [["train pairwise accuracy (annotator rankings)", m.get("train_accuracy")],
            ["held-out pairwise accuracy (annotator rankings)", m.get("val_accuracy")],
            ["accuracy vs gold judge (evaluate, tie margin)", ev.get("reward_model_accuracy")],
            ["pairs judged (evaluate, tie margin)", ev.get("reward_model_pairs")],
            ["accuracy vs gold judge (evaluate, all pairs)", ev.get("reward_model_accuracy_all")],
            ["pairs judged (evaluate, all pairs)", ev.get("reward_model_pairs_all")]]
    return [Heading("reward-model accuracy"), Table(("accuracy", "value"), rows)]


PROBE_COLUMNS = ("step", "probe/kl", "probe/proxy", "probe/judge", "probe/distinct2", "probe/eos_rate")


@extra("ppo")
def overoptimisation(run: RunFiles) -> list[Block]:
    """The probe's rows (plots/ppo/probe.json) as a table, and where the judge peaked against the proxy."""
    rows = [r for r in run.plots.get("ppo", {}).get("probe", []) if finite(r.get("probe/judge"))]
    if not rows:
        return []
    return [Heading("Over-optimisation probe (held-out prompts; proxy = the reward model PPO optimises)"),
            Text(judge_peak(rows)),
            Table(("iteration", "KL to reference", "proxy", "judge", "distinct-2", "EOS rate"),
                  [[r.get(k) for k in PROBE_COLUMNS] for r in rows])]


def judge_peak(rows: list[dict]) -> str:
    """One sentence: where the judge peaked, and what the proxy and the judge did after it (Gao et al. 2022)."""
    peak = max(range(len(rows)), key=lambda i: rows[i]["probe/judge"])
    p, last = rows[peak], rows[-1]
    head = (f"The judge peaked at iteration {fmt(p.get('step'))} (KL {fmt(p.get('probe/kl'))}, judge "
            f"{fmt(p['probe/judge'])}, proxy {fmt(p.get('probe/proxy'))})")
    if peak == len(rows) - 1:
        return head + ", the last probe: no sign of over-optimisation yet."
    before, after = p.get("probe/proxy"), last.get("probe/proxy")
    moved = "rose" if finite(before) and finite(after) and after > before else "went"
    return (head + f"; by the last probe (iteration {fmt(last.get('step'))}, KL {fmt(last.get('probe/kl'))}) the "
            f"proxy {moved} to {fmt(after)} while the judge fell to {fmt(last['probe/judge'])}.")


@extra("evaluate")
def samples(run: RunFiles) -> list[Block]:
    head = Heading("Samples: SFT vs PPO on the same prompts")
    if not run.samples:
        return [head, Text(f"not found: {run.paths.get('samples', 'samples.jsonl')}", "muted")]
    rows = []
    for s in run.samples:
        g_sft, g_pol = s.get("gold_sft"), s.get("gold_policy")
        outcome = ""
        if finite(g_sft) and finite(g_pol) and g_pol != g_sft:
            outcome = "win" if g_pol > g_sft else "loss"
        rows.append(SampleRow(s.get("prompt", ""), s.get("sft", ""), g_sft, s.get("rm_sft"), s.get("policy", ""),
                              g_pol, s.get("rm_policy"), outcome))
    return [head, Samples(rows, run.samples_total, run.paths.get("samples", ""))]
