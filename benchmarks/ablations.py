"""What each optimisation of the core buys: in-process A/B measurements where every variant switches exactly ONE
optimisation OFF relative to the core as it is (``default``). Benchmark-only patches; the core is not edited.

    python benchmarks/ablations.py --artifacts A --work W [--rounds 7] [--only sft,ppo] [--threads 2] [--out R.json]

(W holds ``sft.jsonl`` from ``ours.py prepare``.) Every variant gets its own model/trainer from the same checkpoint;
each round runs every variant once, in an order rotated from round to round (A B C, B C A, C A B, ...), so that load
from other processes and position effects hit all of them alike; an untimed warm-up round comes first; the median
over rounds is reported. Ratios are ``speedup`` = variant time / default time: how much slower the work gets with that
optimisation off, i.e. what the optimisation buys (> 1: it helps).

Before measuring, ``variants.self_test`` checks on the SFT policy that the benchmark's re-expression of the sampler
with nothing switched off reproduces the core's ``rlhf.generation.sample`` token for token (it is the baseline of the
sampler variants).

SFT (40 optimiser steps of the real SFT batches; the core's nll_sum, setup_training and optimizer_step):
  gelu-new           the fused GELU off: every GELUTanh module (``ACT2FN["gelu_pytorch_tanh"]``, which the core loads
                     GPT-2 with) swapped back to transformers' NewGELUActivation (GPT-2's ``gelu_new``: the same
                     function as 5 elementwise ops)
  unfused-adamw      the fused AdamW off: ``torch.optim.AdamW`` with torch's default implementation (on CPU the
                     per-parameter for-loop; foreach on CUDA), eps 1e-5, the same lr and weight decay
PPO (one iteration's phases generation / scoring / optimisation):
  gelu-new           as above, in the policy, the reference and the reward model
  unfused-adamw      as above: the trainer's optimiser (and its scheduler) replaced
  full-logits        ``logits_to_keep`` off: the policy/value and reference forwards project every position onto the
                     vocabulary (``supports_logits_to_keep`` patched to False in rlhf.generation and rlhf.rollout)
  multinomial-draw   the inverse-CDF draw off: ``rlhf.generation.draw`` patched to ``torch.multinomial`` (same
                     generator; a different random stream, so other tokens)
  extra-decode-step  the sampler runs one more decode step after the last token (logits unused)
  no-kv-cache        every decode step re-runs the whole prefix
  fixed-length       always max_new_tokens decode steps (no stop once every row has ended)
  keep-ended-rows    every row stays in the decode batch to the last step (ended rows are not dropped)
  concat-kv-cache    the KV cache grows by concatenation at every decode step (transformers' DynamicLayer) instead
                     of being written in place in a reserved buffer (rlhf/kv_cache.py)
  full-width         every PPO micro-batch at the rollout's full width (``rlhf.ppo.micro_batch`` patched to keep the
                     shared left padding and the positions after the micro-batch's longest response)
  shared-value       the value head on the policy's trunk (ppo.value_model=shared: read from the policy's own forward)
                     instead of the separate critic of params.yaml; a cheaper but weaker design (BENCHMARKS.md), so
                     its ratio is below 1: what the separate critic costs
  recompute-logprobs the behaviour log-probs (and the shared head's values) recomputed by a policy forward over
                     prompt + response in the scoring phase instead of recorded by the sampler (``record=False``)
  all-value-epochs   the critic trained in every PPO epoch (ppo.value_epochs=0) instead of params.yaml's first N:
                     the later epochs' critic forward and backward passes are what value_epochs saves
The sampler variants are benchmarks/variants.py's: the core's sampler with exactly that one thing changed.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ppo_overrides, read_jsonl, set_threads  # noqa: E402

CODE = Path(os.environ.get("RLHF_BENCH_CODE", Path(__file__).resolve().parents[1]))
SFT_STEPS = 40
PPO_EPISODES = 64 * 50          # sets the trainers' schedules (lr decay, prompt order); 1 + rounds iterations run

# variant -> the optimisation it switches off (the report's first column)
OPTIMISATION = {
    "default": "none (the core as it is)",
    "gelu-new": "fused GELU (gelu_pytorch_tanh instead of gelu_new)",
    "unfused-adamw": "fused AdamW (fused=True)",
    "full-logits": "logits_to_keep (vocabulary projection of response positions only)",
    "multinomial-draw": "inverse-CDF draw (instead of torch.multinomial)",
    "extra-decode-step": "no decode step after the last token",
    "no-kv-cache": "KV cache in generation",
    "fixed-length": "early stop once every row has ended",
    "keep-ended-rows": "ended rows leave the decode batch",
    "concat-kv-cache": "KV cache written in place (instead of grown by concatenation)",
    "full-width": "micro-batches trimmed to the columns their rows use",
    "recompute-logprobs": "behaviour log-probs recorded while sampling (a policy forward to recompute them instead)",
    "shared-value": "separate critic (value head on the policy trunk instead: cheaper, learns less)",
    "all-value-epochs": "value loss in the first value_epochs only (critic in every epoch instead)",
}
SFT_VARIANTS = ["default", "gelu-new", "unfused-adamw"]
PPO_VARIANTS = ["default", "gelu-new", "unfused-adamw", "full-logits", "multinomial-draw", "extra-decode-step",
                "no-kv-cache", "fixed-length", "keep-ended-rows", "concat-kv-cache", "full-width",
                "recompute-logprobs", "shared-value", "all-value-epochs"]
SPEEDUP = "variant time / default time (> 1: the optimisation switched off buys that factor)"


# -- the switches ------------------------------------------------------------------------------------------------------
def unfuse_gelu(*models) -> int:
    """Swap every module ``ACT2FN["gelu_pytorch_tanh"]`` creates (GELUTanh in transformers 5.x, PytorchGELUTanh
    before) for NewGELUActivation (``gelu_new``); returns how many were swapped (0 means nothing was fused)."""
    from transformers.activations import ACT2FN, NewGELUActivation
    fused = type(ACT2FN["gelu_pytorch_tanh"])
    n = 0
    for model in models:
        for name, module in list(model.named_modules()):
            if type(module) is fused:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, NewGELUActivation())
                n += 1
    return n


def count_fused_gelu(*models) -> int:
    from transformers.activations import ACT2FN
    fused = type(ACT2FN["gelu_pytorch_tanh"])
    return sum(type(m) is fused for model in models for m in model.modules())


def unfused_adamw(like: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """AdamW on ``like``'s parameters with its lr/eps/weight decay, torch's default (not fused) implementation."""
    params = [p for g in like.param_groups for p in g["params"]]
    d = like.defaults
    return torch.optim.AdamW(params, lr=d["lr"], eps=d["eps"], weight_decay=d["weight_decay"])


def adamw_impl(opt: torch.optim.Optimizer) -> str:
    """The implementation torch runs for ``opt``: fused, foreach or the per-parameter for-loop."""
    if opt.defaults.get("fused"):
        return "fused"
    if opt.defaults.get("foreach") is not None:
        return "foreach" if opt.defaults["foreach"] else "for-loop"
    from torch.optim.optimizer import _default_to_fused_or_foreach
    params = [p for g in opt.param_groups for p in g["params"]]
    return "foreach" if _default_to_fused_or_foreach(params, False, False)[1] else "for-loop"


def rotate(names: list[str], k: int) -> list[str]:
    """Round k starts at variant k: no variant always runs first (or right after the same neighbour)."""
    k %= len(names)
    return names[k:] + names[:k]


def select(names: list[str], only_variants: str) -> list[str]:
    """``--variants a,b``: those (and always ``default``, the baseline), in the table's order."""
    if not only_variants:
        return names
    want = set(only_variants.split(",")) | {"default"}
    return [v for v in names if v in want]


# -- SFT ---------------------------------------------------------------------------------------------------------------
def bench_sft(a) -> dict:
    from rlhf.config import load_params
    from rlhf.data import pad_left
    from rlhf.modeling import load_causal_lm, load_tokenizer
    from rlhf.optim import make_scheduler, optimizer_step, setup_training
    from rlhf.train_lm import Example, nll_sum, plan_batches

    p, art = load_params(CODE / "params.yaml"), Path(a.artifacts)
    cfg = p.sft.train
    ex = [Example(r["input_ids"], r["completion_mask"]) for r in read_jsonl(Path(a.work) / "sft.jsonl")]
    tok = load_tokenizer(art / "models" / "base")
    plan = plan_batches(len(ex), cfg, 0)[:SFT_STEPS]
    micro = max(1, cfg.batch_size // cfg.grad_accum)
    steps = []                      # per step: (its micro-batches, the step's target count), as train_causal_lm
    for idx in plan:
        n = max(sum(sum(ex[i].mask[1:]) for i in idx), 1)
        steps.append(([pad_left([ex[i].ids for i in idx[j:j + micro]], tok.pad_token_id,
                                [ex[i].mask for i in idx[j:j + micro]]) for j in range(0, len(idx), micro)], n))

    variants = select(SFT_VARIANTS, a.variants)
    state, info = {}, {}
    for v in variants:
        model = load_causal_lm(art / "models" / "base", tok).train()
        opt, sched, _ = setup_training(model, cfg, len(plan))
        if v == "gelu-new":
            assert unfuse_gelu(model) > 0, "no fused GELU in the model: nothing to switch off"
        if v == "unfused-adamw":
            opt = unfused_adamw(opt)
            sched = make_scheduler(opt, cfg.lr_schedule, len(plan), cfg.warmup_ratio)
        state[v] = (model, opt, sched)
        info[v] = {"fused_gelu_modules": count_fused_gelu(model), "adamw": adamw_impl(opt)}
    times = {v: [] for v in variants}
    for rnd in range(-1, a.rounds):                      # round -1: untimed warm-up of every variant
        for v in rotate(variants, rnd):
            model, opt, sched = state[v]
            t0 = time.perf_counter()
            for batches, n in steps:
                for ids, attn, lm in batches:
                    s, _ = nll_sum(model, ids, attn, lm)
                    (s / n).backward()
                optimizer_step(model, opt, sched, cfg.max_grad_norm)
            if rnd >= 0:
                times[v].append(time.perf_counter() - t0)
    base = statistics.median(times["default"])
    out = {v: {"optimisation": OPTIMISATION[v], **info[v], "median_s": statistics.median(t), "min_s": min(t),
               "speedup": statistics.median(t) / base, "runs": [round(x, 4) for x in t]} for v, t in times.items()}
    return {"steps_per_round": len(plan), "rounds": a.rounds, "speedup_is": SPEEDUP, "variants": out}


# -- PPO ---------------------------------------------------------------------------------------------------------------
def bench_ppo(a) -> dict:
    cfg, trainers, info = ppo_trainers(a)
    phases, widths = time_ppo_rounds(trainers, a.rounds)
    return {"rounds": a.rounds, "episodes_per_iteration": cfg.rollout_batch_size, "speedup_is": SPEEDUP,
            "variants": ppo_summary(phases, widths, info)}


def ppo_trainers(a) -> tuple:
    """(cfg, {variant: its own PPOTrainer from the same checkpoints}, {variant: what it runs with}); the variants
    that change the models or the optimiser are applied here, the patches of the core at run time (``patched``)."""
    import rlhf.generation as G
    import rlhf.ppo as P
    from rlhf.config import load_params
    from rlhf.data import load_jsonl
    from rlhf.modeling import load_tokenizer
    from rlhf.optim import make_scheduler
    from rlhf.stages.ppo import build_models

    p, art = load_params(CODE / "params.yaml"), Path(a.artifacts)
    # The benchmark's PPO settings (bench.py OURS_PPO_SET), then this workload's paths and schedule length.
    cfg = dataclasses.replace(ppo_overrides(p.ppo, a.set), policy_path=str(art / "models" / "sft"),
                              reward_path=str(art / "models" / "reward"),
                              prompts=str(art / "data" / "prompts_ppo.jsonl"), total_episodes=PPO_EPISODES)
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    trainers, info = {}, {}
    for name in select(PPO_VARIANTS, a.variants):
        vcfg = (dataclasses.replace(cfg, value_model="shared") if name == "shared-value"
                else dataclasses.replace(cfg, value_epochs=0) if name == "all-value-epochs" else cfg)
        models = build_models(vcfg, tok)
        trio = tuple(m for m in (models.policy, models.ref_model, models.reward_model, models.value_model)
                     if m is not None)
        if name == "gelu-new":
            assert unfuse_gelu(*trio) > 0, "no fused GELU in the models: nothing to switch off"
        tr = P.PPOTrainer(vcfg, models, tok, prompts)
        if name == "unfused-adamw":
            tr.optimizer = unfused_adamw(tr.optimizer)
            tr.scheduler = make_scheduler(tr.optimizer, cfg.lr_schedule,
                                          tr.n_iterations * cfg.ppo_epochs * cfg.num_mini_batches)
        trainers[name] = tr
        info[name] = {"fused_gelu_modules": count_fused_gelu(*trio), "adamw": adamw_impl(tr.optimizer),
                      "logits_to_keep": G.supports_logits_to_keep(models.policy.lm) and name != "full-logits"}
    return cfg, trainers, info


@contextlib.contextmanager
def patched(name: str):
    """The core with variant ``name``'s one switch off while it runs (the sampler, the draw, logits_to_keep)."""
    import rlhf.generation as G
    import rlhf.ppo as P
    import rlhf.rollout as R
    import variants as V

    saved = (P.sample, P.micro_batch, G.draw, G.supports_logits_to_keep, R.supports_logits_to_keep)
    if name in ("extra-decode-step", "no-kv-cache", "fixed-length", "keep-ended-rows", "concat-kv-cache"):
        P.sample = V.SAMPLERS[name]              # rlhf.ppo imported the core's sample by name
    elif name == "multinomial-draw":
        G.draw = V.draw_multinomial              # the name the core's sample (and V.core_draw) look up
    elif name == "full-logits":
        G.supports_logits_to_keep = R.supports_logits_to_keep = lambda model: False
    elif name == "full-width":
        P.micro_batch = V.full_width_micro_batch   # rlhf.ppo imported the core's micro_batch by name
    elif name == "recompute-logprobs":
        core = P.sample
        P.sample = lambda *args, **kw: core(*args, **{**kw, "record": False, "hidden": False})
    try:
        yield
    finally:
        P.sample, P.micro_batch, G.draw, G.supports_logits_to_keep, R.supports_logits_to_keep = saved


def time_ppo_rounds(trainers: dict, rounds: int) -> tuple[dict, dict]:
    """One PPO iteration of every variant per round, in rotated order, after an untimed warm-up round: the seconds
    of each phase, {variant: {phase: [s per round]}}, and the decode steps, {variant: [per round]}."""
    variants = list(trainers)
    phases = {n: {"generation": [], "scoring": [], "optimization": []} for n in variants}
    widths = {n: [] for n in variants}
    for it in range(-1, rounds):                         # iteration -1 -> 0: untimed warm-up of every variant
        for name in rotate(variants, it):
            tr = trainers[name]
            with patched(name):
                t0 = time.perf_counter()
                r = tr.rollout(max(it, 0))
                t1 = time.perf_counter()
                exp = tr.experience(r, max(it, 0))
                t2 = time.perf_counter()
                tr.optimize(exp, max(it, 0))
                t3 = time.perf_counter()
            if it < 0:
                continue
            widths[name].append(r.response_ids.size(1))
            for k, v in (("generation", t1 - t0), ("scoring", t2 - t1), ("optimization", t3 - t2)):
                phases[name][k].append(v)
    return phases, widths


def ppo_summary(phases: dict, widths: dict, info: dict) -> dict:
    """Per variant: median and fastest seconds of each phase, and their ratios to ``default``'s."""
    out = {}
    base = {k: statistics.median(v) for k, v in phases["default"].items()}
    for name, ph in phases.items():
        med = {k: statistics.median(v) for k, v in ph.items()}
        best = {k: min(v) for k, v in ph.items()}      # the fastest round: least touched by other processes' load
        out[name] = {"optimisation": OPTIMISATION[name], **info[name],
                     **{f"{k}_s": v for k, v in med.items()}, "iteration_s": sum(med.values()),
                     **{f"min_{k}_s": v for k, v in best.items()},
                     "speedup": sum(med.values()) / sum(base.values()),
                     **{f"{k}_speedup": med[k] / base[k] for k in med},
                     "min_speedup": {k: best[k] / min(phases["default"][k]) for k in best},
                     "decode_steps": statistics.mean(widths[name]),
                     "runs": {k: [round(x, 4) for x in v] for k, v in ph.items()}}
    return out


def check_sampler(a) -> dict:
    """variants.self_test on the SFT policy and the first PPO prompts: the sampler variants' baseline is the core."""
    import variants as V
    from rlhf.config import load_params
    from rlhf.data import load_jsonl
    from rlhf.generation import encode_prompts
    from rlhf.modeling import load_causal_lm, load_tokenizer
    from rlhf.config import SamplingConfig
    MAX_PROMPT_TOKENS = SamplingConfig().max_prompt_tokens

    p, art = load_params(CODE / "params.yaml"), Path(a.artifacts)
    tok = load_tokenizer(art / "models" / "sft")
    lm = load_causal_lm(art / "models" / "sft", tok).eval()
    prompts = [r["prompt"] for r in load_jsonl(art / "data" / "prompts_ppo.jsonl")][:p.ppo.rollout_batch_size]
    q, qm = encode_prompts(tok, prompts, MAX_PROMPT_TOKENS)
    s = p.ppo.sampling
    return V.self_test(lm, q, qm, s.max_new_tokens, s.temperature, tok.eos_token_id, tok.pad_token_id, seeds=(0, 1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--work", required=True, help="holds sft.jsonl (ours.py prepare)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="sft,ppo", help="comma list of: sft, ppo")
    ap.add_argument("--variants", default="", help="comma list: only these variants (and default); default: all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ppo: parameter")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    res = {"sampler_check": check_sampler(a)}
    if "sft" in a.only:
        res["sft"] = bench_sft(a)
    if "ppo" in a.only:
        res["ppo"] = bench_ppo(a)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
