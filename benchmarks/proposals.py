"""A/B measurements, in one process, of proposed core speed-ups and of the existing optimisations (benchmark-only
patches; the core is not edited).

    python benchmarks/proposals.py --artifacts A --work W [--rounds 7] [--only sft,ppo] [--out R.json]
    python benchmarks/proposals.py --artifacts A --work W --group ablations [--rounds 7] [--out R.json]

Every variant gets its own model/trainer from the same checkpoint; each round runs every variant once, in an order
rotated from round to round (A B C, B C A, C A B, ...), so that load from other processes and position effects hit
all of them alike; the median over rounds is reported.

SFT (40 optimiser steps of the real SFT batches):
  fused-gelu     GPT-2's ``gelu_new`` (5 elementwise ops, each saved for backward) -> ``gelu_pytorch_tanh``
                 (F.gelu(approximate="tanh"), one kernel; same function, max difference ~5e-7)
  fused-adamw    torch.optim.AdamW(..., fused=True) (CPU fused kernel, torch >= 2.4) instead of the per-tensor loop
  target-logits  lm_head + cross-entropy only at the target positions (hidden states gathered first)
PPO (one iteration's phases on the same rollout):
  fused-gelu, fused-adamw as above (policy, reference and reward model)
  keep-logits    ``logits_to_keep`` = response width + 1 in the policy/value and reference forwards (no vocabulary
                 projection or log-softmax over prompt positions)
  no-extra-step  the sampler stops after drawing the last token (the core runs one more, unused, decode step)
  inverse-cdf    one uniform per row + searchsorted instead of torch.multinomial
Ablations (``--group ablations``; PPO phases, each switches ONE existing optimisation off):
  no-kv-cache    every decode step re-runs the whole prefix
  fixed-length   always max_new_tokens decode steps (no stop once every row has ended)
  separate-value the value from a second trunk (ppo.value_model=separate, initialised from the reward model)
                 instead of the value head on the policy's trunk read from the same forward
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_jsonl, set_threads  # noqa: E402

CODE = Path(os.environ.get("RLHF_BENCH_CODE", Path(__file__).resolve().parents[1]))


def fuse_gelu(*models) -> None:
    from transformers.activations import ACT2FN
    for model in models:
        for name, module in list(model.named_modules()):
            if type(module).__name__ == "NewGELUActivation":
                parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                setattr(parent, name.rsplit(".", 1)[-1], ACT2FN["gelu_pytorch_tanh"])


def fused_adamw(params, lr):
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, eps=1e-5, fused=True)


def rotate(names: list[str], k: int) -> list[str]:
    """Round k starts at variant k: no variant always runs first (or right after the same neighbour)."""
    k %= len(names)
    return names[k:] + names[:k]


def rounds_table(times: dict[str, list[float]]) -> dict:
    base = statistics.median(next(iter(times.values())))
    return {v: {"median_s": statistics.median(t), "min_s": min(t), "speedup": base / statistics.median(t),
                "runs": [round(x, 4) for x in t]} for v, t in times.items()}


# -- SFT ---------------------------------------------------------------------------------------------------------------
def bench_sft(a) -> dict:
    from rlhf.config import load_params
    from rlhf.data import pad_left
    from rlhf.modeling import load_causal_lm, load_tokenizer, position_ids_from_mask
    from rlhf.optim import clip_grad_norm, make_optimizer
    from rlhf.train_lm import Example, nll_sum, plan_batches

    p, art = load_params(CODE / "params.yaml"), Path(a.artifacts)
    ex = [Example(r["input_ids"], r["completion_mask"]) for r in read_jsonl(Path(a.work) / "sft.jsonl")]
    tok = load_tokenizer(art / "models" / "base")
    plan = plan_batches(len(ex), p.sft.train, 0)[:40]
    batches = [pad_left([ex[i].ids for i in idx], tok.pad_token_id, [ex[i].mask for i in idx]) for idx in plan]

    def nll_targets(model, ids, attn, lm):
        """As rlhf.train_lm.nll_sum, with the vocabulary projection only where a token is learned."""
        h = model.base_model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).last_hidden_state
        m = lm[:, 1:].bool()                                                       # (B, T-1)
        logits = model.get_output_embeddings()(h[:, :-1][m])                       # (N, V)
        return F.cross_entropy(logits, ids[:, 1:][m], reduction="sum"), float(m.sum())

    variants = ["default", "fused-gelu", "fused-adamw", "target-logits", "all three"]
    state = {}
    for v in variants:
        model = load_causal_lm(art / "models" / "base", tok).train()
        if v in ("fused-gelu", "all three"):
            fuse_gelu(model)
        opt = (fused_adamw(model.parameters(), 5e-4) if v in ("fused-adamw", "all three")
               else make_optimizer(model.parameters(), 5e-4))
        state[v] = (model, opt, nll_targets if v in ("target-logits", "all three") else nll_sum)
    times = {v: [] for v in variants}
    for rnd in range(-1, a.rounds):                      # round -1: untimed warm-up of every variant
        for v in rotate(variants, rnd):
            model, opt, loss_fn = state[v]
            t0 = time.perf_counter()
            for ids, attn, lm in batches:
                s, n = loss_fn(model, ids, attn, lm)
                (s / n).backward()
                clip_grad_norm(model, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if rnd >= 0:
                times[v].append(time.perf_counter() - t0)
    return {"steps_per_round": len(batches), "variants": rounds_table(times)}


# -- PPO ---------------------------------------------------------------------------------------------------------------
def bench_ppo(a) -> dict:
    import rlhf.ppo as P
    import rlhf.rollout as R
    import variants as V
    from rlhf.config import load_params
    from rlhf.data import load_jsonl
    from rlhf.modeling import load_tokenizer, position_ids_from_mask
    from rlhf.optim import make_scheduler
    from rlhf.stages.ppo import build_models

    p, art = load_params(CODE / "params.yaml"), Path(a.artifacts)
    cfg = dataclasses.replace(p.ppo, policy_path=str(art / "models" / "sft"), reward_path=str(art / "models" / "reward"),
                              prompts=str(art / "data" / "prompts_ppo.jsonl"), total_episodes=64 * 50)
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]

    def policy_forward_keep(policy, ids, attn, context_length, temperature):
        """rlhf.rollout.policy_forward with logits only for the positions that predict response tokens."""
        out = policy.lm(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                        output_hidden_states=True, logits_to_keep=ids.size(1) - context_length + 1)
        values = policy.value_head(out.hidden_states[-1]).squeeze(-1)        # (B, T)
        return out.logits[:, :-1] / temperature, values[:, context_length - 1:-1]

    def keep_ref_logits(ref_model, context_length_of):
        """Reference forward with logits_to_keep; the (B, T, V) tensor the core slices is rebuilt around the kept
        logits (a zero block for prompt positions: a lower bound of the gain)."""
        inner = ref_model.forward

        def forward(*args, **kw):
            ids = kw["input_ids"]
            keep = ids.size(1) - context_length_of() + 1
            out = inner(*args, logits_to_keep=keep, **kw)
            B, _, Vv = out.logits.shape
            out.logits = torch.cat([out.logits.new_zeros(B, ids.size(1) - keep, Vv), out.logits], 1)
            return out
        ref_model.forward = forward

    if a.group == "ablations":      # each switches ONE existing optimisation off
        variants = {"default": {}, "no-kv-cache": {"sampler": V.sample_no_cache},
                    "fixed-length": {"sampler": V.sample_fixed_length}, "separate-value": {"separate": True}}
    else:                           # each switches ONE proposed change on
        variants = {"default": {}, "fused-gelu": {"gelu": True}, "fused-adamw": {"adamw": True},
                    "keep-logits": {"keep": True}, "no-extra-step": {"sampler": V.sample_no_extra_step},
                    "inverse-cdf": {"sampler": V.sample_inverse_cdf},
                    "all": {"gelu": True, "adamw": True, "keep": True,
                            "sampler": V.make_sampler(draw=V.draw_inverse_cdf, extra_step=False)}}
    trainers, ctx = {}, {"len": 0}
    for name, opts in variants.items():
        vcfg = dataclasses.replace(cfg, value_model="separate") if opts.get("separate") else cfg
        models = build_models(vcfg, tok)
        if opts.get("gelu"):
            fuse_gelu(models.policy, models.ref_model, models.reward_model)
        tr = P.PPOTrainer(vcfg, models, tok, prompts)
        if opts.get("adamw"):
            tr.optimizer = fused_adamw(models.policy.parameters(), cfg.lr)
            tr.scheduler = make_scheduler(tr.optimizer, cfg.lr_schedule, tr.n_iterations * cfg.ppo_epochs * cfg.num_mini_batches)
        if opts.get("keep"):
            keep_ref_logits(models.ref_model, lambda: ctx["len"])
        trainers[name] = tr

    @contextlib.contextmanager
    def patched(opts):
        saved = (P.sample, P.policy_forward, R.policy_forward)
        if "sampler" in opts:
            P.sample = opts["sampler"]
        if opts.get("keep"):
            P.policy_forward = R.policy_forward = policy_forward_keep
        try:
            yield
        finally:
            P.sample, P.policy_forward, R.policy_forward = saved

    phases = {n: {"generation": [], "scoring": [], "optimization": []} for n in variants}
    widths = {n: [] for n in variants}
    for it in range(-1, a.rounds):                       # iteration -1 -> 0: untimed warm-up of every variant
        for name in rotate(list(variants), it):
            opts, tr = variants[name], trainers[name]
            with patched(opts):
                t0 = time.perf_counter()
                r = tr.rollout(max(it, 0))
                t1 = time.perf_counter()
                ctx["len"] = r.context_length
                exp = tr.experience(r)
                t2 = time.perf_counter()
                tr.optimize(exp, max(it, 0))
                t3 = time.perf_counter()
            if it < 0:
                continue
            widths[name].append(r.response_ids.size(1))
            for k, v in (("generation", t1 - t0), ("scoring", t2 - t1), ("optimization", t3 - t2)):
                phases[name][k].append(v)
    out = {}
    base = {k: statistics.median(v) for k, v in phases["default"].items()}
    for name, ph in phases.items():
        med = {k: statistics.median(v) for k, v in ph.items()}
        total = sum(med.values())
        best = {k: min(v) for k, v in ph.items()}      # the fastest round: least touched by other processes' load
        out[name] = {**{f"{k}_s": v for k, v in med.items()}, "iteration_s": total,
                     **{f"min_{k}_s": v for k, v in best.items()},
                     "min_speedup": {k: min(phases["default"][k]) / best[k] for k in best},
                     "decode_steps": statistics.mean(widths[name]),
                     "speedup": sum(base.values()) / total,
                     **{f"{k}_speedup": base[k] / med[k] for k in med}}
    return {"rounds": a.rounds, "variants": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="sft,ppo")
    ap.add_argument("--group", choices=["proposals", "ablations"], default="proposals",
                    help="proposals: proposed core changes (SFT and PPO); ablations: existing PPO optimisations off")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    res = {}
    if "sft" in a.only and a.group == "proposals":
        res["sft"] = bench_sft(a)
    if "ppo" in a.only:
        res["ppo"] = bench_ppo(a)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
