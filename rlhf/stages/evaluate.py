"""evaluate: SFT policy vs PPO policy on held-out prompts, scored by the judge that ``evaluate.judge`` names
(rlhf/judges.py: the demo's gold judge, the reward model, another reward model, or a Python callable), plus the
reward model's accuracy: against the gold judge on SFT samples (demo), and on held-out human preferences
(``evaluate.heldout_preferences``: the preferences stage's rankings_val.jsonl). The numbers come from
rlhf/evaluation.py, the same functions promotion uses."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel
from rlhf.chat import check_prompts, render_prompt
from rlhf.config import EvaluateConfig
from rlhf.data import load_jsonl, write_jsonl
from rlhf.evaluation import (Loaded, PolicyComparison, compare_policies, distinct_n, preference_accuracy,
                             reward_model_accuracy, win_rate)
from rlhf.judges import check_spec, load_judge
from rlhf.limits import check_fits, check_sampling
from rlhf.modeling import load_causal_lm, load_tokenizer
from rlhf.reward_scoring import load_scorer
from rlhf.stages.common import StageResult, seed_everything


def comparison_metrics(c: PolicyComparison, gold: bool) -> dict[str, float]:
    """evaluate's metric names for a policy (challenger) vs SFT (baseline) comparison; the demo's ``gold_score_*``
    too when the judge is the gold judge."""
    n = max(len(c.prompts), 1)
    m = {"judge_score_sft": sum(c.gold_baseline) / n, "judge_score_policy": sum(c.gold_challenger) / n,
         "win_rate_vs_sft": win_rate(c.gold_challenger, c.gold_baseline), "kl_to_ref": float(c.kl_challenger.mean()),
         "rm_score_sft": sum(c.rm_baseline) / n, "rm_score_policy": sum(c.rm_challenger) / n,
         "eos_rate_sft": sum(c.baseline.ended) / n, "eos_rate_policy": sum(c.challenger.ended) / n,
         "distinct2_sft": distinct_n(c.baseline.texts), "distinct2_policy": distinct_n(c.challenger.texts),
         "n_prompts": len(c.prompts)}
    m["judge_gain"] = m["judge_score_policy"] - m["judge_score_sft"]
    if gold:
        m["gold_score_sft"], m["gold_score_policy"] = m["judge_score_sft"], m["judge_score_policy"]
    return m


def sample_rows(c: PolicyComparison, tok, gold: bool) -> list[dict]:
    """One row per held-out prompt: the prompt as given (text or messages) and as the policy saw it."""
    rows = []
    for i, p in enumerate(c.prompts):
        row = {"prompt": p, "rendered_prompt": render_prompt(tok, p), "sft": c.baseline.texts[i],
               "policy": c.challenger.texts[i], "judge_sft": c.gold_baseline[i], "judge_policy": c.gold_challenger[i],
               "rm_sft": c.rm_baseline[i], "rm_policy": c.rm_challenger[i]}
        if gold:
            row["gold_sft"], row["gold_policy"] = row["judge_sft"], row["judge_policy"]
        rows.append(row)
    return rows


def check(cfg: EvaluateConfig) -> None:
    """Everything that can be checked before a model loads: the judge spec and every length."""
    check_spec(cfg.judge)
    for path in (cfg.sft_path, cfg.policy_path):
        check_sampling(path, cfg.sampling, "evaluate")
    check_fits(cfg.reward_path, cfg.score_max_length, "evaluate.score_max_length")


def run(cfg: EvaluateConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    check(cfg)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)][: cfg.max_prompts]
    tok = load_tokenizer(cfg.sft_path)
    check_prompts(tok, prompts, cfg.prompts)
    device = accel.resolve_device(cfg.compute.device, key="evaluate.compute.device")
    sft, policy = (Loaded(accel.prepare(load_causal_lm(p, tok, dtype=cfg.compute.dtype).eval(), device, cfg.compute, trainable=False), tok)
                   for p in (cfg.sft_path, cfg.policy_path))
    reward = load_scorer(cfg.reward_path, device=device, compute=cfg.compute)
    judge = load_judge(cfg.judge, cfg.corpus, cfg.reward_path,
                       lambda p: reward if p == cfg.reward_path else load_scorer(p, device=device, compute=cfg.compute),
                       cfg.score_max_length)
    gold = judge.name == "gold"
    done = [0]

    def progress(n: int, total: int) -> None:       # sampling passes: policy, SFT (and K per prompt for the gold RM)
        if on_log and n == total:
            done[0] += 1
            on_log(done[0], {"progress/sampling_passes": done[0]})
    c = compare_policies(policy, sft, sft, prompts, cfg.sampling, cfg.seed, judge=judge, scorer=reward,
                         on_progress=progress, score_max_length=cfg.score_max_length)
    metrics = comparison_metrics(c, gold)
    if gold:
        acc = reward_model_accuracy({"rm": reward}, sft, judge, prompts, cfg.rm_pairs_k, cfg.sampling, cfg.seed + 1,
                                    cfg.gold_tie_margin, on_progress=progress,
                                    score_max_length=cfg.score_max_length)["rm"]
        metrics.update({"reward_model_accuracy": acc["accuracy"], "reward_model_pairs": acc["pairs"],
                        "reward_model_accuracy_all": acc["accuracy_all"], "reward_model_pairs_all": acc["pairs_all"]})
    if cfg.heldout_preferences:
        held = preference_accuracy(reward, load_jsonl(cfg.heldout_preferences), cfg.score_max_length)
        metrics.update({"reward_model_heldout_accuracy": held["accuracy"], "reward_model_heldout_pairs": held["pairs"]})
        if not gold:
            metrics["reward_model_accuracy"] = held["accuracy"]
    write_jsonl(Path(cfg.out_dir) / "samples.jsonl", sample_rows(c, tok, gold))
    return StageResult(metrics, outputs={"samples": str(Path(cfg.out_dir) / "samples.jsonl")})
