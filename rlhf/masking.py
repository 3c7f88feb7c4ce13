"""Masked reductions over padded (B, T) tensors.

A mask is 1 (or True) on valid tokens and 0 on padding. Every function selects with ``torch.where`` rather than
multiplying by the mask, so NaN or inf sitting at padded positions can never leak into a result (0 * inf = NaN).
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Any dtype -> bool; nonzero means valid."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over valid positions.

    x, mask: same shape, e.g. (B, T). dim=None sums everything (returns a 0-d tensor); dim=1 returns (B,).
    """
    selected = torch.where(_as_bool(mask), x, torch.zeros_like(x))  # (B, T)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid positions (as in TRL ``trl/core.py`` / OpenRLHF ``models/utils.py`` masked_mean).

    x, mask: same shape, e.g. (B, T). dim=None -> 0-d tensor; dim=1 -> (B,).
    Deviation from TRL: an empty mask gives 0, not NaN (the count is clamped to 1), so an all-padding
    minibatch contributes zero loss and zero gradient instead of poisoning the step with NaN.
    """
    mask = _as_bool(mask)
    count = mask.sum() if dim is None else mask.sum(dim=dim)  # () or (B,)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid positions (0-d tensor), as TRL's masked_var (Bessel-corrected by default).

    x, mask: same shape, e.g. (B, T). Raises ValueError when there are no valid positions, or only one valid
    position with ``unbiased=True`` (the Bessel factor n / (n - 1) is undefined; TRL silently returns inf there).
    """
    mask = _as_bool(mask)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("masked_var: the mask selects no elements")
    if unbiased and n == 1:
        raise ValueError("masked_var: unbiased variance needs at least 2 valid elements, got 1")
    centered = x - masked_mean(x, mask)  # (B, T)
    variance = masked_mean(centered**2, mask)  # ()
    return variance * (n / (n - 1)) if unbiased else variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 / variance 1 over valid positions (TRL masked_whiten; lm-human-preferences whiten).

    x, mask: (B, T) -> (B, T). With ``shift_mean=False`` the mean is added back (only the scale changes), as TRL
    does for ``whiten_rewards``. Values at padded positions are transformed too but are meaningless; callers
    that need zeros there should ``torch.where(mask, out, 0)`` (see ``rlhf.advantages.whiten_advantages``).
    """
    mean = masked_mean(x, mask)  # ()
    var = masked_var(x, mask)  # ()
    whitened = (x - mean) * torch.rsqrt(var + eps)  # (B, T)
    return whitened if shift_mean else whitened + mean
