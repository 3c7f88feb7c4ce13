"""ppo: fine-tune the SFT policy against the reward model with a KL penalty to the frozen SFT reference.

Checkpoints every ``ppo.checkpoint_every`` iterations into ``<out_dir>.ckpt/`` (policy and value weights, optimizer,
scheduler, KL controller, iteration, RNG states, logged rows) and resumes from the newest one, with the same result
as an uninterrupted run; runs data-parallel under torchrun / accelerate launch (rank 0 writes the model).
``ppo.compute`` / ``ppo.lora`` (rlhf/accel.py): device, bf16, gradient checkpointing; with LoRA the reference policy is
the policy itself with its adapter disabled, and the adapter is merged into the saved model."""
from __future__ import annotations

import sys

from rlhf import accel, distributed
from rlhf.checkpoint import CheckpointManager, inputs_signature, resume, stage_fingerprint
from rlhf.config import PPOConfig
from rlhf.data import load_jsonl
from rlhf.modeling import CriticModel, PolicyWithValueHead, load_causal_lm, load_tokenizer
from rlhf.ppo import PPOModels, PPOTrainer
from rlhf.reward_scoring import load_scorer
from rlhf.limits import check_sampling
from rlhf.stages.common import Recorder, StageResult, save_tokenizer_and_model, seed_everything
from rlhf.tempdirs import atomic_output_dir


def build_models(cfg: PPOConfig, tok, device=None) -> PPOModels:
    """Policy (+ value head), frozen reference, frozen reward model (a RewardScorer: rlhf/reward_scoring.py) and the
    optional critic, on ``device`` with the ``ppo.compute`` switches. LoRA (``ppo.lora.r`` > 0): adapters on the
    policy (and on the critic's trunk); the reference is the same weights with the adapter disabled, so no second
    copy of the model is held."""
    import torch

    device = device or torch.device("cpu")
    lm = load_causal_lm(cfg.policy_path, tok, dtype=cfg.compute.dtype)
    if cfg.lora.r:
        lm = accel.apply_lora(lm, cfg.lora, causal_lm=True)
        ref = accel.AdapterDisabled(lm)
    else:
        ref = accel.prepare(load_causal_lm(cfg.policy_path, tok, dtype=cfg.compute.dtype).eval(), device, cfg.compute, trainable=False)
    policy = accel.prepare(PolicyWithValueHead(lm), device, cfg.compute, hf=lm)
    reward = load_scorer(cfg.reward_path, tok, device, cfg.compute)
    if not reward.fast:
        note(f"ppo: {cfg.reward_path} has a tokenizer of its own: responses are decoded and re-encoded with its chat "
             f"template for scoring")
    value_model = None
    if cfg.value_model == "separate":
        value_model = build_critic(cfg, tok, reward.fast)
        value_model.train_top_layers(cfg.critic_train_layers)
        if cfg.lora.r:
            value_model.trunk = accel.apply_lora(value_model.trunk, cfg.lora, causal_lm=False)
        accel.prepare(value_model, device, cfg.compute, hf=value_model.trunk)
    return PPOModels(policy, ref, reward, value_model)


def build_critic(cfg: PPOConfig, tok, shares_tokenizer: bool) -> CriticModel:
    """The separate critic: from the reward model (TRL's PPO default: its trunk, its head at every position) when
    it reads the policy's token ids; otherwise from the policy's own trunk with a fresh head (logged)."""
    if shares_tokenizer:
        return CriticModel.from_reward_model(cfg.reward_path)
    note(f"ppo: the critic starts from the policy's trunk ({cfg.policy_path}) with a fresh value head, not from the "
         f"reward model (its tokenizer differs from the policy's)")
    return CriticModel.from_causal_lm_path(cfg.policy_path, tok)


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def trainable(models: PPOModels) -> dict:
    """The modules a checkpoint holds (the reference and the reward model are frozen inputs)."""
    out = {"policy": models.policy}
    if models.value_model is not None:
        out["value_model"] = models.value_model
    return out


def run(cfg: PPOConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    check_sampling(cfg.policy_path, cfg.sampling, "ppo")                             # before any weights load
    dist = distributed.init()
    device = accel.resolve_device(cfg.compute.device, dist.local_rank, "ppo.compute.device")
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    rec = Recorder(on_log if dist.is_main else None)
    models = build_models(cfg, tok, device)
    for module in trainable(models).values():
        distributed.broadcast_parameters(module, dist)
    trainer = PPOTrainer(cfg, models, tok, prompts, on_log=rec, dist=dist)
    inputs = inputs_signature(cfg.policy_path, cfg.reward_path, cfg.prompts)
    ckpt = CheckpointManager(cfg.out_dir, cfg.checkpoint_every, is_main=dist.is_main,
                             fingerprint=stage_fingerprint(cfg, dist.world_size, inputs, __name__))
    state = resume(ckpt, trainable(models), rec)
    if state is not None:
        trainer.load_state_dict(state)

    def on_iteration_end(iteration: int) -> None:
        if ckpt.due(iteration, trainer.n_iterations):
            ckpt.save(iteration, trainable(models), trainer.state_dict(), rec.rows)

    last = trainer.train(on_iteration_end=on_iteration_end)
    distributed.assert_in_sync(trainer.models.policy, dist)
    if dist.is_main:
        with atomic_output_dir(cfg.out_dir) as tmp:
            trainer.models.policy.lm = accel.merge_lora(trainer.models.policy.lm, tmp / accel.ADAPTER_DIR)
            save_tokenizer_and_model(trainer.models.policy, tok, tmp)
    ckpt.clear()
    distributed.barrier(dist)
    keep = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy", "val/eos_rate",
            "objective/kl_coef", "policy/approxkl_avg", "policy/clipfrac_avg")
    metrics = {k.replace("/", "_"): last[k] for k in keep if k in last}
    metrics["iterations"] = trainer.iteration
    rows = rec.rows
    metrics["mean_episodes_per_s"] = sum(r["perf/episodes_per_s"] for r in rows) / max(len(rows), 1)
    return StageResult(metrics, plots={"ppo": rows}, outputs={"model": cfg.out_dir})
