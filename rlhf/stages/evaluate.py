"""evaluate: SFT policy vs PPO policy on held-out prompts, judged by the gold judge (the noise-free preference
of the demo's annotators), plus the reward model's held-out pairwise accuracy against the gold judge. The numbers
come from rlhf/evaluation.py, the same functions promotion uses."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel
from rlhf.config import EvaluateConfig
from rlhf.data import load_jsonl, write_jsonl
from rlhf.demo.judge import GoldJudge
from rlhf.evaluation import Loaded, PolicyComparison, compare_policies, distinct_n, reward_model_accuracy, win_rate
from rlhf.modeling import RewardModel, load_causal_lm, load_tokenizer
from rlhf.stages.common import StageResult, seed_everything


def comparison_metrics(c: PolicyComparison) -> dict[str, float]:
    """evaluate's metric names for a policy (challenger) vs SFT (baseline) comparison."""
    n = max(len(c.prompts), 1)
    return {"gold_score_sft": sum(c.gold_baseline) / n, "gold_score_policy": sum(c.gold_challenger) / n,
            "win_rate_vs_sft": win_rate(c.gold_challenger, c.gold_baseline), "kl_to_ref": float(c.kl_challenger.mean()),
            "rm_score_sft": sum(c.rm_baseline) / n, "rm_score_policy": sum(c.rm_challenger) / n,
            "eos_rate_sft": sum(c.baseline.ended) / n, "eos_rate_policy": sum(c.challenger.ended) / n,
            "distinct2_sft": distinct_n(c.baseline.texts), "distinct2_policy": distinct_n(c.challenger.texts),
            "n_prompts": len(c.prompts)}


def sample_rows(c: PolicyComparison) -> list[dict]:
    return [{"prompt": p, "sft": a, "policy": b, "gold_sft": ga, "gold_policy": gb, "rm_sft": ra, "rm_policy": rb}
            for p, a, b, ga, gb, ra, rb in zip(c.prompts, c.baseline.texts, c.challenger.texts, c.gold_baseline,
                                               c.gold_challenger, c.rm_baseline, c.rm_challenger)]


def run(cfg: EvaluateConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)][: cfg.max_prompts]
    judge = GoldJudge.from_corpus(cfg.corpus)
    tok = load_tokenizer(cfg.sft_path)
    device = accel.resolve_device(cfg.compute.device, key="evaluate.compute.device")
    sft, policy = (Loaded(accel.prepare(load_causal_lm(p, tok).eval(), device, cfg.compute, trainable=False), tok)
                   for p in (cfg.sft_path, cfg.policy_path))
    reward = RewardModel.from_pretrained(cfg.reward_path).eval()
    accel.prepare(reward, device, cfg.compute, trainable=False, hf=reward.trunk)
    done = [0]

    def progress(n: int, total: int) -> None:       # three sampling passes: policy, SFT, K per prompt for the RM
        if on_log and n == total:
            done[0] += 1
            on_log(done[0], {"progress/sampling_passes": done[0]})
    c = compare_policies(policy, sft, sft, prompts, cfg.sampling, cfg.seed, judge=judge, scorer=Loaded(reward, tok),
                         on_progress=progress, score_max_length=cfg.score_max_length)
    acc = reward_model_accuracy({"rm": Loaded(reward, tok)}, sft, judge, prompts, cfg.rm_pairs_k, cfg.sampling,
                                cfg.seed + 1, cfg.gold_tie_margin, on_progress=progress,
                                score_max_length=cfg.score_max_length)["rm"]
    metrics = {**comparison_metrics(c), "reward_model_accuracy": acc["accuracy"], "reward_model_pairs": acc["pairs"],
               "reward_model_accuracy_all": acc["accuracy_all"], "reward_model_pairs_all": acc["pairs_all"]}
    write_jsonl(Path(cfg.out_dir) / "samples.jsonl", sample_rows(c))
    return StageResult(metrics, outputs={"samples": str(Path(cfg.out_dir) / "samples.jsonl")})
