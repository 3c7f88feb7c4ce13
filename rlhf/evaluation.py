"""Measurement: one policy against another on the same held-out prompts, and a reward model against a judge.

The one home of every number that `evaluate` reports and the promotion gates read (win rate, score gain, KL to the
reference, EOS rate, diversity, reward-model pairwise accuracy): the `evaluate` stage and promotion both call
``compare_policies`` and ``reward_model_accuracy``, so the two cannot drift apart.

A *model* here is anything with ``.model`` (a causal LM, or a reward model for a scorer) and ``.tok`` (its
tokenizer): a ``Loaded`` pair, or a registry version's python model. A *judge* has
``score_many(prompts, responses, ended) -> list[float]`` (the demo's gold judge, rlhf/demo/judge.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from rlhf.accel import model_device, to_device
from rlhf.data import encode_prompt, encode_response, pad_left
from rlhf.generation import Rollout, logprobs_of, sample_responses
from rlhf.train_reward import score_texts



class Judge(Protocol):
    def score_many(self, prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> list[float]: ...


@dataclass(frozen=True)
class Loaded:
    """A model and its tokenizer, loaded."""
    model: Any
    tok: Any


@dataclass
class Samples:
    """One response per prompt: decoded text and whether it ended with EOS."""
    texts: list[str]
    ended: list[bool]


@dataclass
class PolicyComparison:
    """Challenger and baseline sampled on the same prompts with the same seed, and what was measured on both.
    Per-prompt lists; ``gold_*`` only with a judge, ``rm_*`` only with a scorer."""
    prompts: list[str]
    challenger: Samples
    baseline: Samples
    kl_challenger: torch.Tensor                        # (N,) nats per response, challenger vs reference
    kl_baseline: Optional[torch.Tensor]                # (N,) None when the baseline is the reference itself
    gold_challenger: Optional[list[float]] = None
    gold_baseline: Optional[list[float]] = None
    rm_challenger: Optional[list[float]] = None
    rm_baseline: Optional[list[float]] = None
    extra: dict = field(default_factory=dict)


def mean(xs: Sequence[float]) -> Optional[float]:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over the responses (word level)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """Share of prompts where a's score beats b's (ties count 1/2)."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)]
    return sum(wins) / max(len(wins), 1)


def pairwise_agreement(scores: Sequence[float], gold: Sequence[float], k: int,
                       tie_margin: float = 0.0) -> tuple[float, int]:
    """Share of pairs (within each consecutive group of k) that ``scores`` order like ``gold``; pairs whose gold
    scores differ by less than ``tie_margin`` (or are equal) count as ties and are skipped. Returns (acc, pairs)."""
    correct = total = 0
    for g in range(0, len(gold), k):
        for i in range(g, g + k):
            for j in range(i + 1, g + k):
                if abs(gold[i] - gold[j]) < max(tie_margin, 1e-9):
                    continue
                total += 1
                correct += (gold[i] > gold[j]) == (scores[i] > scores[j])
    return correct / max(total, 1), total


@torch.no_grad()
def sequence_logprob(model, tok, prompts, responses, ended, temperature: float, max_prompt_tokens: int,
                     batch_size: int = 64) -> torch.Tensor:
    """Summed log-prob (N,) of each response (its end id included when it ended) under ``model``, the prompt rendered
    and cut to ``max_prompt_tokens`` as when it was sampled."""
    out = []
    for i in range(0, len(prompts), batch_size):
        q = [encode_prompt(tok, p, max_prompt_tokens) for p in prompts[i:i + batch_size]]
        r = [encode_response(tok, t, add_eos=e) for t, e in zip(responses[i:i + batch_size], ended[i:i + batch_size])]
        q_ids, q_mask = pad_left(q, tok.pad_token_id)
        width = max(len(x) for x in r)
        r_ids = torch.full((len(r), width), tok.pad_token_id, dtype=torch.long)        # (B, R)
        r_mask = torch.zeros((len(r), width), dtype=torch.long)                         # (B, R)
        for j, x in enumerate(r):
            r_ids[j, :len(x)], r_mask[j, :len(x)] = torch.tensor(x), 1
        q_ids, q_mask, r_ids, r_mask = to_device(model_device(model), q_ids, q_mask, r_ids, r_mask)
        lp = logprobs_of(model, Rollout(q_ids, q_mask, r_ids, r_mask, torch.tensor(ended[i:i + batch_size])),
                         temperature)                                                   # (B, R)
        out.append((lp * r_mask).sum(1).cpu())
    return torch.cat(out)


def draw(policy, prompts: list[str], sampling, seed: int, on_progress: Callable | None = None) -> Samples:
    """One sampled response per prompt (``sampling``: max_new_tokens, temperature, batch_size)."""
    texts, ended = sample_responses(policy.model, policy.tok, prompts, sampling.max_new_tokens, sampling.temperature,
                                    sampling.batch_size, seed, sampling.max_prompt_tokens, on_progress=on_progress)
    return Samples(texts, ended)


def kl_to(policy, reference, prompts: list, samples: Samples, sampling) -> torch.Tensor:
    """(N,) log pi(y|x) - log ref(y|x) of the policy's own samples: a one-sample estimate of KL(pi || ref)."""
    t, q = sampling.temperature, sampling.max_prompt_tokens
    return (sequence_logprob(policy.model, policy.tok, prompts, samples.texts, samples.ended, t, q)
            - sequence_logprob(reference.model, reference.tok, prompts, samples.texts, samples.ended, t, q))


def rm_scores(scorer, prompts: list, samples: Samples, max_length: int) -> list[float]:
    """The reward model's (normalised) score of each response, reading at most ``max_length`` tokens."""
    return score_texts(scorer.model, scorer.tok, prompts, samples.texts, samples.ended, max_length).tolist()


def compare_policies(challenger, baseline, reference, prompts: list, sampling, seed: int,
                     judge: Judge | None = None, scorer=None, on_progress: Callable | None = None,
                     score_max_length: int = 64) -> PolicyComparison:
    """Challenger vs baseline on the same prompts and seed: samples, KL of each to the reference (the baseline's is
    skipped when it is the reference), the judge's scores and the reward model's scores of both."""
    ch = draw(challenger, prompts, sampling, seed, on_progress)
    base = draw(baseline, prompts, sampling, seed, on_progress)
    kl_base = None if baseline is reference else kl_to(baseline, reference, prompts, base, sampling)
    c = PolicyComparison(prompts, ch, base, kl_to(challenger, reference, prompts, ch, sampling), kl_base)
    if judge is not None:
        c.gold_challenger = judge.score_many(prompts, ch.texts, ch.ended)
        c.gold_baseline = judge.score_many(prompts, base.texts, base.ended)
    if scorer is not None:
        c.rm_challenger = rm_scores(scorer, prompts, ch, score_max_length)
        c.rm_baseline = rm_scores(scorer, prompts, base, score_max_length)
    return c


def reward_model_accuracy(scorers: dict[str, Any], reference, judge: Judge, prompts: list, k: int, sampling,
                          seed: int, tie_margin: float, on_progress: Callable | None = None,
                          score_max_length: int = 64) -> dict[str, dict]:
    """Held-out pairwise accuracy of each reward model (``scorers``: label -> model) against the judge, on ``k``
    reference-policy samples per prompt (the same pairs for every model). Returns label -> {accuracy, pairs,
    accuracy_all, pairs_all}; ``_all`` counts every pair whose judge scores differ at all."""
    rep = [p for p in prompts for _ in range(k)]
    samples = draw(reference, rep, sampling, seed, on_progress)
    gold = judge.score_many(rep, samples.texts, samples.ended)
    out = {}
    for label, rm in scorers.items():
        scores = rm_scores(rm, rep, samples, score_max_length)
        acc, pairs = pairwise_agreement(scores, gold, k, tie_margin)
        acc_all, pairs_all = pairwise_agreement(scores, gold, k)
        out[label] = {"accuracy": acc, "pairs": pairs, "accuracy_all": acc_all, "pairs_all": pairs_all}
    return out


def preference_accuracy(scorer, rows: list[dict], max_length: int) -> dict:
    """Pairwise accuracy of a reward model on held-out human rankings (rows {"prompt", "responses", "ranks"}, rank 0
    best; ties give no pair): the share of ranked pairs it scores in the annotators' order."""
    from rlhf.train_reward import response_ended
    correct = total = 0
    for r in rows:
        ended = response_ended(r)
        scores = rm_scores(scorer, [r["prompt"]] * len(r["responses"]), Samples(list(r["responses"]), ended),
                           max_length)
        ranks = r["ranks"]
        for i in range(len(ranks)):
            for j in range(len(ranks)):
                if ranks[i] < ranks[j]:
                    total += 1
                    correct += scores[i] > scores[j]
    return {"accuracy": correct / max(total, 1), "pairs": total}
