"""The experience phase of a PPO iteration: rollout -> score -> shape rewards -> advantages (seed, step 3).

The behaviour log-probs come from the sampler's own logits (fp32; ``sample(record=True)``), and the shared value
head reads the hidden states the sampler kept, so scoring runs no policy forward; where nothing was recorded (bf16)
one forward of the policy (shared trunk) gives both. The reference forward runs under inference mode; the reward
model scores prompt + response exactly as sampled (EOS included), or, with a tokenizer of its own, the decoded
text rendered with its template (rlhf/reward_scoring.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.advantages import gae, whiten_advantages
from rlhf.distributed import unwrap
from rlhf.generation import (Rollout, gather_logprobs, lm_response_logits, response_logits,
                             supports_logits_to_keep)
from rlhf.logprobs import entropy_from_logits
from rlhf.masking import masked_mean
from rlhf.reward_scoring import score_rollout
from rlhf.reward_shaping import apply_missing_eos_penalty, shape_rewards


@dataclass
class Experience:
    """Everything the optimisation phase needs, all (B, R) unless noted."""
    rollout: Rollout
    logprobs: torch.Tensor          # behaviour policy pi_theta_old at sampling time
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    mask: torch.Tensor              # response tokens up to and including EOS
    scores: torch.Tensor            # (B,) reward-model score after the missing-EOS penalty
    raw_scores: torch.Tensor        # (B,) reward-model score as returned
    kl: torch.Tensor                # per-token KL estimate used in the penalty
    kl_k1: torch.Tensor             # per-token log-ratio (k1), for logging
    non_score_reward: torch.Tensor
    entropy: torch.Tensor           # (B, R) entropy of pi_theta_old


@dataclass
class MicroBatch:
    """Rows of an experience for one optimisation step, without the columns none of them uses."""
    ids: torch.Tensor               # (b, T') prompt + response
    attn: torch.Tensor              # (b, T')
    context_length: int             # prompt width after the trim
    response_ids: torch.Tensor      # (b, R')
    mask: torch.Tensor              # (b, R')
    old_logprobs: torch.Tensor      # (b, R')
    advantages: torch.Tensor        # (b, R')
    old_values: torch.Tensor        # (b, R')
    returns: torch.Tensor           # (b, R')


def micro_batch(exp: Experience, idx: torch.Tensor) -> MicroBatch:
    """Rows ``idx`` of ``exp``, without the left padding all their prompts share and the positions after their
    longest response. A shuffled mini-batch of a ragged rollout is narrower than the rollout (the 26.7M Llama's:
    responses of 7 tokens on average, 25-40 decode steps), and every forward and backward of the optimisation
    phase runs on it. The result is the same up to rounding: attention is causal and masks padding, the positions
    come from the attention mask, and every loss is a mean over the response mask. TRL's PPO trainer runs every
    mini-batch at the rollout's full width."""
    ids, attn = exp.rollout.full()
    ctx = exp.rollout.context_length
    ids, attn, mask = ids[idx], attn[idx], exp.mask[idx]
    r = max(int(mask.sum(1).max()), 1)                                   # the longest response of these rows
    left = int(attn[:, :ctx].any(0).long().argmax())                     # the first column some prompt uses
    cols = slice(left, ctx + r)
    return MicroBatch(ids[:, cols], attn[:, cols], ctx - left, exp.rollout.response_ids[idx, :r], mask[:, :r],
                      exp.logprobs[idx, :r], exp.advantages[idx, :r], exp.values[idx, :r], exp.returns[idx, :r])


def policy_forward(policy, ids: torch.Tensor, attn: torch.Tensor, context_length: int, temperature: float):
    """Shared-trunk forward: (response logits (B, R, V), values (B, R)). The value of the state that emits
    response token t is read at position context_length - 1 + t (as TRL: vpred[:, context_length - 1 : -1]).
    Only the positions that predict response tokens are projected onto the vocabulary (``logits_to_keep``)."""
    n = ids.size(1) - context_length + 1
    keep = n if supports_logits_to_keep(unwrap(policy).lm) else 0
    logits, values = policy(ids, attn, logits_to_keep=keep)               # (B, n or T, V), (B, T)
    return response_logits(logits, n - 1, temperature), values[:, context_length - 1:-1]


def behaviour_forward(policy, rollout: Rollout, temperature: float, need_values: bool):
    """Behaviour log-probs, entropies and (with ``need_values``) the shared head's values, each (B, R).

    From what the sampler recorded when it could (``sample(record=True, hidden=...)``): no forward of the policy at
    all (a separate critic gives the values; the shared head reads the recorded hidden states). Otherwise one
    forward of the policy over prompt + response (the shared trunk gives log-probs and values together)."""
    recorded = rollout.logprobs is not None and (rollout.hidden is not None or not need_values)
    if recorded:
        values = policy.value_head(rollout.hidden).squeeze(-1) if need_values else None      # (B, R, H) -> (B, R)
        return rollout.logprobs, rollout.entropy, values
    ids, attn = rollout.full()
    if need_values:
        logits, values = policy_forward(policy, ids, attn, rollout.context_length, temperature)
    else:                                    # a separate critic gives the values: the language model alone
        logits, values = lm_response_logits(policy.lm, ids, attn, rollout.context_length, temperature), None
    return gather_logprobs(logits, rollout.response_ids), entropy_from_logits(logits), values


@torch.no_grad()
def make_experience(policy, ref_model, reward_model, rollout: Rollout, *, temperature: float, kl_coef: float,
                    kl_estimator: str, gamma: float, lam: float, missing_eos_penalty: float, whiten: bool,
                    pad_id: int, value_model=None, prompts: list | None = None) -> Experience:
    """Score a rollout and compute GAE advantages and returns. ``value_model`` (optional) is a separate critic
    returning values (B, T); by default the values come from the policy's own value head. ``reward_model``: a
    RewardScorer (rlhf/reward_scoring.py: the policy's ids, or decoded text re-encoded for a reward model with
    another tokenizer, which needs ``prompts``, the rollout's prompts) or a bare reward model sharing the policy's
    tokenizer."""
    ids, attn = rollout.full()
    mask = rollout.response_mask.float()                                    # (B, R)
    ctx = rollout.context_length
    logprobs, entropy, values = behaviour_forward(policy, rollout, temperature, need_values=value_model is None)
    if value_model is not None:
        values = value_model(ids, attn)[:, ctx - 1:-1]
    with torch.inference_mode():
        ref_logprobs = gather_logprobs(lm_response_logits(ref_model, ids, attn, ctx, temperature), rollout.response_ids)
        raw_scores = score_rollout(reward_model, rollout, prompts, pad_id)    # (B,)
    ref_logprobs, raw_scores = ref_logprobs.clone(), raw_scores.clone()      # leave inference mode
    scores = apply_missing_eos_penalty(raw_scores, rollout.ended, missing_eos_penalty)
    rewards, non_score_reward, kl = shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten and mask.sum() >= 2:
        advantages = whiten_advantages(advantages, mask)
    return Experience(rollout, logprobs, ref_logprobs, values, advantages, returns, mask, scores, raw_scores, kl,
                      (logprobs - ref_logprobs) * mask, non_score_reward, entropy)


def experience_stats(exp: Experience, kl_coef: float) -> dict[str, float]:
    """The objective/* metrics of one rollout (names as TRL's PPO trainer logs them)."""
    seq_kl = (exp.kl * exp.mask).sum(1)                                      # (B,)
    non_score = exp.non_score_reward.sum(1)                                  # (B,)
    lengths = exp.mask.sum(1)
    return {
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_k1": float(exp.kl_k1.sum(1).mean()),
        "objective/entropy": float((exp.entropy * exp.mask).sum(1).mean()),
        "objective/non_score_reward": float(non_score.mean()),
        "objective/scores": float(exp.scores.mean()),
        "objective/raw_scores": float(exp.raw_scores.mean()),
        "objective/rlhf_reward": float((exp.scores + non_score).mean()),
        "objective/kl_coef": kl_coef,
        "val/eos_rate": float(exp.rollout.ended.float().mean()),
        "val/response_length": float(lengths.mean()),
        "val/values": float(masked_mean(exp.values, exp.mask)),
        "val/returns": float(masked_mean(exp.returns, exp.mask)),
        "val/error": float(masked_mean((exp.values - exp.returns) ** 2, exp.mask)),
    }
