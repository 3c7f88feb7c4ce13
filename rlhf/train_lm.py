"""Next-token training for pretraining and SFT (seed, step 1).

Examples are (token ids, loss mask) pairs: pretraining packs corpus texts (EOS between them) into fixed blocks and
learns every token; SFT learns only the response tokens and the EOS appended to them (the prompt is masked).
The batch order for the whole run is drawn up front from the seed, so a run resumed at step s sees exactly the
batches an uninterrupted run would. Data-parallel (accelerate, rlhf/distributed.py), every rank draws the same plan and
takes its share of each batch; the loss is normalised by the batch's GLOBAL target count (times the world size, as
DDP averages), so an optimiser step is the single-process one up to float summation order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from rlhf.accel import model_device, to_device
from rlhf.chat import as_messages, assistant_mask, per_line
from rlhf.config import TrainConfig
from rlhf.data import batches, encode_prompt, encode_response, pad_left
from rlhf.distributed import (SINGLE, DistContext, all_reduce_sum, backward_sum, check_batch, micro_batches,
                              micro_step, shard)
from rlhf.modeling import position_ids_from_mask
from rlhf.optim import optimizer_step, setup_training
from rlhf.sharding import param_share

LogFn = Callable[[int, dict], None]


@dataclass
class Example:
    ids: list[int]
    mask: list[int]   # 1 where the token is a training target


def pack_corpus(tokenizer, texts: list[str], block: int) -> list[Example]:
    """Concatenate texts with EOS after each and cut the stream into blocks of ``block`` tokens (all targets)."""
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return [Example(stream[i:i + block], [1] * len(stream[i:i + block]))
            for i in range(0, len(stream) - 1, block) if len(stream[i:i + block]) > 1]


def sft_examples(tokenizer, rows: list[dict], max_length: int, where: str = "sft data") -> list[Example]:
    """One example per demonstration, the loss on the response only (TRL's completion-only loss):

    * ``{"messages": [...]}``: the whole conversation through the chat template, mask 1 on every assistant turn up
      to and including its end-of-turn id (rlhf/chat.py ``assistant_mask``); the rest is cut past ``max_length``;
    * ``{"prompt": text or messages, "completion": text or [one assistant message]}``: the rendered prompt (mask 0,
      cut on the left to fit) + the response and its end id (mask 1).

    A row the chat template refuses fails with one line naming ``where`` and the row's line."""
    return per_line(where, rows, lambda r: _sft_example(tokenizer, r, max_length))


def _sft_example(tokenizer, r: dict, max_length: int) -> Example:
    if "messages" in r:
        return Example(*assistant_mask(tokenizer, r["messages"], max_length))
    completion = r["completion"]
    if not isinstance(completion, str):                 # TRL conversational prompt-completion
        completion = "".join(m["content"] for m in as_messages(completion) if m["role"] == "assistant")
    resp = encode_response(tokenizer, completion)[: max_length - 1]
    prompt = encode_prompt(tokenizer, r["prompt"], max_length - len(resp))
    return Example(prompt + resp, [0] * len(prompt) + [1] * len(resp))


def pack_sft(examples: list[Example], block: int) -> list[Example]:
    """Optional SFT packing: greedily concatenate whole examples into blocks of at most ``block`` tokens."""
    packed, ids, mask = [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex.ids) > block:
            packed.append(Example(ids, mask))
            ids, mask = [], []
        ids, mask = ids + ex.ids, mask + ex.mask
    if ids:
        packed.append(Example(ids, mask))
    return packed


def nll_sum(model, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Summed next-token NLL over target tokens and their count. ids/attn/loss_mask (B, T)."""
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    targets_mask = loss_mask[:, 1:]                                                      # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),                   # (B*(T-1), V)
                          ids[:, 1:].reshape(-1), reduction="none").view_as(targets_mask)
    return (nll * targets_mask).sum(), float(targets_mask.sum())


@torch.no_grad()
def evaluate_nll(model, examples: list[Example], pad_id: int, batch_size: int = 64,
                 dist: DistContext = SINGLE) -> float:
    """Mean per-token NLL on ``examples`` (each rank scores its share of the batches; the sums are all-reduced)."""
    model.eval()
    dev = model_device(model)
    total, count = 0.0, 0.0
    every = batches(len(examples), batch_size, shuffle=False)
    for idx in (every if dist.sharded else shard(every, dist)):    # FSDP: every rank makes every forward
        ids, attn, lm = to_device(dev, *pad_left([examples[i].ids for i in idx], pad_id, [examples[i].mask for i in idx]))
        s, n = nll_sum(model, ids, attn, lm)
        total, count = total + float(s), count + n
    if not dist.sharded:
        total, count = all_reduce_sum([total, count], dist)
    return total / max(count, 1.0)


def plan_batches(n: int, cfg: TrainConfig, seed: int) -> list[list[int]]:
    """Every optimiser step's example indices for the whole run (fractional epochs allowed)."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, int(round(steps_per_epoch * cfg.epochs)))
    plan: list[list[int]] = []
    while len(plan) < total:
        plan.extend(batches(n, cfg.batch_size, gen))
    return plan[:total]


def train_causal_lm(model, examples: list[Example], cfg: TrainConfig, pad_id: int, seed: int = 0,
                    val_examples: Optional[list[Example]] = None, on_log: Optional[LogFn] = None,
                    state: Optional[dict] = None, on_step_end: Optional[Callable[[int, dict], None]] = None,
                    dist: DistContext = SINGLE) -> dict:
    """Train ``model`` in place. ``state`` (from a checkpoint) holds optimizer/scheduler state and the step to
    resume from; ``on_step_end(step, live)`` lets the caller checkpoint (``live``: optimizer, scheduler and the
    total number of steps). ``dist``: this process's rank in a data-parallel group. Returns final metrics."""
    if not examples:
        raise ValueError("no training examples")
    check_batch(cfg.batch_size, dist, "train.batch_size")
    plan = plan_batches(len(examples), cfg, seed)
    fwd, opt, sched, start = setup_training(model, cfg, len(plan), state, dist)   # fwd: DDP/FSDP's module
    micro = max(1, cfg.batch_size // (cfg.grad_accum * dist.world_size))
    dev = model_device(model)
    t0, tokens, last_loss = time.perf_counter(), 0, float("nan")
    model.train()
    for step in range(start, len(plan)):
        idx = plan[step]
        n_targets = sum(sum(examples[i].mask[1:]) for i in idx)   # the whole batch's count, on every rank
        runs = micro_batches(idx, micro, dist)     # this rank's share; as many runs on every rank
        loss_total, step_tokens = 0.0, 0
        for j, (part, counts) in enumerate(runs):
            ids, attn, lm = to_device(dev, *pad_left([examples[i].ids for i in part], pad_id,
                                                     [examples[i].mask for i in part]))
            with micro_step(fwd, last=j + 1 == len(runs)):      # DDP/FSDP reduce once per optimiser step
                s, _ = nll_sum(fwd, ids, attn, lm)
                backward_sum((s if counts else s * 0) / max(n_targets, 1), dist)   # token mean, whole batch
            if counts:
                loss_total += s.item()
                step_tokens += int(attn.sum())
        if dist.enabled:    # the step's sums over ranks (not the running total: that would count it again)
            loss_total, step_tokens = all_reduce_sum([loss_total, step_tokens], dist)
        tokens += int(step_tokens)
        grad_norm = optimizer_step(model, opt, sched, cfg.max_grad_norm, step + 1, dist)
        last_loss = loss_total / max(n_targets, 1)
        if on_log and ((step + 1) % cfg.log_every == 0 or step + 1 == len(plan)):
            dt = time.perf_counter() - t0
            on_log(step + 1, {"loss/train": last_loss, "train/grad_norm": grad_norm,
                              "train/lr": sched.get_last_lr()[0], "perf/tokens_per_s": tokens / max(dt, 1e-9)})
        if on_step_end:
            on_step_end(step + 1, {"model": model, "optimizer": opt, "scheduler": sched, "total": len(plan)})
    model.eval()
    elapsed = time.perf_counter() - t0
    metrics = {"train_loss": last_loss, "steps": len(plan), "tokens_per_s": tokens / max(elapsed, 1e-9),
               "train_seconds": elapsed}
    if dist.sharded:
        metrics["param_share"] = param_share(model)       # this rank's part of the weights: about 1 / world
    if val_examples:
        val = evaluate_nll(model, val_examples, pad_id, dist=dist)
        metrics.update({"val_loss": val, "val_perplexity": math.exp(min(val, 50.0))})
    return metrics
