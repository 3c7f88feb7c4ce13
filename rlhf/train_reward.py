"""Reward-model training from rankings (seed, step 2).

Two objectives, chosen by ``reward.loss``:
- ``pairwise``: InstructGPT's Bradley-Terry loss over all K(K-1)/2 pairs of each ranking, -log sigmoid(r_w - r_l
  [- margin]). The K responses of a prompt sit in one batch so each is encoded once (InstructGPT section 3.5).
- ``elo``: the source's way: rankings -> Elo score per response -> regression of the scalar output onto it.
After training, the reward is normalised to mean 0, std 1 on reference-policy samples (lm-human-preferences
train_reward.py normalises the same way, before and after training); the gain is folded into the saved head and the
bias recorded in its config (rlhf/reward_format.py).
"""
from __future__ import annotations

from rlhf.chat import per_line, prompt_key

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from rlhf.accel import model_device, to_device
from rlhf.config import TrainConfig
from rlhf.data import encode_prompt, encode_response, pad_left
from rlhf.distributed import (SINGLE, DistContext, all_reduce_sum, backward_sum, check_batch, micro_batches,
                              micro_step)
from rlhf.finite import NonFiniteError
from rlhf.optim import optimizer_step, setup_training
from rlhf.sharding import param_share
from rlhf.reward_format import same_tokenizer
from rlhf.train_lm import plan_batches


@dataclass
class Group:
    """One ranked prompt: K token sequences (prompt + response [+ EOS]), their ranks (0 = best) and targets."""
    seqs: list[list[int]]
    ranks: list[int]
    targets: list[float]            # Elo scores (for the regression objective); zeros when unused


def response_ended(row: dict) -> list[bool]:
    """Whether each response of a rankings row ended with EOS (collect marks each candidate ``ended``).

    Looked up in ``meta.ended``, else in the first merged annotation's candidates (ingest keeps a Label Studio
    candidate's extra fields, in the order of the item's responses, under ``meta.annotations[0].meta.candidates``);
    default: every response ended. Without this, truncated responses would get an EOS they never had and the reward
    model could not learn the annotators' penalty for unfinished responses."""
    meta = row.get("meta") or {}
    n = len(row["responses"])
    if isinstance(meta.get("ended"), list) and len(meta["ended"]) == n:
        return [bool(e) for e in meta["ended"]]
    for ann in meta.get("annotations") or []:
        cands = ((ann or {}).get("meta") or {}).get("candidates")
        if isinstance(cands, list) and len(cands) == n and all(isinstance(c, dict) for c in cands):
            return [bool(c.get("ended", True)) for c in cands]
    return [True] * n


def encode_groups(tokenizer, rows: list[dict], max_length: int, elo: Optional[dict] = None,
                  where: str = "rankings") -> list[Group]:
    """Rankings rows {"prompt","responses","ranks","meta"} -> Groups. EOS is appended to responses that ended
    (``response_ended``), so the reward model sees exactly what the policy produced. A prompt the chat template
    refuses fails with one line naming ``where`` and the row's line."""
    def group(r: dict) -> Group:
        seqs = []
        for resp, e in zip(r["responses"], response_ended(r)):
            rid = encode_response(tokenizer, resp, add_eos=bool(e))[: max_length - 1]
            seqs.append(encode_prompt(tokenizer, r["prompt"], max_length - len(rid)) + rid)
        targets = [float((elo or {}).get((prompt_key(r["prompt"]), resp), 0.0)) for resp in r["responses"]]
        return Group(seqs, [int(x) for x in r["ranks"]], targets)
    return per_line(where, rows, group)


def pair_index(ranks: list[int], offset: int) -> list[tuple[int, int, float]]:
    """All (winner, loser, margin) index pairs of one ranking, offset into the flat batch; ties give no pair."""
    return [(offset + i, offset + j, float(ranks[j] - ranks[i]))
            for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]


def group_batch(groups: list[Group], pad_id: int):
    """Flatten groups into one left-padded batch; returns ids (N, T), mask (N, T), pairs (P, 3), targets (N,)."""
    seqs, pairs, targets = [], [], []
    for g in groups:
        pairs.extend(pair_index(g.ranks, len(seqs)))
        seqs.extend(g.seqs)
        targets.extend(g.targets)
    ids, attn = pad_left(seqs, pad_id)
    pairs_t = torch.tensor(pairs, dtype=torch.float).view(-1, 3)                 # (P, 3)
    return ids, attn, pairs_t, torch.tensor(targets)


def pairwise_terms(scores: torch.Tensor, pairs: torch.Tensor, use_margin: bool):
    """scores (N,), pairs (P, 3) -> (per-pair loss (P,), per-pair correct (P,))."""
    w, l, margin = pairs[:, 0].long(), pairs[:, 1].long(), pairs[:, 2]
    diff = scores[w] - scores[l]
    loss = -F.logsigmoid(diff - margin) if use_margin else -F.logsigmoid(diff)
    return loss, (diff > 0).float()


@torch.no_grad()
def pairwise_accuracy(model, groups: list[Group], pad_id: int, batch_groups: int = 16) -> float:
    """Share of ranked pairs the model orders like the annotators."""
    model.eval()
    dev = model_device(model)
    correct, total = 0.0, 0
    for i in range(0, len(groups), batch_groups):
        ids, attn, pairs, _ = to_device(dev, *group_batch(groups[i:i + batch_groups], pad_id))
        if len(pairs) == 0:
            continue
        _, ok = pairwise_terms(model.raw_scores(ids, attn), pairs, False)
        correct, total = correct + float(ok.sum()), total + len(ok)
    return correct / max(total, 1)


def train_reward_model(model, groups: list[Group], cfg: TrainConfig, pad_id: int, loss_type: str = "pairwise",
                       use_margin: bool = False, seed: int = 0, on_log: Optional[Callable[[int, dict], None]] = None,
                       state: Optional[dict] = None, on_step_end=None, dist: DistContext = SINGLE) -> dict:
    """Train the reward model in place; ``cfg.batch_size`` counts rankings (groups) per optimiser step.
    ``state``/``on_step_end`` as in train_causal_lm (checkpoint resume); under torch.distributed each rank encodes its
    share of the batch's rankings, the loss is divided by the batch's global pair (or sequence) count (times the
    world size, as DDP averages the gradients), so a step is the single-process one up to float summation order."""
    check_batch(cfg.batch_size, dist, "train.batch_size")
    plan = plan_batches(len(groups), cfg, seed)
    fwd, opt, sched, start = setup_training(model, cfg, len(plan), state, dist)   # fwd: DDP/FSDP's module
    micro = max(1, cfg.batch_size // (cfg.grad_accum * dist.world_size))
    dev = model_device(model)
    t0, n_pairs = time.perf_counter(), 0
    model.train()
    for step in range(start, len(plan)):
        idx = plan[step]
        total_pairs = sum(len(pair_index(groups[i].ranks, 0)) for i in idx)          # global counts, every rank
        denom = total_pairs if loss_type == "pairwise" else sum(len(groups[i].seqs) for i in idx)
        runs = micro_batches(idx, micro, dist)     # this rank's share; as many runs on every rank
        loss_sum, correct = 0.0, 0.0
        for j, (part, counts) in enumerate(runs):
            ids, attn, pairs, targets = to_device(dev, *group_batch([groups[i] for i in part], pad_id))
            with micro_step(fwd, last=j + 1 == len(runs)):      # DDP/FSDP reduce once per optimiser step
                scores = fwd(ids, attn, raw=True)                                   # (N,) raw_scores
                pl, ok = pairwise_terms(scores, pairs, use_margin) if len(pairs) else (scores[:0], scores[:0])
                loss = pl.sum() if loss_type == "pairwise" else ((scores - targets) ** 2).sum()
                backward_sum((loss if counts else loss * 0) / max(denom, 1), dist)   # the global batch's pairs
            if counts:
                loss_sum, correct = loss_sum + loss.item(), correct + float(ok.sum())
        if dist.enabled:
            loss_sum, correct = all_reduce_sum([loss_sum, correct], dist)
        grad_norm = optimizer_step(model, opt, sched, cfg.max_grad_norm, step + 1, dist)
        n_pairs += total_pairs
        if on_log and ((step + 1) % cfg.log_every == 0 or step + 1 == len(plan)):
            on_log(step + 1, {"loss/reward": loss_sum / max(denom, 1), "reward/accuracy": correct / max(total_pairs, 1),
                              "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0],
                              "perf/pairs_per_s": n_pairs / max(time.perf_counter() - t0, 1e-9)})
        if on_step_end:
            on_step_end(step + 1, {"model": model, "optimizer": opt, "scheduler": sched, "total": len(plan)})
    model.eval()
    elapsed = time.perf_counter() - t0
    metrics = {"steps": len(plan), "train_seconds": elapsed, "pairs_per_s": n_pairs / max(elapsed, 1e-9)}
    if dist.sharded:
        metrics["param_share"] = param_share(model)       # this rank's part of the weights: about 1 / world
    return metrics


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list, responses: list[str], ended: list[bool], max_length: int,
                batch_size: int = 64, normalized: bool = True) -> torch.Tensor:
    """Scores (N,) of prompt/response texts with ``model`` fed through ``tokenizer``, which must be the model's
    own: each prompt (text or chat messages) rendered as rlhf/chat.py renders it for that tokenizer (its chat
    template with the generation prompt, or the plain text), then the response and its end-of-turn id when it
    ended; at most ``max_length`` tokens (the prompt's beginning is cut first). A model loaded from a folder
    (``RewardModel.from_pretrained``) knows its tokenizer, and another tokenizer is refused, never silently used."""
    own = getattr(model, "tokenizer", None)
    if own is not None and not same_tokenizer(own, tokenizer):
        raise ValueError("score_texts: the tokenizer given is not the reward model's own (score with "
                         "rlhf.reward_scoring.RewardScorer, which re-encodes text for the reward model)")
    model.eval()
    dev = model_device(model)
    out = []
    for i in range(0, len(prompts), batch_size):
        seqs = []
        for p, r, e in zip(prompts[i:i + batch_size], responses[i:i + batch_size], ended[i:i + batch_size]):
            rid = encode_response(tokenizer, r, add_eos=e)[: max_length - 1]
            seqs.append(encode_prompt(tokenizer, p, max_length - len(rid)) + rid)
        ids, attn = to_device(dev, *pad_left(seqs, tokenizer.pad_token_id))
        out.append((model(ids, attn) if normalized else model.raw_scores(ids, attn)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def set_normalization(model, raw_scores: torch.Tensor) -> dict:
    """gain, bias such that gain * raw + bias has mean 0, std 1 on ``raw_scores`` (reference-policy samples); the
    statistics are kept on the model (``model.normalization``) for the saved config (rlhf/reward_format.py)."""
    if raw_scores.numel() < 2 or not bool(torch.isfinite(raw_scores).all()):
        raise NonFiniteError(f"reward normalisation needs at least 2 finite scores, got {raw_scores.tolist()[:4]}")
    mean, std = float(raw_scores.mean()), float(raw_scores.std())
    if std < 1e-4:                                     # identical scores: a gain of 1/std would be ~1e6
        raise NonFiniteError(f"reward normalisation: the reference samples all score {mean:.4g} (std {std:.2g}); "
                             "the reward model does not tell them apart")
    model.gain.fill_(1.0 / std)
    model.bias.fill_(-mean / std)
    model.normalization = {"raw_mean": mean, "raw_std": std, "samples": int(raw_scores.numel())}
    return {"norm/raw_mean": mean, "norm/raw_std": std, "norm/gain": 1.0 / std, "norm/bias": -mean / std}
