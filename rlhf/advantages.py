"""Generalised advantage estimation (Schulman et al. 2016) over token-level trajectories (seed, Step 3)."""

from __future__ import annotations

import torch

from rlhf.masking import _as_bool, masked_whiten

__all__ = ["gae", "whiten_advantages"]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and value targets, vectorised over the batch, looping backwards over time.

    rewards, values, mask: (B, T); mask is 1 on valid response tokens, 0 after the end of each response.
    Returns (advantages (B, T), returns (B, T)), both 0 at masked positions.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t

    As TRL ppo_trainer ("6. compute advantages and returns") and lm-human-preferences train_policy.py
    compute_advantages. A masked position ends the trajectory: its value and reward count as 0 and nothing after
    it flows back (V of the state after the last token is 0, the episode is over). So garbage at padded
    positions never reaches a valid output. Deviation from TRL, which bootstraps the value one step past EOS
    (its ``padding_mask_p1``); here V after the final token is exactly 0.
    """
    valid = _as_bool(mask)
    zeros = torch.zeros_like(values)
    rewards = torch.where(valid, rewards, zeros)  # (B, T)
    values = torch.where(valid, values, zeros)  # (B, T)
    notdone = valid.to(values.dtype)  # (B, T); 0 where the trajectory has ended
    T = rewards.shape[1]
    next_values = torch.zeros_like(values[:, 0])  # (B,)
    lastgaelam = torch.zeros_like(values[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # (B,)
        lastgaelam = (delta + gamma * lam * lastgaelam) * notdone[:, t]  # (B,)
        advantages_reversed.append(lastgaelam)
        # A masked step is terminal for the step before it: its value (zeroed above) and its trace (zeroed by
        # notdone) are both 0, so neither bootstrap nor GAE trace crosses it.
        next_values = values[:, t]
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = torch.where(valid, advantages + values, zeros)  # (B, T)
    return advantages, returns


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalise advantages to mean 0 / variance 1 over valid tokens, then zero the padded ones.

    advantages, mask: (B, T) -> (B, T). As TRL ppo_trainer (masked_whiten then masked_fill) and lm-human-preferences
    (whiten(advantages)); do it AFTER computing ``returns`` so the value targets stay unnormalised.
    """
    whitened = masked_whiten(advantages, mask)  # (B, T)
    return torch.where(_as_bool(mask), whitened, torch.zeros_like(whitened))
