"""Per-token log-probabilities and entropies from logits. Tensor math only: no model calls here.

Alignment convention (causal LM, left-padded prompts of common width ``context_length``): the logit at position
t predicts the token at t + 1, so response token ``input_ids[:, context_length + j]`` is predicted by
``logits[:, context_length - 1 + j]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["logprobs_from_logits", "entropy_from_logits", "shift_for_response", "response_logprobs"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full (B, T, V) log-softmax.

    logits (..., V), labels (...) integer -> logprobs (...), float32 for half-precision inputs.
    Same idea as TRL ``trl/trainer/utils.py`` selective_log_softmax: log p_y = logit_y - logsumexp(logits), one row
    at a time to bound peak memory. For half precision we upcast each row to float32 first, because logsumexp in
    bf16 is too coarse for PPO ratios (TRL instead falls back to a bf16 log_softmax per row).
    """
    if logits.dim() == 1 or logits.shape[0] == 0:
        return _row_logprobs(logits, labels)
    rows = [_row_logprobs(row_logits, row_labels) for row_logits, row_labels in zip(logits, labels)]
    return torch.stack(rows)  # (B, ...)


def _row_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (..., V), labels (...) -> (...)."""
    if logits.dtype in _LOW_PRECISION:
        logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=labels.long().unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits): logits (..., V) -> (...).

    H = logsumexp(z) - sum_i softmax(z)_i * z_i, as TRL's ``entropy_from_logits`` (one pass, no log of tiny probs).
    """
    if logits.dtype in _LOW_PRECISION:
        logits = logits.float()
    probs = F.softmax(logits, dim=-1)  # (..., V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def shift_for_response(
    logits: torch.Tensor, input_ids: torch.Tensor, context_length: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut full-sequence logits down to the ones that predict response tokens, scaled by the sampling temperature.

    logits (B, T, V), input_ids (B, T) with prompts left-padded to ``context_length`` ->
    (response_logits (B, R, V), labels (B, R)), R = T - context_length.
    As TRL ppo_trainer: ``logits[:, context_length - 1 : -1]`` against ``input_ids[:, context_length:]``.
    Temperature is applied BEFORE the log-softmax and must equal the one used for sampling, otherwise logprobs
    describe a different distribution than the one that generated the tokens and the first PPO ratio is not 1
    ("The N Implementation Details of RLHF with PPO", policy training; lm-human-preferences divides logits by
    temperature the same way). Not in place: the caller's logits are left untouched.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 1 <= context_length <= input_ids.shape[1]:
        raise ValueError(f"context_length must be in [1, {input_ids.shape[1]}], got {context_length}")
    response_logits = logits[:, context_length - 1 : -1]  # (B, R, V)
    labels = input_ids[:, context_length:]  # (B, R)
    if temperature != 1.0:
        response_logits = response_logits / temperature
    return response_logits, labels


def response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, context_length: int, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probs of the response tokens: logits (B, T, V), input_ids (B, T) -> (B, R). Padded positions hold
    meaningless (finite) values; mask them downstream."""
    response_logits, labels = shift_for_response(logits, input_ids, context_length, temperature)
    return logprobs_from_logits(response_logits, labels)
