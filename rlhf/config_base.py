"""The building blocks of the typed configuration (rlhf/config.py): the error types, the range check, and the
blocks several stages share (a training loop, where models run, LoRA, sampling). Import them from rlhf.config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rlhf.config_rules import range_problem


class ConfigError(ValueError):
    """A params.yaml problem; the message names the file and the key."""


def check_rule(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class FieldError(ConfigError):
    """A numeric key outside its range; the message starts with the key, so the loader joins the section path to
    it with a dot (``ppo.sampling.max_new_tokens must be in [1, 1_000_000], got 0``)."""


def check_ranges(cfg: Any, rules: Optional[dict] = None) -> None:
    """Every numeric field of ``cfg`` within its rule (rlhf/config_rules.py RANGES, or ``rules`` for a stage
    module's own Config); called first in __post_init__, before cross-field rules divide by any of them."""
    problem = range_problem(cfg, rules)
    if problem:
        raise FieldError(problem)


@dataclass(frozen=True)
class TrainConfig:
    """One supervised training loop (pretrain, SFT, reward model)."""
    epochs: float = 1.0                 # fractional epochs allowed (a budget in passes over the data)
    batch_size: int = 32                # sequences (or rankings, for the reward model) per optimiser step
    grad_accum: int = 1                 # micro-batches per optimiser step; batch_size must divide by it
    lr: float = 3e-4
    lr_schedule: str = "cosine"         # constant | linear | cosine (after warmup)
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 64                # tokens per sequence; longer ones are truncated on the left of the prompt
    log_every: int = 10
    checkpoint_every: int = 50          # optimiser steps between checkpoints; 0 = none. Sized so a save is <1% of the
                                        # interval (~8 s of demo SFT/reward steps; docs/operations.md); pretrain: 100

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.batch_size % self.grad_accum == 0, f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        check_rule(self.lr_schedule in ("constant", "linear", "cosine"), f"lr_schedule must be constant|linear|cosine, not {self.lr_schedule!r}")


@dataclass(frozen=True)
class ComputeConfig:
    """Where and how a stage's models run (rlhf/accel.py). The defaults are the CPU demo's."""
    device: str = "auto"                # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"             # fp32 | bf16 (autocast; weights and optimiser state stay fp32)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    dtype: str = "fp32"                 # weights' dtype: fp32 | bf16 | fp16 | auto (the checkpoint's own torch_dtype)

    def __post_init__(self) -> None:
        check_rule(self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, not {self.precision!r}")
        check_rule(self.dtype in ("fp32", "bf16", "fp16", "auto"), f"dtype must be fp32, bf16, fp16 or auto, not {self.dtype!r}")
        check_rule(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               f"device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}")


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters (peft) instead of full fine-tuning; r = 0 turns it off."""
    r: int = 0                          # adapter rank; 0 = full fine-tuning
    alpha: float = 16.0                 # scaling lora_alpha / r
    dropout: float = 0.0                # keep 0 for PPO (dropout off: deterministic log-probs)
    target_modules: tuple[str, ...] = ()  # module names to adapt; empty = peft's default for the architecture

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 24
    temperature: float = 1.0            # applied identically when sampling and when computing log-probs
    batch_size: int = 64
    max_prompt_tokens: int = 32         # a longer rendered prompt keeps its end (the part the response continues)

    def __post_init__(self) -> None:
        check_ranges(self)
