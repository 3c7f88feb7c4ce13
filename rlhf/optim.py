"""Optimiser and learning-rate schedule shared by every training loop."""
from __future__ import annotations

import math

import torch

from rlhf.distributed import SINGLE, DistContext, prepare
from rlhf.distributed import clip_grad_norm as clip_gradients
from rlhf.finite import require_finite
from rlhf.sharding import load_optimizer_state


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW; eps 1e-5 as in the N implementation details of RLHF (TF's default, more stable than 1e-8).

    The fused kernel (CPU since torch 2.4, CUDA; 1.10-1.14x on the optimiser-heavy phases, BENCHMARKS.md) when every
    parameter is fp32/bf16 on one device of a type it supports; else torch's default implementation."""
    params = [p for p in params if p.requires_grad]
    kwargs = dict(lr=lr, weight_decay=weight_decay, eps=1e-5)
    devices = {p.device.type for p in params}
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.bfloat16) for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):   # an older torch without a fused kernel for this device
            pass
    return torch.optim.AdamW(params, **kwargs)


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int = 0):
    """Multiplier of the base lr at optimiser step ``s`` (0-based): linear warmup, then constant/linear/cosine decay."""
    total_steps = max(1, total_steps)

    def f(s: int) -> float:
        if warmup_steps and s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "constant":
            return 1.0
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def make_scheduler(optimizer, schedule: str, total_steps: int, warmup_ratio: float = 0.0):
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps, warmup))


def clip_grad_norm(model: torch.nn.Module, max_norm: float, dist: DistContext = SINGLE) -> float:
    """Global gradient-norm clipping (accelerate's under several processes); returns the norm before clipping."""
    return float(clip_gradients(model.parameters(), max_norm, dist))


def setup_training(model, cfg, total_steps: int, state: dict | None = None, dist: DistContext = SINGLE):
    """AdamW + schedule for a supervised loop of ``total_steps`` steps (``cfg``: a TrainConfig), prepared for the
    data-parallel group (rlhf/distributed.py ``prepare``: DDP, or FSDP's shards) and restored from a checkpoint
    ``state`` when given; returns (the module to train through, optimizer, scheduler, first step to run)."""
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    fwd, opt = prepare(model, opt, dist)
    sched = make_scheduler(opt, cfg.lr_schedule, total_steps, cfg.warmup_ratio)
    if not state:
        return fwd, opt, sched, 0
    load_optimizer_state(model, opt, state["optimizer"], dist)
    sched.load_state_dict(state["scheduler"])
    return fwd, opt, sched, int(state["step"])


def optimizer_step(model, opt, sched, max_grad_norm: float, step: int | None = None, dist: DistContext = SINGLE) -> float:
    """Clip the global gradient norm, step optimiser and schedule, clear gradients; returns the norm before clipping.
    A non-finite norm (a NaN or inf loss, or an overflow) raises NonFiniteError BEFORE the update: AdamW would
    otherwise write NaN into every weight."""
    grad_norm = clip_grad_norm(model, max_grad_norm, dist)
    require_finite(grad_norm, f"the gradient norm at optimiser step {step}" if step is not None else "the gradient norm")
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return grad_norm
