"""The over-optimisation probe of PPO: Gao et al. 2022, "Scaling laws for reward model overoptimization".

Optimising a learned reward model (the *proxy*) raises the proxy's score without end, while the score of what it
stands for (the *gold* judge) rises, peaks and falls as the policy drifts from the reference; both are read against
the KL to the reference (their Fig. 1). Every ``ppo.probe.every`` iterations the PPO stage asks this module for one
row: the policy answers a fixed set of held-out prompts with a fixed sampling seed (the same draws every time, so the
rows differ by the policy only), and the answers are scored by the proxy and by the judge (rlhf/judges.py), with the
KL of each answer to the reference, the distinct-2 of the answers and their EOS rate. The numbers come from
rlhf/evaluation.py, the functions the evaluate stage uses.

The probe changes nothing in training: its modules run in eval mode under ``torch.no_grad()`` and get back the mode
each of their submodules had; sampling has its own ``torch.Generator``; and the global torch and Python random
states are restored afterwards, so a judge of the user's that draws random numbers cannot shift PPO either.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from rlhf.evaluation import Judge, Loaded, distinct_n, draw, kl_to, mean, rm_scores

KEYS = ("probe/kl", "probe/proxy", "probe/judge", "probe/distinct2", "probe/eos_rate", "probe/n_prompts")


@contextmanager
def evaluating(*modules: torch.nn.Module | None) -> Iterator[None]:
    """``modules`` in eval mode under no_grad; on exit every submodule gets back its own ``training`` flag."""
    modes = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    try:
        for module in modules:
            if module is not None:
                module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """The global torch (CPU, and every initialised CUDA device) and Python random states as they were on entry."""
    py_state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)


def probe(policy_lm, reference, tok, scorer, judge: Judge, prompts: Sequence, sampling, seed: int,
          score_max_length: int) -> dict[str, float]:
    """One row of the over-optimisation curve (keys: ``KEYS``).

    policy_lm: the policy's causal LM; reference: the frozen reference LM (same tokenizer ``tok``); scorer: the
    reward model PPO optimises (a RewardScorer: ``.model``, ``.tok``); judge: ``score_many(prompts, texts, ended)``;
    sampling: a SamplingConfig (the policy's own, so the probe sees it as PPO samples it); seed: the probe's
    sampling seed. ``probe/kl`` is the mean over prompts of log pi(y|x) - log ref(y|x) of the policy's own samples
    (nats per response, the k1 estimate of ``objective/kl``); ``probe/proxy`` and ``probe/judge`` are mean scores."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the probe needs at least one prompt")
    with global_rng_kept(), evaluating(policy_lm, reference, scorer):
        policy, ref = Loaded(policy_lm, tok), Loaded(reference, tok)
        samples = draw(policy, prompts, sampling, seed)
        kl = kl_to(policy, ref, prompts, samples, sampling)                           # (N,)
        proxy = rm_scores(scorer, prompts, samples, score_max_length)
        judged = judge.score_many(prompts, samples.texts, samples.ended)
    n = len(prompts)
    return {"probe/kl": float(kl.mean()), "probe/proxy": float(mean(proxy)), "probe/judge": float(mean(judged)),
            "probe/distinct2": distinct_n(samples.texts, 2), "probe/eos_rate": sum(samples.ended) / n,
            "probe/n_prompts": float(n)}


def due(iteration: int, every: int, n_iterations: int) -> bool:
    """Whether the probe runs after ``iteration`` (0 = before the first): every ``every`` iterations, and at both
    ends so the curve starts at the reference and ends at the trained policy; never with ``every`` 0."""
    return every > 0 and (iteration % every == 0 or iteration == n_iterations)
