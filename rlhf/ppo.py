"""PPO fine-tuning of the policy against the reward model with a KL penalty to a frozen reference (seed, step 3).

One iteration reads like the algorithm:
    rollout (sample) -> score (policy/values, reference, reward) -> shape rewards (KL penalty) -> advantages (GAE)
    -> ppo_epochs of shuffled mini-batch updates -> KL-controller update.
Every random draw of iteration i comes from generators seeded with (seed, i), so a run resumed from a checkpoint
at iteration i repeats exactly what an uninterrupted run does.

Data-parallel (rlhf/distributed.py): rank r rolls out prompts r, r + world, ... of the iteration's batch with its own
seed (seed + r), scores and whitens its rows, and shuffles its own mini-batches; gradients are averaged across ranks
after each mini-batch (as DDP) and the logged statistics averaged, so the KL controller sees the global batch and
every rank applies the same update. Rank 0 with one process is the single-process run, unchanged.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from rlhf.accel import model_device, to_device
from rlhf.chat import end_ids
from rlhf.finite import require_finite
from rlhf.config import PPOConfig
from rlhf.distributed import (SINGLE, DistContext, all_reduce_mean, backward, clip_grad_norm, data_parallel, micro_step,
                              shard)
from rlhf.generation import encode_prompts, gather_logprobs, lm_response_logits, sample
from rlhf.kl import AdaptiveKLController, FixedKLController
from rlhf.logprobs import entropy_from_logits
from rlhf.losses import ppo_policy_loss, ppo_value_loss
from rlhf.masking import masked_mean
from rlhf.optim import make_optimizer, make_scheduler
from rlhf.rollout import Experience, experience_stats, make_experience, micro_batch, policy_forward



def iteration_generator(seed: int, iteration: int, stream: int) -> torch.Generator:
    """Independent, reproducible random stream per (seed, iteration, purpose)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration * 7919 + stream)


def prompt_schedule(n_prompts: int, batch_size: int, n_iterations: int, seed: int) -> list[list[int]]:
    """Prompt indices for every iteration: shuffled passes over the prompt set, cut into rollout batches."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < batch_size * n_iterations:
        order.extend(torch.randperm(n_prompts, generator=gen).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n_iterations)]


@dataclass
class PPOModels:
    policy: torch.nn.Module          # PolicyWithValueHead (trainable)
    ref_model: torch.nn.Module       # frozen causal LM
    reward_model: torch.nn.Module    # RewardScorer or a RewardModel sharing the policy's tokenizer (frozen)
    value_model: Optional[torch.nn.Module] = None   # separate critic (optional, trainable)


class PPOTrainer:
    def __init__(self, cfg: PPOConfig, models: PPOModels, tokenizer, prompts: list[str],
                 on_log: Optional[Callable[[int, dict], None]] = None, dist: DistContext = SINGLE):
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        per_rank = cfg.num_mini_batches * cfg.grad_accum * dist.world_size
        if cfg.rollout_batch_size % per_rank:
            raise ValueError(f"ppo.rollout_batch_size ({cfg.rollout_batch_size}) must be divisible by num_mini_batches "
                             f"x grad_accum x world size ({per_rank}) to split evenly over {dist.world_size} processes")
        self.cfg, self.models, self.tok, self.prompts, self.on_log = cfg, models, tokenizer, prompts, on_log
        self.dist = dist
        # What the training forward and backward go through (accelerate's DDP under several processes; the modules
        # themselves on one): the whole policy with its value head, or the language model and the separate critic.
        # Sampling and scoring use the modules directly (no gradients).
        if models.value_model is None:
            self.trained = {"policy": data_parallel(models.policy, dist)}
        else:
            self.trained = {"lm": data_parallel(models.policy.lm, dist), "value": data_parallel(models.value_model, dist)}
        self.n_iterations = cfg.total_episodes // cfg.rollout_batch_size
        self.schedule = prompt_schedule(len(prompts), cfg.rollout_batch_size, self.n_iterations, cfg.seed)
        params = list(models.policy.parameters()) + (list(models.value_model.parameters()) if models.value_model else [])
        self.optimizer = make_optimizer(params, cfg.lr)
        n_updates = self.n_iterations * cfg.ppo_epochs * cfg.num_mini_batches
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_schedule, n_updates)
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self.iteration = 0
        for p in list(models.ref_model.parameters()) + list(models.reward_model.parameters()):
            p.requires_grad_(False)

    # -- checkpoint state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    # -- phases -----------------------------------------------------------------------------------------------------
    def batch_prompts(self, iteration: int) -> list:
        """This rank's prompts of an iteration (text or chat messages)."""
        return [self.prompts[i] for i in shard(self.schedule[iteration], self.dist)]

    def rollout(self, iteration: int):
        prompts = self.batch_prompts(iteration)
        q_ids, q_mask = to_device(model_device(self.models.policy), *encode_prompts(self.tok, prompts,
                                                                              self.cfg.sampling.max_prompt_tokens))
        # fp32: the behaviour log-probs (and the shared head's hidden states) come from the sampler's own logits, as
        # exact as a second forward (1e-6) without its cost. bf16 rounds the KV-cache steps and a full forward
        # differently, so there they are recomputed by one forward like every later log-prob (ratio exactly 1 at
        # the first update).
        record = self.cfg.compute.precision == "fp32"
        return sample(self.models.policy.lm, q_ids, q_mask, self.cfg.sampling.max_new_tokens, self.cfg.sampling.temperature,
                      end_ids(self.tok), self.tok.pad_token_id,
                      iteration_generator(self.dist.seed(self.cfg.seed), iteration, 1),
                      record=record, hidden=record and self.models.value_model is None)

    def experience(self, rollout, iteration: Optional[int] = None) -> Experience:
        """Score the rollout of ``iteration`` (default: the current one; its prompts reach a reward model that
        re-encodes text, rlhf/reward_scoring.py)."""
        c = self.cfg
        prompts = self.batch_prompts(self.iteration if iteration is None else iteration)
        return make_experience(self.models.policy, self.models.ref_model, self.models.reward_model, rollout,
                               temperature=c.sampling.temperature, kl_coef=self.kl_ctl.value, kl_estimator=c.kl_estimator,
                               gamma=c.gamma, lam=c.lam, missing_eos_penalty=c.missing_eos_penalty,
                               whiten=c.whiten_advantages, pad_id=self.tok.pad_token_id, value_model=self.models.value_model,
                               prompts=prompts)

    def _minibatch_loss(self, exp: Experience, idx: torch.Tensor, train_value: bool = True) -> tuple[torch.Tensor, dict]:
        """Loss on rows ``idx`` of the experience: policy loss + vf_coef * value loss (``train_value`` False: the
        policy loss alone), and its statistics. The training loop backpropagates the pieces one at a time instead
        (``_minibatch_losses``)."""
        stats: dict[str, float] = {}
        return sum(self._minibatch_losses(exp, idx, stats, train_value)), stats

    def _minibatch_losses(self, exp: Experience, idx: torch.Tensor, stats: dict,
                          train_value: bool = True) -> Iterator[torch.Tensor]:
        """The loss on rows ``idx`` in pieces that sum to policy loss + vf_coef * value loss, each to be
        backpropagated before the next is computed; ``stats`` gets the statistics. The shared trunk is one piece
        (one forward gives both). A separate critic is a second piece, run after the policy's backward, so only one
        trunk's activations are alive at a time: the same gradients as one backward of the sum (the two models share
        no parameter), about half the activation memory of computing both first (TRL's PolicyAndValueWrapper does;
        OpenRLHF updates actor and critic apart). ``train_value`` False: the policy loss alone (the advantages were
        fixed when the rollout was scored), and a separate critic is not run."""
        c = self.cfg
        mb = micro_batch(exp, idx)                                           # (b, T'), its columns trimmed
        ids, attn, ctx = mb.ids, mb.attn, mb.context_length
        shared = self.models.value_model is None
        if shared:                                                           # shared trunk: one forward, both
            logits, values = policy_forward(self.trained["policy"], ids, attn, ctx, c.sampling.temperature)
        else:                                                                # separate critic: the language model alone
            logits = lm_response_logits(self.trained["lm"], ids, attn, ctx, c.sampling.temperature)
        pg_loss = self._policy_loss(logits, mb, stats)
        if not train_value:
            yield pg_loss
            return
        if shared:
            yield pg_loss + c.vf_coef * self._value_loss(values, mb, stats)
            return
        yield pg_loss
        del logits, pg_loss
        values = self.trained["value"](ids, attn)[:, ctx - 1:-1]
        yield c.vf_coef * self._value_loss(values, mb, stats)

    def _policy_loss(self, logits: torch.Tensor, mb, stats: dict) -> torch.Tensor:
        c = self.cfg
        mask = mb.mask
        logprobs = gather_logprobs(logits, mb.response_ids)                  # (b, R')
        pg_loss, clipfrac, approxkl = ppo_policy_loss(logprobs, mb.old_logprobs, mb.advantages, mask, c.cliprange)
        with torch.set_grad_enabled(c.entropy_coef > 0):
            entropy = masked_mean(entropy_from_logits(logits), mask)
        if c.entropy_coef > 0:             # entropy bonus (OpenRLHF's entropy_loss_coef): keeps sampling diverse
            pg_loss = pg_loss - c.entropy_coef * entropy
        entropy = entropy.detach()
        with torch.no_grad():
            ratio = masked_mean(torch.exp(logprobs - mb.old_logprobs), mask)
        stats.update({"loss/policy": pg_loss.item(), "policy/clipfrac": clipfrac.item(),
                      "policy/approxkl": approxkl.item(), "policy/entropy": entropy.item(), "val/ratio": ratio.item()})
        return pg_loss

    def _value_loss(self, values: torch.Tensor, mb, stats: dict) -> torch.Tensor:
        vf_loss, vf_clipfrac = ppo_value_loss(values, mb.old_values, mb.returns, mb.mask, self.cfg.cliprange_value)
        stats.update({"loss/value": vf_loss.item(), "val/clipfrac": vf_clipfrac.item()})
        return vf_loss

    def optimize(self, exp: Experience, iteration: int) -> dict[str, float]:
        """ppo_epochs passes of shuffled mini-batches (gradient accumulation within a mini-batch)."""
        c = self.cfg
        B = exp.mask.size(0)
        mb = B // c.num_mini_batches
        micro = mb // c.grad_accum
        gen = iteration_generator(self.dist.seed(c.seed), iteration, 2)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms = []
        value_epochs = c.value_epochs or c.ppo_epochs
        trained = [self.models.policy] + ([self.models.value_model] if self.models.value_model is not None else [])
        for module in trained:
            module.train()
        for epoch in range(c.ppo_epochs):
            perm = torch.randperm(B, generator=gen).to(exp.mask.device)
            for start in range(0, B, mb):
                for m0 in range(start, start + mb, micro):
                    with contextlib.ExitStack() as stack:        # DDP reduces (averages) once per mini-batch
                        for module in self.trained.values():
                            stack.enter_context(micro_step(module, last=m0 + micro >= start + mb))
                        stats: dict[str, float] = {}
                        for loss in self._minibatch_losses(exp, perm[m0:m0 + micro], stats,
                                                           train_value=epoch < value_epochs):
                            backward(loss / c.grad_accum, self.dist)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                grad_norms.append(require_finite(clip_grad_norm(params, c.max_grad_norm, self.dist),
                                                 f"the gradient norm at PPO iteration {iteration + 1}"))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        for module in trained:
            module.eval()
        out = {f"{k}_avg": v / counts[k] for k, v in sums.items()}
        out["train/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        return out

    # -- loop -------------------------------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One PPO iteration; returns its metrics."""
        it = self.iteration
        t0 = time.perf_counter()
        rollout = self.rollout(it)
        t1 = time.perf_counter()
        exp = self.experience(rollout, it)
        t2 = time.perf_counter()
        kl_coef = self.kl_ctl.value
        stats = experience_stats(exp, kl_coef)
        for key in ("objective/scores", "objective/kl"):     # a NaN score or KL would poison every later update
            require_finite(stats[key], f"{key} at PPO iteration {it + 1}")
        stats.update(self.optimize(exp, it))
        stats = all_reduce_mean(stats, self.dist)                    # global-batch statistics on every rank
        t3 = time.perf_counter()
        self.kl_ctl.update(stats["objective/kl"], self.cfg.rollout_batch_size)
        self.iteration = it + 1
        n_tokens = float(exp.mask.sum())
        stats.update({"train/lr": self.scheduler.get_last_lr()[0], "episodes": self.iteration * self.cfg.rollout_batch_size,
                      "time/generation": t1 - t0, "time/scoring": t2 - t1, "time/optimization": t3 - t2,
                      "perf/rollout_tokens_per_s": n_tokens / max(t1 - t0, 1e-9),
                      "perf/episodes_per_s": self.cfg.rollout_batch_size / max(t3 - t0, 1e-9)})
        return stats

    def train(self, on_iteration_end: Optional[Callable[[int], None]] = None) -> dict[str, float]:
        """Run the remaining iterations; returns the last iteration's metrics."""
        last: dict[str, float] = {}
        while self.iteration < self.n_iterations:
            last = self.step()
            if self.on_log and (self.iteration % self.cfg.log_every == 0 or self.iteration == self.n_iterations):
                self.on_log(self.iteration, last)
            if on_iteration_end:
                on_iteration_end(self.iteration)
        return last

