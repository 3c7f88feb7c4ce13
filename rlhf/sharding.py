"""FSDP2's whole-model views (rlhf/distributed.py shards; this module gathers): what a checkpoint, the final save and
rank 0's evaluation need from a model whose parameters are split over the ranks.

Every function that gathers is a collective: EVERY rank calls it, in the same order. Off FSDP each is the plain
single-process operation (the module's own tensors, ``optimizer.state_dict()``), so callers need no branch.
"""
from __future__ import annotations

import torch

from rlhf.distributed import DistContext, accelerator


def param_share(module: torch.nn.Module) -> float:
    """The share of the module's parameter elements this rank holds: 1 unsharded, about 1/world under FSDP
    (a DTensor's ``numel`` is the whole tensor's, its ``to_local`` this rank's shard)."""
    from torch.distributed.tensor import DTensor
    total = sum(p.numel() for p in module.parameters())
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())
    return local / max(total, 1)


def full_state_dict(module: torch.nn.Module, ctx: DistContext):
    """Under FSDP the gathered, unsharded weights (``accelerator.get_state_dict``: a collective, EVERY rank calls;
    rank 0 receives them on CPU, the others an empty dict); None otherwise (the module's own tensors are whole)."""
    return accelerator().get_state_dict(module) if ctx.sharded else None


def gathered(module: torch.nn.Module, ctx: DistContext, build) -> torch.nn.Module:
    """The trained module as one process would hold it, for what follows training on rank 0 (evaluation,
    normalisation, saving through the model's own save_pretrained). Under FSDP: its weights gathered (a collective,
    EVERY rank calls) and loaded, strictly, into a fresh unsharded module that ``build()`` makes on rank 0 (the
    other ranks get their sharded module back); otherwise the module itself. Peak memory on rank 0: two copies."""
    full = full_state_dict(module, ctx)
    if full is None or not ctx.is_main:
        return module
    fresh = build()
    fresh.load_state_dict(full)
    return fresh


def _full(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)       # accelerate's AcceleratedOptimizer wraps the torch one


def optimizer_state(module: torch.nn.Module, optimizer, ctx: DistContext) -> dict:
    """The optimiser's state to checkpoint: its ``state_dict()``, or under FSDP the unsharded one keyed by parameter
    name (torch.distributed.checkpoint ``get_optimizer_state_dict``, a collective: every rank calls)."""
    if not ctx.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(module, _inner(optimizer), options=_full(cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer, state: dict, ctx: DistContext) -> None:
    """Restore what ``optimizer_state`` saved (under FSDP each rank keeps its shards of the full state)."""
    if not ctx.sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(module, _inner(optimizer), optim_state_dict=state, options=_full())
