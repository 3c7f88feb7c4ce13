"""evaluate: SFT policy vs PPO policy on held-out prompts, judged by the gold judge (the noise-free preference
of the demo's annotators), plus the reward model's held-out pairwise accuracy against the gold judge."""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf import accel
from rlhf.accel import model_device, to_device
from rlhf.config import EvaluateConfig
from rlhf.data import encode_prompt, encode_response, load_jsonl, pad_left, write_jsonl
from rlhf.demo.judge import GoldJudge
from rlhf.generation import Rollout, logprobs_of, sample_responses
from rlhf.modeling import RewardModel, load_causal_lm, load_tokenizer
from rlhf.reward import score_texts
from rlhf.stages.common import StageResult, seed_everything

RM_PAIRS_K = 4


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over the responses (word level)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


@torch.no_grad()
def sequence_logprob(model, tok, prompts, responses, ended, temperature: float, batch_size: int = 64) -> torch.Tensor:
    """Summed log-prob (N,) of each response (EOS included when it ended) under ``model``."""
    out = []
    for i in range(0, len(prompts), batch_size):
        q = [encode_prompt(tok, p, 32) for p in prompts[i:i + batch_size]]
        r = [encode_response(tok, t, add_eos=e) for t, e in zip(responses[i:i + batch_size], ended[i:i + batch_size])]
        q_ids, q_mask = pad_left(q, tok.pad_token_id)
        width = max(len(x) for x in r)
        r_ids = torch.full((len(r), width), tok.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros((len(r), width), dtype=torch.long)
        for j, x in enumerate(r):
            r_ids[j, :len(x)], r_mask[j, :len(x)] = torch.tensor(x), 1
        q_ids, q_mask, r_ids, r_mask = to_device(model_device(model), q_ids, q_mask, r_ids, r_mask)
        lp = logprobs_of(model, Rollout(q_ids, q_mask, r_ids, r_mask, torch.tensor(ended[i:i + batch_size])),
                         temperature)
        out.append((lp * r_mask).sum(1).cpu())
    return torch.cat(out)


def win_rate(scores_a: list[float], scores_b: list[float]) -> float:
    """Share of prompts where a's score beats b's (ties count 1/2)."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)]
    return sum(wins) / max(len(wins), 1)


def pairwise_agreement(scores: list[float], gold: list[float], k: int, tie_margin: float = 0.0) -> tuple[float, int]:
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


def run(cfg: EvaluateConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)][: cfg.max_prompts]
    judge = GoldJudge.from_corpus(cfg.corpus)
    tok = load_tokenizer(cfg.sft_path)
    device = accel.resolve_device(cfg.compute.device, key="evaluate.compute.device")
    sft, policy = (accel.prepare(load_causal_lm(p, tok).eval(), device, cfg.compute, trainable=False)
                   for p in (cfg.sft_path, cfg.policy_path))
    s = cfg.sampling
    done = [0]

    def progress(n: int, total: int) -> None:       # three sampling passes: SFT, policy, K per prompt for the RM
        if on_log and n == total:
            done[0] += 1
            on_log(done[0], {"progress/sampling_passes": done[0]})
    sft_txt, sft_end = sample_responses(sft, tok, prompts, s.max_new_tokens, s.temperature, s.batch_size, cfg.seed,
                                        on_progress=progress)
    pol_txt, pol_end = sample_responses(policy, tok, prompts, s.max_new_tokens, s.temperature, s.batch_size, cfg.seed,
                                        on_progress=progress)
    gold_sft, gold_pol = judge.score_many(prompts, sft_txt, sft_end), judge.score_many(prompts, pol_txt, pol_end)
    kl = (sequence_logprob(policy, tok, prompts, pol_txt, pol_end, s.temperature)
          - sequence_logprob(sft, tok, prompts, pol_txt, pol_end, s.temperature))
    reward = RewardModel.from_pretrained(cfg.reward_path).eval()
    accel.prepare(reward, device, cfg.compute, trainable=False, hf=reward.trunk)
    rep = [p for p in prompts for _ in range(RM_PAIRS_K)]
    k_txt, k_end = sample_responses(sft, tok, rep, s.max_new_tokens, s.temperature, s.batch_size, cfg.seed + 1,
                                    on_progress=progress)
    k_scores = score_texts(reward, tok, rep, k_txt, k_end, 64).tolist()
    k_gold = judge.score_many(rep, k_txt, k_end)
    acc, n_pairs = pairwise_agreement(k_scores, k_gold, RM_PAIRS_K, cfg.gold_tie_margin)
    acc_all, n_all = pairwise_agreement(k_scores, k_gold, RM_PAIRS_K)
    rm_sft = score_texts(reward, tok, prompts, sft_txt, sft_end, 64).tolist()
    rm_pol = score_texts(reward, tok, prompts, pol_txt, pol_end, 64).tolist()
    n = max(len(prompts), 1)
    metrics = {
        "gold_score_sft": sum(gold_sft) / n, "gold_score_policy": sum(gold_pol) / n, "win_rate_vs_sft": win_rate(gold_pol, gold_sft),
        "kl_to_ref": float(kl.mean()), "reward_model_accuracy": acc, "reward_model_pairs": n_pairs,
        "reward_model_accuracy_all": acc_all, "reward_model_pairs_all": n_all,
        "rm_score_sft": sum(rm_sft) / n, "rm_score_policy": sum(rm_pol) / n,
        "eos_rate_sft": sum(sft_end) / n, "eos_rate_policy": sum(pol_end) / n,
        "distinct2_sft": distinct_n(sft_txt), "distinct2_policy": distinct_n(pol_txt), "n_prompts": len(prompts)}
    rows = [{"prompt": p, "sft": a, "policy": b, "gold_sft": ga, "gold_policy": gb, "rm_sft": ra, "rm_policy": rb}
            for p, a, b, ga, gb, ra, rb in zip(prompts, sft_txt, pol_txt, gold_sft, gold_pol, rm_sft, rm_pol)]
    write_jsonl(Path(cfg.out_dir) / "samples.jsonl", rows)
    return StageResult(metrics, outputs={"samples": str(Path(cfg.out_dir) / "samples.jsonl")})
