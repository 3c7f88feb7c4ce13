"""Data-parallel scale-out through Hugging Face accelerate: the same code path as a single process.

Started by ``accelerate launch --num_processes N`` (configs/accelerate/) or ``torchrun --nproc_per_node N`` (both set
WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), every training stage (sft, reward, ppo) runs unchanged:

- ``init()`` creates the process's ``accelerate.Accelerator`` (one per process: accelerate's state is process-wide),
  which joins the process group: gloo on CPU (``cpu=True`` when there is no CUDA, or RLHF_DIST_BACKEND=gloo), nccl
  on GPUs. Mixed precision comes from the accelerate launch config (ACCELERATE_MIXED_PRECISION); our own
  ``compute.precision`` loads the weights in bf16 instead. Without WORLD_SIZE > 1 the Accelerator is a single
  process and every call below is the plain torch operation, so a one-process run is bit-for-bit what it was.
- ``data_parallel(module)`` is ``accelerator.prepare_model``: DistributedDataParallel, which broadcasts rank 0's
  weights when it wraps and averages the gradients in its backward hooks (``find_unused_parameters``: PPO's epochs
  without the value loss leave the value head unused). The training forward goes through the wrapper; sampling and
  scoring call the unwrapped module (no gradients, nothing to reduce). Micro-batches before the last of an optimiser
  step run under ``accelerator.no_sync`` (``micro_step``), so the gradients are reduced once per step.
- Supervised losses are normalised by the GLOBAL token or pair count and multiplied by the world size, so DDP's mean
  is the sum: an optimiser step equals the single-process one up to float summation order.
- Batches are sharded by rank (``shard``: rows ``rank::world``). PPO: each rank samples its share of the prompts with
  its own seed (seed + rank) and the mean gradient is used.
- ``clip_grad_norm`` and the metric reductions are accelerate's (``clip_grad_norm_``, ``reduce``).
- Only rank 0 writes outputs, checkpoints and metrics; every rank returns the same (all-reduced) metrics.
- FSDP2 (configs/accelerate/fsdp.yaml; pretrain, sft, reward): ``prepare`` hands the model and its optimiser to
  ``accelerator.prepare`` (``fully_shard`` in place; the optimiser steps the shards). Every rank must then make the
  same forward calls: ``micro_batches`` pads a short share with zero-weight repeats, evaluation runs every batch on
  every rank, and what follows training on rank 0 uses rlhf/sharding.py ``gathered`` (the whole weights in a fresh
  module). Checkpoints hold the gathered weights and optimiser state (sharding.py), the files one process writes.
  accelerate 1.15 never enables FSDP for CPU processes; ``_shard_on_cpu`` sets its state as it does on GPUs. ppo,
  LoRA, FSDP1 and DeepSpeed are refused in one line.

Gradients are never reduced by hand here. The collective calls must be made by every rank in the same order: keep
them outside rank-dependent branches.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    sharded: bool = False       # FSDP: parameters, gradients and optimiser state split over the ranks

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def layout(self):
        """What a checkpoint must have been written under: the number of processes, and FSDP when sharded (one
        process and DDP: the plain count, as before FSDP existed)."""
        return f"{self.world_size} FSDP" if self.sharded else self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """Each rank's own sampling seed (rank 0 keeps ``seed``, so one process is unchanged)."""
        return seed + self.rank


SINGLE = DistContext()


def env_world() -> DistContext:
    """World size and rank as torchrun / accelerate launch export them (absent: one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid WORLD_SIZE={world} / RANK={rank}")
    return DistContext(world, rank, local)


_ACCELERATOR = None


def accelerator():
    """This process's ``accelerate.Accelerator`` (created on first use; see the module docstring)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        if _flag("ACCELERATE_USE_DEEPSPEED"):
            raise RuntimeError("ACCELERATE_USE_DEEPSPEED=true: DeepSpeed is not supported yet; use FSDP "
                               "(configs/accelerate/fsdp.yaml) or data parallel (ddp.yaml, multi_cpu.yaml)")
        fsdp = _flag("ACCELERATE_USE_FSDP")
        if fsdp and os.environ.get("FSDP_VERSION", "1") != "2":      # accelerate's default is 1
            raise RuntimeError(f"FSDP_VERSION={os.environ.get('FSDP_VERSION', '1')}: only FSDP2 is supported; set "
                               "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)")
        from accelerate import Accelerator, DistributedDataParallelKwargs
        cpu = os.environ.get("RLHF_DIST_BACKEND") == "gloo" or not torch.cuda.is_available()
        acc = Accelerator(cpu=cpu, device_placement=False,
                          kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if fsdp and acc.num_processes > 1:
            _shard_on_cpu(acc)
        _ACCELERATOR = acc
        if dist.is_initialized():
            atexit.register(_shutdown)
    return _ACCELERATOR


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() == "true"


def _fsdp2_active() -> bool:
    return _ACCELERATOR is not None and _ACCELERATOR.is_fsdp2


def _shard_on_cpu(acc) -> None:
    """Make sure an FSDP launch config really shards (FSDP2, ``torch.distributed.fsdp.fully_shard``).

    accelerate 1.15 turns FSDP on only for accelerator devices: ``AcceleratorState`` sets DistributedType.FSDP for
    MULTI_GPU/NPU/XPU/... and never for MULTI_CPU (accelerate/state.py), so under gloo on CPU an FSDP config would
    silently run plain data parallel. torch's FSDP2 itself runs on CPU with gloo; so on CPU we set accelerate's state
    (PartialState and AcceleratorState, both: each AcceleratorState() copies PartialState's fields) to what it sets on
    GPUs, with the plugin built from the FSDP_* variables the launch exported, as accelerate builds it. Everything
    after that (fully_shard, the optimiser's parameters, no_sync, clipping, the gathered state dict) is accelerate's
    and torch's. (FSDP1 was refused before: its state-dict and optimiser handling differ.) On GPUs: nothing to do."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    if acc.distributed_type == DistributedType.FSDP:
        return
    plugin = FullyShardedDataParallelPlugin()
    for state in (PartialState(), AcceleratorState()):
        state.distributed_type = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin


def init() -> DistContext:
    """This process's place in the data-parallel group (one process unless launched with WORLD_SIZE > 1)."""
    ctx = env_world()
    if not ctx.enabled:
        return ctx
    acc = accelerator()
    if acc.num_processes != ctx.world_size:
        raise RuntimeError(f"accelerate sees {acc.num_processes} processes, WORLD_SIZE says {ctx.world_size}")
    return DistContext(acc.num_processes, acc.process_index, acc.local_process_index, sharded=acc.is_fsdp2)


def refuse_sharded(ctx: DistContext, what: str) -> None:
    """One line, before any work, for what FSDP does not support yet (``what``: the stage or option, and why)."""
    if ctx.sharded:
        raise RuntimeError(f"{what} is not supported under FSDP yet; use a data-parallel config "
                           "(configs/accelerate/ddp.yaml or multi_cpu.yaml)")


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def context() -> DistContext:
    """The current context: the process group's when one is initialised, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                           sharded=_fsdp2_active())
    return SINGLE


def is_main_process() -> bool:
    """True for rank 0 (and for a plain single-process run): the one process that writes outputs and metrics."""
    return env_world().is_main


def shard(items: Sequence, ctx: DistContext) -> list:
    """This rank's share of a batch: items rank, rank + world, ... (all of them on one process)."""
    return list(items) if not ctx.enabled else list(items)[ctx.rank::ctx.world_size]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        accelerator().wait_for_everyone()


def check_batch(batch_size: int, ctx: DistContext, key: str) -> None:
    """Every rank needs a share of every batch (DDP reduces in each rank's backward)."""
    if batch_size < ctx.world_size:
        raise ValueError(f"{key} ({batch_size}) must be >= the number of processes ({ctx.world_size})")


def data_parallel(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module the training forward and backward go through: ``accelerator.prepare_model`` (DDP: rank 0's weights
    broadcast now, gradients averaged in backward) under several processes, the module itself on one. Under FSDP
    the optimiser must be prepared with the model: use ``prepare``."""
    if not ctx.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    if ctx.sharded:
        raise RuntimeError("data_parallel() under FSDP: prepare the model with its optimiser (prepare())")
    return accelerator().prepare_model(module, device_placement=False)


def prepare(module: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext):
    """(the module to train through, the optimiser to step): DDP as ``data_parallel`` with the optimiser unchanged;
    under FSDP ``accelerator.prepare(module, optimizer)``, which shards the module IN PLACE (``fully_shard``: every
    forward all-gathers the weights, so every rank must make the same forward calls) and moves the optimiser onto
    the shards. One process: both unchanged."""
    if not ctx.sharded:
        return data_parallel(module, ctx), optimizer
    return accelerator().prepare(module, optimizer)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a data-parallel wrapper (or the module itself: FSDP2 shards in place)."""
    from torch.nn.parallel import DistributedDataParallel
    return module.module if isinstance(module, DistributedDataParallel) else module


def micro_step(wrapped: torch.nn.Module, last: bool):
    """Context for one micro-batch's forward and backward: gradients are reduced only on the ``last`` one of an
    optimiser step (``accelerator.no_sync`` before it: DDP's no_sync, FSDP2's set_requires_gradient_sync)."""
    if last or (unwrap(wrapped) is wrapped and not _fsdp2_active()):
        return contextlib.nullcontext()
    return accelerator().no_sync(wrapped)


def micro_batches(idx: Sequence, micro: int, ctx: DistContext) -> list[tuple[list, bool]]:
    """This rank's micro-batches of one optimiser step over the batch ``idx``, each with whether it counts.

    Its share (``shard``) cut into runs of ``micro``. Every rank must make as many forward and backward calls as
    the others (FSDP all-gathers in each forward, DDP reduces in the last backward), and a short batch (the last of
    an epoch) can leave a rank fewer rows, or none: such a rank repeats one row of the batch with ``counts`` False,
    whose loss the caller multiplies by zero. One process, or an even share: exactly the runs of ``micro``."""
    local = shard(idx, ctx)
    runs = [(local[j:j + micro], True) for j in range(0, len(local), micro)]
    if ctx.enabled and idx:
        most = -(-(-(-len(idx) // ctx.world_size)) // micro)        # rank 0's count: ceil(ceil(n / world) / micro)
        runs += [([(local or list(idx))[0]], False)] * (most - len(runs))
    return runs


def backward(loss: torch.Tensor, ctx: DistContext) -> None:
    """``accelerator.backward`` under several processes; ``loss.backward()`` on one."""
    if ctx.enabled:
        accelerator().backward(loss)
    else:
        loss.backward()


def backward_sum(loss: torch.Tensor, ctx: DistContext) -> None:
    """Backward of a rank's share of a loss normalised by a GLOBAL count: scaled by the world size, so that DDP's
    mean over ranks is the sum (one process: ``loss.backward()`` unchanged, not even a multiplication)."""
    backward(loss * ctx.world_size if ctx.enabled else loss, ctx)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float, ctx: DistContext) -> torch.Tensor:
    """Global gradient-norm clipping (``accelerator.clip_grad_norm_``: FSDP/DeepSpeed aware); the norm before."""
    params = list(params)
    if ctx.sharded:     # accelerate's FSDP2 clipping needs exactly the prepared model's parameter list
        return accelerator().clip_grad_norm_(params, max_norm)
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if ctx.enabled:
        return accelerator().clip_grad_norm_(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum of each value over ranks (float64, ``accelerator.reduce``)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    acc = accelerator()
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=acc.device)
    return acc.reduce(t, reduction="sum").tolist()


def all_reduce_mean(metrics: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean of every metric over ranks (every rank must hold the same keys)."""
    if not ctx.enabled:
        return metrics
    keys = sorted(metrics)
    vals = all_reduce_sum([metrics[k] for k in keys], ctx)
    return {**metrics, **{k: v / ctx.world_size for k, v in zip(keys, vals)}}


def params_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes (names in order)."""
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def assert_in_sync(module: torch.nn.Module, ctx: DistContext) -> str:
    """Check that every rank holds bit-identical weights (the all-reduced updates kept the replicas equal);
    returns the common digest ("" on one process, where there is nothing to compare)."""
    if not ctx.enabled or ctx.sharded:                      # FSDP: each rank holds other shards by design
        return ""
    digest = params_digest(module)
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, digest)
    if len(set(gathered)) != 1:
        raise RuntimeError(f"replicas diverged: parameter digests {gathered}")
    return digest


# -- a core-only launcher: `torchrun --nproc_per_node 2 -m rlhf.distributed sft reward ppo --params params.yaml` ----
def main(argv: list[str] | None = None) -> int:
    """Run stages of the core (no tracking) in this process group; rank 0 writes outputs and a JSON report."""
    import argparse
    import importlib
    import json
    from pathlib import Path

    from rlhf.config import load_params

    p = argparse.ArgumentParser(prog="python -m rlhf.distributed", description=main.__doc__)
    p.add_argument("stages", nargs="+", choices=["pretrain", "sft", "reward", "ppo"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--report", default="", help="JSON file for {stage: {metrics, plots}} (rank 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    ctx = init()
    params = load_params(args.params)
    report = {}
    for stage in args.stages:
        result = importlib.import_module(f"rlhf.stages.{stage}").run(getattr(params, stage), None)
        report[stage] = {"metrics": result.metrics, "plots": result.plots, "world_size": ctx.world_size}
    if ctx.is_main and args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=float))
    barrier(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
