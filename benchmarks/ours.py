"""Our side of the benchmark: each command measures one stage's training loop on the demo model, in its own process,
and writes one JSON result (the driver, bench.py, reads the process's peak RSS from the kernel as well).

    python benchmarks/ours.py prepare --artifacts A --work W          # tokenised workloads for both sides
    python benchmarks/ours.py sft     --artifacts A --work W --out R.json [--steps N]
    python benchmarks/ours.py reward  --artifacts A --work W --out R.json [--steps N]
    python benchmarks/ours.py ppo     --artifacts A --work W --out R.json --episodes E [--variant V]
    python benchmarks/ours.py gold    --artifacts A --samples S.jsonl --out R.json

``prepare`` writes the exact token sequences our loops train on, so TRL's scripts train on the same tokens.
PPO variants switch one optimisation off (benchmark-only code in benchmarks/variants.py): ``no-kv-cache``,
``fixed-length`` (no early stop); ``--set KEY=VALUE`` overrides a ``ppo:`` parameter (e.g. ``value_model=separate``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PhaseClock, ppo_overrides, read_jsonl, set_threads, timed_method, write_jsonl,  # noqa: E402
                    write_result)

ROOT = Path(__file__).resolve().parents[1]
CODE = Path(os.environ.get("RLHF_BENCH_CODE", ROOT))     # the frozen code bench.py measures (its params.yaml too)


def params():
    from rlhf.config import load_params
    return load_params(CODE / "params.yaml")


# -- workloads shared with TRL ------------------------------------------------------------------------------------
def cmd_prepare(a) -> None:
    """Write the token-level workloads: SFT examples, reward pairs (grouped as we batch them), PPO prompts."""
    from rlhf.data import encode_prompt, load_jsonl
    from rlhf.modeling import load_tokenizer
    from rlhf.train_reward import encode_groups, pair_index
    from rlhf.train_lm import sft_examples
    p, art, work = params(), Path(a.artifacts), Path(a.work)
    ppo = ppo_overrides(p.ppo, a.set)           # --set: this workload's ppo: keys (bench.py --ppo-set), TRL's too
    MAX_PROMPT_TOKENS = ppo.sampling.max_prompt_tokens
    tok = load_tokenizer(art / "models" / "sft")
    sft = sft_examples(tok, load_jsonl(art / "data" / "sft_train.jsonl"), p.sft.train.max_length)
    write_jsonl(work / "sft.jsonl", [{"input_ids": e.ids, "completion_mask": e.mask} for e in sft])
    groups = encode_groups(tok, load_jsonl(art / "preferences" / "rankings_train.jsonl"), p.reward.train.max_length)
    pairs = []
    for g in groups:
        for w, l, _ in pair_index(g.ranks, 0):
            pairs.append({"chosen_ids": g.seqs[w], "rejected_ids": g.seqs[l]})
    write_jsonl(work / "reward_pairs.jsonl", pairs)
    prompts = [r["prompt"] for r in load_jsonl(art / "data" / "prompts_ppo.jsonl")]
    ppo_prompts = [{"prompt": q, "input_ids": encode_prompt(tok, q, MAX_PROMPT_TOKENS)} for q in prompts]
    write_jsonl(work / "ppo_prompts.jsonl", ppo_prompts)
    manifest = {"n_sft": len(sft), "n_groups": len(groups), "n_pairs": len(pairs),
                "pairs_per_group": len(pairs) / max(len(groups), 1), "n_prompts": len(prompts),
                "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
                "max_prompt_tokens": max(len(r["input_ids"]) for r in ppo_prompts),
                "mean_prompt_tokens": statistics.mean(len(r["input_ids"]) for r in ppo_prompts),
                "sft_batch": p.sft.train.batch_size, "sft_lr": p.sft.train.lr, "sft_max_length": p.sft.train.max_length,
                "reward_groups_per_step": p.reward.train.batch_size, "reward_lr": p.reward.train.lr,
                "ppo": dataclasses.asdict(ppo)}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "ppo"}))


# -- SFT --------------------------------------------------------------------------------------------------------------
def cmd_sft(a) -> None:
    from rlhf.modeling import load_causal_lm, load_tokenizer
    from rlhf.train_lm import Example, train_causal_lm

    p, art = params(), Path(a.artifacts)
    rows = read_jsonl(Path(a.work) / "sft.jsonl")
    examples = [Example(r["input_ids"], r["completion_mask"]) for r in rows]
    tok = load_tokenizer(art / "models" / "base")
    model = load_causal_lm(art / "models" / "base", tok)
    cfg = p.sft.train
    steps = a.steps or math.ceil(len(examples) / cfg.batch_size)
    cfg = dataclasses.replace(cfg, epochs=steps / math.ceil(len(examples) / cfg.batch_size), log_every=10**9)
    t0, c0 = time.perf_counter(), time.process_time()
    m = train_causal_lm(model, examples, cfg, tok.pad_token_id, seed=p.sft.seed)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    write_result(a.out, {"side": "ours", "stage": "sft", "steps": m["steps"], "seconds": dt, "cpu_s": cpu,
                         "tokens": m["tokens_per_s"] * m["train_seconds"],
                         "tokens_per_s": m["tokens_per_s"], "train_loss": m["train_loss"]})


# -- reward model -------------------------------------------------------------------------------------------------------
def cmd_reward(a) -> None:
    from rlhf.data import load_jsonl
    from rlhf.modeling import RewardModel, load_tokenizer
    from rlhf.train_reward import encode_groups, train_reward_model

    p, art = params(), Path(a.artifacts)
    tok = load_tokenizer(art / "models" / "sft")
    model = RewardModel.from_causal_lm_path(art / "models" / "sft", tok)
    groups = encode_groups(tok, load_jsonl(art / "preferences" / "rankings_train.jsonl"), p.reward.train.max_length)
    cfg = p.reward.train
    per_epoch = math.ceil(len(groups) / cfg.batch_size)
    steps = a.steps or per_epoch
    cfg = dataclasses.replace(cfg, epochs=steps / per_epoch, log_every=10**9)
    t0, c0 = time.perf_counter(), time.process_time()
    m = train_reward_model(model, groups, cfg, tok.pad_token_id, p.reward.loss, p.reward.margin, p.reward.seed)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    write_result(a.out, {"side": "ours", "stage": "reward", "steps": m["steps"], "seconds": dt, "cpu_s": cpu,
                         "pairs": m["pairs_per_s"] * m["train_seconds"],
                         "pairs_per_s": m["pairs_per_s"]})


# -- PPO --------------------------------------------------------------------------------------------------------------
def cmd_ppo(a) -> None:
    import torch

    cfg, tok, models, trainer = ppo_trainer(a)
    clock = time_scoring_forwards(trainer, models)
    samples, book, steps = record_rollouts(trainer, tok, bool(a.samples))
    rows = []
    torch.manual_seed(cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    while trainer.iteration < trainer.n_iterations:
        row = trainer.step()
        row["time/generation"] -= book[-1]
        rows.append(row)
    dt, cpu = time.perf_counter() - t0 - sum(book), time.process_time() - c0
    if a.samples:
        write_jsonl(a.samples, samples)
    write_result(a.out, ppo_result(a, cfg, rows, dt, cpu, clock, steps))


def ppo_trainer(a):
    """(cfg, tokenizer, models, PPOTrainer) of the benchmark's PPO run: params.yaml's ``ppo:`` with this workload's
    paths and episodes, ``--set`` overrides, and the ``--variant`` sampler patched in."""
    import rlhf.ppo as ppo_mod
    from rlhf.data import load_jsonl
    from rlhf.modeling import load_tokenizer
    from rlhf.stages.ppo import build_models
    from rlhf.stages.common import seed_everything

    p, art = params(), Path(a.artifacts)
    cfg = dataclasses.replace(p.ppo, policy_path=str(art / "models" / "sft"), reward_path=str(art / "models" / "reward"),
                              prompts=str(art / "data" / "prompts_ppo.jsonl"), total_episodes=a.episodes)
    cfg = ppo_overrides(cfg, a.set)             # e.g. --set value_model=separate: a ppo: key of params.yaml
    if a.variant in ("no-kv-cache", "fixed-length"):
        import variants                         # the core's sampler with that one optimisation off
        ppo_mod.sample = variants.SAMPLERS[a.variant]
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    models = build_models(cfg, tok)
    return cfg, tok, models, ppo_mod.PPOTrainer(cfg, models, tok, prompts)


def time_scoring_forwards(trainer, models) -> PhaseClock:
    """Split the scoring phase into its forwards (benchmark-side wrappers; the core is unchanged): a clock of
    ``scoring/<model>`` seconds, counted only while the trainer scores an experience."""
    clock, scoring = PhaseClock(), {"on": False}
    timed_method(models.policy, "forward", clock, "scoring/policy+value", lambda: scoring["on"])
    timed_method(models.ref_model, "forward", clock, "scoring/reference", lambda: scoring["on"])
    timed_method(models.reward_model, "forward", clock, "scoring/reward", lambda: scoring["on"])
    if models.value_model is not None:
        timed_method(models.value_model, "forward", clock, "scoring/value", lambda: scoring["on"])
    inner_experience = trainer.experience

    def experience(rollout, *args, **kwargs):
        scoring["on"] = True
        try:
            return inner_experience(rollout, *args, **kwargs)
        finally:
            scoring["on"] = False
    trainer.experience = experience
    return clock


def record_rollouts(trainer, tok, keep_samples: bool) -> tuple[list, list, list]:
    """Wrap the trainer's rollout: (samples for the gold judge when ``keep_samples``, seconds spent decoding them
    per rollout (not part of the measured work), decode steps per rollout (early stop)), filled as it runs."""
    from rlhf.generation import decode_responses

    samples, book, steps = [], [], []
    inner_rollout = trainer.rollout

    def rollout(iteration):
        r = inner_rollout(iteration)
        steps.append(r.response_ids.size(1))                 # decode steps this rollout took (early stop)
        t0 = time.perf_counter()
        if keep_samples:
            qs = [trainer.prompts[i] for i in trainer.schedule[iteration]]
            for q, resp, e in zip(qs, decode_responses(tok, r), r.ended.tolist()):
                samples.append({"iteration": iteration, "prompt": q, "response": resp, "ended": bool(e)})
        book.append(time.perf_counter() - t0)      # decoding for the gold judge: not part of the measured work
        return r
    trainer.rollout = rollout
    return samples, book, steps


def ppo_result(a, cfg, rows: list[dict], dt: float, cpu: float, clock: PhaseClock, steps: list[int]) -> dict:
    """The PPO run's result from the trainer's per-iteration rows, the measured seconds and the scoring clock."""
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n  # noqa: E731
    tokens = sum(r["val/response_length"] * cfg.rollout_batch_size for r in rows)     # response tokens incl. EOS
    return {
        "side": "ours", "stage": "ppo", "variant": a.variant, "overrides": a.set, "iterations": n, "episodes": n * cfg.rollout_batch_size,
        "seconds": dt, "cpu_s": cpu, "episodes_per_s": n * cfg.rollout_batch_size / dt,
        "s_per_iter": dt / n, "generation_s": mean("time/generation"), "scoring_s": mean("time/scoring"),
        "optimization_s": mean("time/optimization"),
        "scoring_split_s": {k.split("/", 1)[1]: v / n for k, v in clock.totals.items() if k.startswith("scoring/")},
        "rollout_tokens_per_s": tokens / sum(r["time/generation"] for r in rows),
        "iteration_s": [r["time/generation"] + r["time/scoring"] + r["time/optimization"] for r in rows],
        "decode_steps": sum(steps) / n, "generation_ms_per_step": 1000 * sum(r["time/generation"] for r in rows) / sum(steps),
        "response_length": mean("val/response_length"), "eos_rate": mean("val/eos_rate"),
        "scores_first": rows[0]["objective/scores"], "scores_last": rows[-1]["objective/scores"],
        "kl_last": rows[-1]["objective/kl"]}


# -- gold judge -------------------------------------------------------------------------------------------------------
def cmd_gold(a) -> None:
    """Gold-judge score of every sampled response, per iteration: start, end and gain per 1000 episodes."""
    from rlhf.demo.judge import GoldJudge

    judge = GoldJudge.from_corpus(ROOT / "data" / "corpus.jsonl" if not a.corpus else a.corpus)
    rows = read_jsonl(a.samples)
    by_it: dict[int, list[float]] = {}
    for r in rows:
        by_it.setdefault(int(r["iteration"]), []).append(judge.score(r["prompt"], r["response"], bool(r["ended"])))
    its = sorted(by_it)
    means = [sum(by_it[i]) / len(by_it[i]) for i in its]
    per_it = len(by_it[its[0]])
    episodes = [(i + 1) * per_it for i in range(len(its))]
    # Least-squares slope of the per-iteration mean gold score against episodes (robust to one noisy iteration).
    mx, my = sum(episodes) / len(episodes), sum(means) / len(means)
    sxx = sum((x - mx) ** 2 for x in episodes) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(episodes, means)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(episodes, means)]
    se_slope = (sum(e * e for e in resid) / max(len(its) - 2, 1) / sxx) ** 0.5
    k = max(1, len(its) // 5)
    last = [s for i in its[-k:] for s in by_it[i]]
    first = [s for i in its[:k] for s in by_it[i]]

    def se(xs):
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1) / len(xs)) ** 0.5
    out = {"iterations": len(its), "episodes_per_iteration": per_it, "gold_first": means[0],
           "gold_first_k": sum(first) / len(first), "gold_first_k_se": se(first),
           "gold_last_k": sum(last) / len(last), "gold_last_k_se": se(last), "k": k,
           "gold_gain_per_1k_episodes": 1000 * slope, "gold_gain_per_1k_episodes_se": 1000 * se_slope,
           "curve": means}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["prepare", "sft", "reward", "ppo", "gold"])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--work", default="/tmp/rlhf-bench")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=1280)
    ap.add_argument("--variant", default="default", choices=["default", "no-kv-cache", "fixed-length"])
    ap.add_argument("--samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ppo: parameter")
    ap.add_argument("--corpus")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    {"prepare": cmd_prepare, "sft": cmd_sft, "reward": cmd_reward, "ppo": cmd_ppo, "gold": cmd_gold}[a.command](a)


if __name__ == "__main__":
    main()
