"""Scale-out benchmark: the SFT training loop (rlhf.train_lm.train_causal_lm, through accelerate) on a model built from
a config, at 1 and N processes, bf16 on GPUs or fp32 on CPU. A GPU machine runs it unchanged:

    python benchmarks/scale.py --procs 1,8                  # GPT-2 small (124M), bf16 on CUDA, 1 then 8 processes
    python benchmarks/scale.py --size tiny --procs 1,2      # the CPU check: a 2-layer model, fp32, gloo
    python benchmarks/scale.py --procs 1,8 --sharding both  # and FSDP2 (configs/accelerate/fsdp.yaml) beside DDP

Each point is `accelerate launch --config_file configs/accelerate/<ddp|multi_cpu|fsdp>.yaml --num_processes P
benchmarks/scale.py --worker ...`: every process builds the same model (seeded), trains ``--steps`` optimiser steps of
``--batch`` sequences x ``--seq`` random tokens (the global batch: P processes share it, as the stages do), and rank 0
reports tokens/s (the steps after ``--warmup``), seconds per step, the loss, peak memory and the share of the weights
it holds (about 1/P under FSDP). The driver prints one
markdown row per process count, the speed-up over 1 process and the scaling efficiency, and writes --json.
Nothing is downloaded: the model is ``GPT2LMHeadModel(GPT2Config(...))``, the tokens are random ids.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {   # GPT-2 shapes: small = the 124M-parameter GPT-2
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, vocab_size=1024, n_positions=256),
    "small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--procs", default="1,2", help="process counts to measure, e.g. 1,8 (default 1,2)")
    ap.add_argument("--steps", type=int, default=30, help="optimiser steps per point (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed (default 5)")
    ap.add_argument("--batch", type=int, default=32, help="global batch, sequences per step (default 32)")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512; tiny: at most 256)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--sharding", choices=["ddp", "fsdp", "both"], default="ddp",
                    help="data parallel (ddp), FSDP2 (fsdp: points with more than one process), or both")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process on CPU (default 1)")
    ap.add_argument("--json", default="", help="write the results here too")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.proc_list = [int(x) for x in a.procs.split(",") if x.strip()]
    if not a.proc_list or min(a.proc_list) < 1 or a.steps <= a.warmup or a.batch < max(a.proc_list):
        ap.error("--procs >= 1 each, --steps > --warmup, --batch >= the largest process count")
    if a.seq > SIZES[a.size]["n_positions"]:
        ap.error(f"--seq {a.seq}: the {a.size} model has {SIZES[a.size]['n_positions']} positions")
    return a


def worker(a: argparse.Namespace) -> None:
    """One process of a point (under accelerate launch): train and let rank 0 write the figures to --out."""
    import dataclasses

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf import accel, distributed
    from rlhf.config import ComputeConfig, TrainConfig
    from rlhf.train_lm import Example, train_causal_lm
    torch.set_num_threads(a.threads)
    dist = distributed.init()
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "fp32") if a.precision == "auto" else a.precision
    device = accel.resolve_device("auto", dist.local_rank)
    torch.manual_seed(0)
    # No dropout: 1 and N processes then compute the same steps (N draws other dropout masks), so their losses agree.
    model = GPT2LMHeadModel(GPT2Config(**SIZES[a.size], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    accel.prepare(model, device, ComputeConfig(precision=precision))
    gen = torch.Generator().manual_seed(1)
    vocab = SIZES[a.size]["vocab_size"]
    n = a.batch * a.steps                      # one epoch of distinct sequences
    examples = [Example(ids, [1] * a.seq) for ids in torch.randint(2, vocab, (n, a.seq), generator=gen).tolist()]
    cfg = dataclasses.replace(TrainConfig(), batch_size=a.batch, grad_accum=a.grad_accum, epochs=1.0, lr=1e-4,
                              warmup_ratio=0.0, max_length=a.seq, log_every=1, checkpoint_every=0)
    stamps: list[float] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def on_log(step: int, row: dict) -> None:
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        on_log.loss = row["loss/train"]

    metrics = train_causal_lm(model, examples, cfg, pad_id=0, seed=0, on_log=on_log, dist=dist)
    timed = stamps[a.warmup:]
    seconds = (timed[-1] - timed[0]) / max(len(timed) - 1, 1)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else _rss_gib()
    if dist.is_main and a.out:
        Path(a.out).write_text(json.dumps({
            "processes": dist.world_size, "size": a.size, "precision": precision, "device": str(device),
            "parameters": sum(p.numel() for p in model.parameters()), "steps": metrics["steps"],
            "seconds_per_step": seconds, "tokens_per_s": a.batch * a.seq / seconds, "final_loss": on_log.loss,
            "peak_memory_gib_rank0": peak, "sharding": "fsdp" if dist.sharded else "ddp" if dist.enabled else "-",
            "param_share": metrics.get("param_share", 1.0)}))
    distributed.barrier(dist)


def _rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20        # Linux: KiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def point(a: argparse.Namespace, procs: int, out: Path, fsdp: bool = False) -> dict:
    import torch
    config = "fsdp.yaml" if fsdp else "ddp.yaml" if torch.cuda.is_available() else "multi_cpu.yaml"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / config), "--num_processes", str(procs),
           "--main_process_port", str(free_port()), "--mixed_precision", "no", __file__, "--worker", "--out", str(out),
           "--size", a.size, "--procs", str(procs), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--batch", str(a.batch), "--seq", str(a.seq), "--grad-accum", str(a.grad_accum),
           "--precision", a.precision, "--threads", str(a.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{procs} processes ({'fsdp' if fsdp else 'ddp'}) failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in a.proc_list:
            for fsdp in ([False] if a.sharding == "ddp" else [True] if a.sharding == "fsdp" and procs > 1
                         else [False, True] if procs > 1 else [False]):
                print(f"[scale] {procs} process(es){' FSDP' if fsdp else ''} ...", file=sys.stderr, flush=True)
                rows.append(point(a, procs, Path(tmp) / f"p{procs}{'f' if fsdp else ''}.json", fsdp))
    base = next((r for r in rows if r["processes"] == 1), rows[0])
    print(f"{a.size} ({rows[0]['parameters'] / 1e6:.1f}M parameters), {rows[0]['precision']} on {rows[0]['device']}, "
          f"global batch {a.batch} x {a.seq} tokens, {a.steps} steps ({a.warmup} untimed)\n")
    print("| processes | sharding | tokens/s | s/step | speed-up | scaling efficiency | final loss | "
          "peak memory rank 0 (GiB) | weights held by rank 0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"| {r['processes']} | {r['sharding']} | {r['tokens_per_s']:.0f} | {r['seconds_per_step']:.3f} | "
              f"{speedup:.2f}x | {speedup / r['processes'] * base['processes']:.0%} | {r['final_loss']:.4f} | "
              f"{r['peak_memory_gib_rank0']:.2f} | {r['param_share']:.0%} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
