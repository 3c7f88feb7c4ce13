"""Data-parallel scale-out on torch.distributed (gloo on CPU), the same code path as a single process.

Started by ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu --num_processes N`` (both set WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), every training stage (sft, reward, ppo) runs unchanged:

- ``init()`` reads the world size and rank from the environment and joins the process group (``env://``);
  without WORLD_SIZE > 1 everything here is a no-op, so the default single-process run is bit-for-bit what it was.
- Replicas start identical (``broadcast_parameters``, as DDP does when it wraps a model) and stay identical: after the
  backward passes of an optimiser step, ``sync_gradients`` all-reduces the gradients in one flat bucket (DDP's
  all-reduce, done once per optimiser step instead of per micro-batch), so every rank applies the same update.
  The loops call submodules and non-forward methods (``policy.lm`` for sampling, ``RewardModel.raw_scores``), which a
  DDP wrapper would not see; an explicit all-reduce keeps them unchanged.
- Batches are sharded by rank (``shard``: rows ``rank::world``); supervised losses are normalised by the GLOBAL token
  or pair count, so the summed gradient equals the single-process one (up to float summation order).
- PPO: each rank samples its share of the prompts with its own seed (seed + rank) and the mean gradient is used.
- Only rank 0 writes outputs, checkpoints and metrics; every rank returns the same (all-reduced) metrics.

The collective calls must be made by every rank in the same order: keep them outside rank-dependent branches.
"""
from __future__ import annotations

import atexit
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

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

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


def init() -> DistContext:
    """Join the process group when launched with WORLD_SIZE > 1 (idempotent); returns this process's context.

    Backend: nccl when CUDA is available (each rank on ``cuda:<LOCAL_RANK>``, as ``compute.device: auto`` places the
    models), else gloo (STACK-NOTES 3: multi-process DDP on CPU needs gloo); RLHF_DIST_BACKEND overrides it (e.g. gloo
    for CPU training on a GPU machine)."""
    ctx = env_world()
    if ctx.enabled and not dist.is_initialized():
        default = "nccl" if torch.cuda.is_available() else "gloo"
        backend = os.environ.get("RLHF_DIST_BACKEND", default)
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_shutdown)
    return ctx


def _comm_device() -> torch.device:
    """Where the small bookkeeping tensors of a collective live: nccl only reduces CUDA tensors."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def context() -> DistContext:
    """The current context: the process group's when one is initialised, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return SINGLE


def is_main_process() -> bool:
    """True for rank 0 (and for a plain single-process run): the one process that writes outputs and metrics."""
    return env_world().is_main


def shard(items: Sequence, ctx: DistContext) -> list:
    """This rank's share of a batch: items rank, rank + world, ... (all of them on one process)."""
    return list(items) if not ctx.enabled else list(items)[ctx.rank::ctx.world_size]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DDP does when it wraps a model)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def sync_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext, average: bool) -> None:
    """All-reduce the gradients of ``params`` across ranks in one flat bucket: sum (the losses are normalised by a
    global count) or mean (each rank's loss is a mean over its own rows, as DDP). A parameter without a gradient on
    some rank counts as zero there; one without a gradient on every rank keeps ``grad = None`` (as one process)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_comm_device())
    dist.all_reduce(has)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    if average:
        flat /= ctx.world_size
    offset = 0
    for p, h in zip(params, has.tolist()):
        n = p.numel()
        if h:
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        else:
            p.grad = None
        offset += n


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum of each value over ranks (float64)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


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
    if not ctx.enabled:
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
