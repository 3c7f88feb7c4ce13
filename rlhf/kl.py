"""Per-token KL estimators against the frozen reference policy, and the KL-coefficient controllers.

Estimators follow Schulman, "Approximating KL Divergence" (2020). With tokens sampled from the policy p and
r = p_ref(x) / p(x), i.e. log r = ref_logprobs - logprobs, each is a single-sample estimate of KL(p || p_ref):
    k1 = -log r                  unbiased, high variance, can be negative
    k2 = 0.5 * (log r)^2         biased, low variance, >= 0
    k3 = (r - 1) - log r         unbiased, low variance, >= 0
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "KL_ESTIMATORS",
    "FixedKLController",
    "AdaptiveKLController",
]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logprobs - ref_logprobs. Inputs (B, T) log-probs of the sampled tokens -> (B, T).
    As TRL ppo_trainer (kl_estimator="k1", its default) and lm-human-preferences (kl = logprobs - ref_logprobs)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logprobs - ref_logprobs)^2. (B, T) -> (B, T). As OpenRLHF compute_approx_kl("k2")."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with log r = ref_logprobs - logprobs. (B, T) -> (B, T), always >= 0.
    As TRL ppo_trainer (kl_estimator="k3": ``(logr.exp() - 1) - logr``) and OpenRLHF compute_approx_kl("k3").
    ``expm1`` keeps precision when r is close to 1, which is where the policy usually is."""
    log_ratio = ref_logprobs - logprobs  # (B, T)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Dispatch to one of ``KL_ESTIMATORS`` by name ("k1", "k2", "k3"). (B, T) -> (B, T)."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


class FixedKLController:
    """Constant KL coefficient (lm-human-preferences train_policy.py FixedKLController; TRL/OpenRLHF the same)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient never changes."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target`` (Ziegler et al. 2019, Sec. 2.2;
    lm-human-preferences train_policy.py AdaptiveKLController; OpenRLHF ppo_utils/kl_controller.py):

        e = clip(KL_current / target - 1, -0.2, 0.2)
        kl_coef <- kl_coef * (1 + e * n_steps / horizon)

    KL above target raises the coefficient (stronger penalty), below target lowers it. ``n_steps`` is the number
    of samples (episodes) consumed since the last update, ``horizon`` is in the same unit.
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Multiplicative update of ``self.value``; ``current_kl`` may be a float or a 0-d tensor."""
        proportional_error = float(current_kl) / self.target - 1.0
        proportional_error = min(max(proportional_error, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient on resume. target/horizon stay as constructed: they come from the config."""
        self.value = float(state["value"])
