"""Per-token rewards for PPO: the KL penalty on every response token plus the scalar score at the last one."""

from __future__ import annotations


import torch

from rlhf.kl import kl_penalty
from rlhf.masking import _as_bool

__all__ = ["shape_rewards", "last_token_index", "apply_missing_eos_penalty"]


def last_token_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last valid token per row, and whether the row has one.

    mask (B, T) -> (index (B,) long, has_token (B,) bool). For a prefix mask the index is mask.sum(1) - 1; taking
    the position of the last 1 instead is the same there and still right if a mask has holes. Empty rows get 0.
    """
    valid = _as_bool(mask)
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)  # (B, T)
    index = torch.where(valid, positions, torch.zeros_like(positions)).max(dim=1).values  # (B,)
    return index, valid.any(dim=1)


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """r_t = -kl_coef * KL_t on every valid token, plus the reward-model score on the last valid token.

    scores (B,), logprobs / ref_logprobs / mask (B, T) -> (rewards, non_score_reward, kl), each (B, T) and 0 at
    masked positions. As TRL ppo_trainer ("4. compute rewards") and lm-human-preferences train_policy.py
    (rewards = -kl_coef * kl; score added at the last token). Rows may end at different positions (ragged).
    A row with no valid token gets all zeros: there is no step its score could be credited to, so the caller
    should keep its score in the logged ``objective/scores`` but it cannot move the policy.
    Call under ``torch.no_grad()``; inputs at masked positions are ignored (even if inf/NaN).
    """
    valid = _as_bool(mask)
    zeros = torch.zeros_like(logprobs)
    kl = kl_penalty(torch.where(valid, logprobs, zeros), torch.where(valid, ref_logprobs, zeros), estimator)  # (B, T)
    kl = torch.where(valid, kl, zeros)  # (B, T); exactly 0 on padding for every estimator
    non_score_reward = -kl_coef * kl  # (B, T)
    last, has_token = last_token_index(valid)  # (B,), (B,)
    score_at_end = torch.zeros_like(non_score_reward)  # (B, T)
    credited = torch.where(has_token, scores.to(zeros.dtype), torch.zeros_like(scores, dtype=zeros.dtype))  # (B,)
    score_at_end.scatter_(1, last.unsqueeze(1), credited.unsqueeze(1))  # (B, 1) into (B, T)
    return non_score_reward + score_at_end, non_score_reward, kl


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that did not end with EOS (truncated at max length).

    scores (B,), ended (B,) bool -> (B,). As TRL PPOConfig.missing_eos_penalty (``scores[~contain_eos_token] -=
    missing_eos_penalty``), but not in place. ``penalty=None`` returns the scores unchanged.
    """
    if penalty is None:
        return scores
    return scores - penalty * (~_as_bool(ended)).to(scores.dtype)
