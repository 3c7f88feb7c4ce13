"""ppo: fine-tune the SFT policy against the reward model with a KL penalty to the frozen SFT reference."""
from __future__ import annotations

from rlhf.config import PPOConfig
from rlhf.data import load_jsonl
from rlhf.modeling import PolicyWithValueHead, RewardModel, load_causal_lm, load_tokenizer
from rlhf.ppo import PPOModels, PPOTrainer
from rlhf.stages.common import Recorder, StageResult, save_tokenizer_and_model, seed_everything


def build_models(cfg: PPOConfig, tok) -> PPOModels:
    policy = PolicyWithValueHead(load_causal_lm(cfg.policy_path, tok))
    ref = load_causal_lm(cfg.policy_path, tok).eval()
    reward = RewardModel.from_pretrained(cfg.reward_path).eval()
    value_model = None
    if cfg.value_model == "separate":
        # A critic initialised from the reward model (TRL's PPO default): its trunk, a fresh per-token value head.
        from rlhf.modeling import CriticModel
        value_model = CriticModel.from_reward_model(cfg.reward_path)
    return PPOModels(policy, ref, reward, value_model)


def run(cfg: PPOConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    rec = Recorder(on_log)
    trainer = PPOTrainer(cfg, build_models(cfg, tok), tok, prompts, on_log=rec)
    last = trainer.train()
    save_tokenizer_and_model(trainer.m.policy, tok, cfg.out_dir)
    keep = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy", "val/eos_rate",
            "objective/kl_coef", "policy/approxkl_avg", "policy/clipfrac_avg")
    metrics = {k.replace("/", "_"): last[k] for k in keep if k in last}
    metrics["iterations"] = trainer.iteration
    rows = rec.rows
    metrics["mean_episodes_per_s"] = sum(r["perf/episodes_per_s"] for r in rows) / max(len(rows), 1)
    return StageResult(metrics, plots={"ppo": rows}, outputs={"model": cfg.out_dir})
