"""Losses of the three training stages. Every loss is to be MINIMISED."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.logprobs import logprobs_from_logits
from rlhf.masking import _as_bool, masked_mean

__all__ = ["pairwise_loss", "regression_loss", "sft_loss", "ppo_policy_loss", "ppo_value_loss"]


def pairwise_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Bradley-Terry preference loss: mean(-log sigmoid(r_chosen - r_rejected - margin)).

    r_chosen, r_rejected (B,), margin None, a float or (B,) -> 0-d loss. InstructGPT (Ouyang et al. 2022, eq. 1);
    the optional margin as TRL RewardTrainer (Llama 2's margin loss). ``logsigmoid`` is stable for large gaps.
    """
    diff = r_chosen - r_rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the reward model's score against a per-response target such as an Elo score (seed, Step 2).

    pred, target (B,) -> 0-d. With a (B, T) ``mask``, pred and target are (B, T) (the score repeated over the
    response tokens, the seed's per-token variant) and the mean runs over valid tokens only.
    """
    squared = (pred - target.to(pred.dtype)) ** 2  # same shape as pred
    return squared.mean() if mask is None else masked_mean(squared, mask)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token cross-entropy over the tokens selected by ``loss_mask`` (response-only SFT).

    logits (B, T, V): the model's UNSHIFTED output; labels (B, T): the input ids; loss_mask (B, T): 1 on the
    label tokens to learn (the response). Shifted inside, as Hugging Face causal LMs do: logits[:, t] predicts
    labels[:, t + 1]. Labels at masked positions may be anything (pad id, -100). Mean over all selected tokens of
    the batch (not per sequence), as TRL SFTTrainer's completion-only loss.
    """
    shift_logits = logits[:, :-1]  # (B, T-1, V)
    shift_mask = _as_bool(loss_mask[:, 1:])  # (B, T-1)
    shift_labels = torch.where(shift_mask, labels[:, 1:], torch.zeros_like(labels[:, 1:]))  # (B, T-1), valid ids
    token_logprobs = logprobs_from_logits(shift_logits, shift_labels)  # (B, T-1)
    return -masked_mean(token_logprobs, shift_mask)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate, negated for minimisation: loss = -L_CLIP (seed, Step 3; Schulman et al. 2017 eq. 7).

    All inputs (B, T); mask is 1 on response tokens. Returns 0-d (loss, clipfrac, approxkl):
      loss     = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
      clipfrac = fraction of valid tokens where the clipped term is the active one
      approxkl = masked_mean(0.5 * (logprobs - old_logprobs)^2)  (k2, as TRL ppo_trainer's ``approxkl``)
    As TRL ppo_trainer / CleanRL ppo.py. The log-ratio is zeroed on padding before exp() so garbage there cannot
    overflow into NaN gradients (the same for advantages).
    """
    valid = _as_bool(mask)
    log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))  # (B, T)
    pg_losses = -advantages * ratio  # (B, T)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    loss = masked_mean(torch.max(pg_losses, pg_losses2), valid)
    with torch.no_grad():
        clipfrac = masked_mean((pg_losses2 > pg_losses).to(logprobs.dtype), valid)
        approxkl = masked_mean(0.5 * log_ratio**2, valid)
    return loss, clipfrac, approxkl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)).

    values (new predictions), old_values (rollout-time predictions), returns (GAE targets), mask: all (B, T).
    Returns 0-d (loss, vf_clipfrac). As TRL ppo_trainer / lm-human-preferences train_policy.py (value clipping is
    detail 9 of "The 37 Implementation Details of PPO"). vf_clipfrac is where the clipped term is strictly larger.
    """
    valid = _as_bool(mask)
    # Sanitise padding first: inf/NaN there would survive the masked mean as NaN gradients (0 * inf).
    values, old_values, returns = (torch.where(valid, x, torch.zeros_like(x)) for x in (values, old_values, returns))
    values_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)  # (B, T)
    vf_losses1 = (values - returns) ** 2  # (B, T)
    vf_losses2 = (values_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), valid)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).to(values.dtype), valid)
    return loss, vf_clipfrac
