"""TRL's PPO (trl==1.12.0, trl.experimental.ppo) and RLOO (current TRL) runs of the benchmark, on the models our
pipeline saved and the prompts ``ours.py prepare`` tokenised; phase clocks wrap TRL's own functions (its code runs
unchanged). Run through benchmarks/trl_runs.py in TRL's virtualenvs: imports nothing of the project."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PhaseClock, read_jsonl, write_jsonl, write_result  # noqa: E402
from trl_common import (COMMON_ARGS, LoopTimer, decode_sample, policy_setup, seed_all,  # noqa: E402
                        seqcls_from_ours)


# -- PPO (trl==1.12.0, trl.experimental.ppo) ----------------------------------------------------------------------------
def cmd_ppo(a) -> None:
    from transformers.utils import logging as hf_logging
    import trl.experimental.ppo.ppo_trainer as M
    from trl.experimental.ppo import PPOTrainer

    hf_logging.set_verbosity_error()
    m, art, work, p, tok, load_sft = policy_setup(a)
    policy, ref = load_sft(), load_sft()
    reward = seqcls_from_ours(art / "models" / "reward", normalised=True)
    value = seqcls_from_ours(art / "models" / "reward", normalised=False)   # TRL's convention: critic from the RM
    for mdl in (reward, value):
        mdl.config.pad_token_id = tok.pad_token_id
    ds, cfg = ppo_dataset_and_config(a, p, work)
    clock, events, samples = clock_ppo_phases(M, tok, value, bool(a.samples))
    seed_all(p["seed"])
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, eval_dataset=ds.select(range(64)), value_model=value)
    logs = []
    inner_log = trainer.log
    trainer.log = lambda logs_, *x, **k: (logs.append(dict(logs_)), inner_log(logs_, *x, **k))[1]
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    t_end, cpu = time.perf_counter(), time.process_time() - c0
    dt = t_end - t0 - sum(e.get("bookkeeping", 0.0) for e in events)
    split_ppo_phases(events, t_end)
    if a.samples:
        write_jsonl(a.samples, samples)
    write_result(a.out, trl_ppo_result(events, clock, logs, p["rollout_batch_size"], dt, cpu))


def ppo_dataset_and_config(a, p: dict, work: Path):
    """The PPO prompts (our tokens) and TRL's PPOConfig with our ``ppo:`` settings."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig

    prompts = read_jsonl(work / "ppo_prompts.jsonl")
    if len(prompts) < p["rollout_batch_size"]:      # TRL's dataloader drops the last short batch: it would spin forever
        raise SystemExit(f"TRL PPO needs at least {p['rollout_batch_size']} prompts, got {len(prompts)}")
    ds = Dataset.from_list([{"input_ids": r["input_ids"]} for r in prompts])
    cfg = PPOConfig(output_dir=str(work / "trl_ppo"), per_device_train_batch_size=p["rollout_batch_size"],
                    gradient_accumulation_steps=1, num_mini_batches=p["num_mini_batches"],
                    num_ppo_epochs=p["ppo_epochs"], total_episodes=a.episodes,
                    response_length=p["sampling"]["max_new_tokens"], temperature=p["sampling"]["temperature"],
                    stop_token="eos", missing_eos_penalty=p["missing_eos_penalty"], kl_coef=p["kl_coef"],
                    kl_estimator=p["kl_estimator"], learning_rate=p["lr"], lr_scheduler_type=p["lr_schedule"],
                    cliprange=p["cliprange"], cliprange_value=p["cliprange_value"], vf_coef=p["vf_coef"],
                    gamma=p["gamma"], lam=p["lam"], local_rollout_forward_batch_size=p["rollout_batch_size"],
                    num_sample_generations=0, logging_steps=1, **{**COMMON_ARGS, "seed": p["seed"]})
    return ds, cfg


def clock_ppo_phases(M, tok, value, keep_samples: bool):
    """Phase clocks around TRL's own module functions (wrapping, not copying, its code): (clock of the scoring
    forwards, one event per iteration with its phase boundaries, the samples for the gold judge), filled as it runs."""
    import torch

    clock, events, samples = PhaseClock(), [], []
    state = {"it": -1, "opt_started": True}
    inner_bg, inner_fwd, inner_rew = M.batch_generation, M.forward, M.get_reward

    def batch_generation(model, queries, *args, **kw):
        t0 = time.perf_counter()
        out = inner_bg(model, queries, *args, **kw)
        t1 = time.perf_counter()
        state["it"] += 1
        state["opt_started"] = False
        events.append({"gen_start": t0, "gen_end": t1})
        qr = out[0]
        ctx = queries.shape[1]
        resp = qr[:, ctx:]
        ends = (resp == tok.eos_token_id)
        lengths = torch.where(ends.any(1), ends.float().argmax(1) + 1, torch.full_like(ends[:, 0], resp.shape[1],
                                                                                        dtype=torch.long))
        events[-1]["response_tokens"] = int(lengths.sum())
        events[-1]["decode_steps"] = int(out[1].shape[1])            # generate's scores: one per decode step
        if keep_samples:
            for qi, ri in zip(queries.tolist(), resp.tolist()):
                q, r, e = decode_sample(tok, qi, ri, tok.eos_token_id, tok.pad_token_id)
                samples.append({"iteration": state["it"], "prompt": q, "response": r, "ended": e})
        events[-1]["bookkeeping"] = time.perf_counter() - t1
        return out

    def forward(model, query_responses, pad_token_id):
        if torch.is_grad_enabled() and not state["opt_started"]:
            state["opt_started"] = True
            events[-1]["opt_start"] = time.perf_counter()
        if torch.is_grad_enabled():
            return inner_fwd(model, query_responses, pad_token_id)
        with clock("scoring/reference"):
            return inner_fwd(model, query_responses, pad_token_id)

    def get_reward(model, *args, **kw):
        with clock("scoring/value" if model is value or getattr(model, "module", None) is value else "scoring/reward"):
            return inner_rew(model, *args, **kw)

    M.batch_generation, M.forward, M.get_reward = batch_generation, forward, get_reward
    return clock, events, samples


def split_ppo_phases(events: list[dict], t_end: float) -> None:
    """Each iteration's generation, scoring and optimisation seconds, from its event's boundaries."""
    for i, e in enumerate(events):
        nxt = events[i + 1]["gen_start"] if i + 1 < len(events) else t_end
        e["generation"] = e["gen_end"] - e["gen_start"]
        e["scoring"] = e["opt_start"] - e["gen_end"] - e.get("bookkeeping", 0.0)
        e["optimization"] = nxt - e["opt_start"]


def trl_ppo_result(events: list[dict], clock: PhaseClock, logs: list[dict], B: int, dt: float, cpu: float) -> dict:
    n = len(events)
    mean = lambda k: sum(e[k] for e in events) / n  # noqa: E731
    return {
        "side": "trl", "stage": "ppo", "trainer": "trl.experimental.ppo.PPOTrainer", "iterations": n,
        "episodes": n * B, "seconds": dt, "cpu_s": cpu, "episodes_per_s": n * B / dt, "s_per_iter": dt / n,
        "generation_s": mean("generation"), "scoring_s": mean("scoring"), "optimization_s": mean("optimization"),
        "scoring_split_s": {k.split("/", 1)[1]: v / n for k, v in clock.totals.items()},
        "rollout_tokens_per_s": sum(e["response_tokens"] for e in events) / sum(e["generation"] for e in events),
        "iteration_s": [e["generation"] + e["scoring"] + e["optimization"] for e in events],
        "decode_steps": mean("decode_steps"),
        "generation_ms_per_step": 1000 * sum(e["generation"] for e in events) / sum(e["decode_steps"] for e in events),
        "response_length": sum(e["response_tokens"] for e in events) / (n * B),
        "scores_first": logs[0].get("objective/scores") if logs else None,
        "scores_last": logs[-1].get("objective/scores") if logs else None,
        "kl_last": logs[-1].get("objective/kl") if logs else None}


# -- RLOO (current TRL) -------------------------------------------------------------------------------------------------
def cmd_rloo(a) -> None:
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    clock, samples, state, starts = PhaseClock(), [], {"gen": -1}, []
    Trainer = rloo_trainer_class(clock, state, starts)         # imports TRL before the models load
    hf_logging.set_verbosity_error()
    m, art, work, p, tok, load_sft = policy_setup(a)
    policy = load_sft()
    rm = seqcls_from_ours(art / "models" / "reward", normalised=True).eval()
    rm.config.pad_token_id = tok.pad_token_id
    prompts = read_jsonl(work / "ppo_prompts.jsonl")
    ds = Dataset.from_list([{"prompt": r["prompt"], "query_ids": r["input_ids"]} for r in prompts])
    reward_model = rloo_reward_function(rm, tok, p["missing_eos_penalty"], clock, samples, state, bool(a.samples))
    cfg = rloo_config(a, p, work)
    loop = LoopTimer()
    seed_all(p["seed"])
    trainer = Trainer(model=policy, reward_funcs=[reward_model], args=cfg, train_dataset=ds, processing_class=tok,
                      callbacks=[loop])
    trainer.train()
    t_end = time.perf_counter()
    if a.samples:
        write_jsonl(a.samples, samples)
    write_result(a.out, rloo_result(clock.totals, state["gen"] + 1, starts, t_end, loop, p["rollout_batch_size"],
                                    a.num_generations))


def rloo_reward_function(rm, tok, missing_eos_penalty: float, clock: PhaseClock, samples: list, state: dict,
                         keep_samples: bool):
    """The reward function RLOO calls: our reward model, timed, keeping the samples for the gold judge."""
    import torch

    eos, pad = tok.eos_token_id, tok.pad_token_id

    def reward_model(prompts, completions, completion_ids, query_ids, **kw):
        """Our reward model on prompt tokens + completion tokens as sampled (EOS included when it ended), left-padded,
        read at the last position; the missing-EOS penalty as our PPO applies it."""
        with clock("scoring/reward"), torch.inference_mode():
            seqs = [list(q) + list(c) for q, c in zip(query_ids, completion_ids)]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, width - len(s):], attn[i, width - len(s):] = torch.tensor(s), 1
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            h = rm.base_model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state[:, -1]
            scores = rm.score(h).squeeze(-1)
            ended = torch.tensor([len(c) > 0 and c[-1] == eos for c in completion_ids])
            scores = torch.where(ended, scores, scores - missing_eos_penalty)
        t0 = time.perf_counter()
        if keep_samples:
            for q, c, e in zip(prompts, completion_ids, ended.tolist()):
                samples.append({"iteration": state["gen"], "prompt": q,
                                "response": tok.decode([t for t in c if t not in (eos, pad)]).strip(), "ended": e})
        clock.add("bookkeeping", time.perf_counter() - t0)
        return scores.tolist()
    return reward_model


def rloo_config(a, p: dict, work: Path):
    """TRL's RLOOConfig with our ``ppo:`` settings: the same batch, epochs, sampling, KL, clipping and schedule."""
    from trl import RLOOConfig

    B, k = p["rollout_batch_size"], a.num_generations
    mb = B // p["num_mini_batches"]
    generations = a.episodes // B
    return RLOOConfig(output_dir=str(work / "trl_rloo"), per_device_train_batch_size=mb, steps_per_generation=B // mb,
                      gradient_accumulation_steps=1, num_generations=k, num_iterations=p["ppo_epochs"],
                      max_completion_length=p["sampling"]["max_new_tokens"], temperature=p["sampling"]["temperature"],
                      top_k=0, top_p=1.0, beta=p["kl_coef"], epsilon=p["cliprange"], learning_rate=p["lr"],
                      lr_scheduler_type=p["lr_schedule"], max_steps=generations * (B // mb) * p["ppo_epochs"],
                      max_grad_norm=p["max_grad_norm"], logging_steps=10**6, disable_dropout=True,
                      **{**COMMON_ARGS, "seed": p["seed"]})


def rloo_trainer_class(clock: PhaseClock, state: dict, starts: list):
    """RLOOTrainer with clocks around its generation and its scoring forwards (TRL's code runs unchanged)."""
    import torch
    from trl import RLOOTrainer

    class Trainer(RLOOTrainer):
        def _generate_and_score_completions(self, inputs):
            state["gen"] += 1
            t0 = time.perf_counter()
            starts.append(t0)
            out = super()._generate_and_score_completions(inputs)
            clock.add("gen+score", time.perf_counter() - t0)
            return out

        def _generate_single_turn(self, *args, **kw):
            with clock("generation"):
                out = super()._generate_single_turn(*args, **kw)
            clock.add("response_tokens", sum(len(c) for c in out))
            clock.add("decode_steps", max(len(c) for c in out))      # generate stops when every row has ended
            return out

        def _get_per_token_logps_and_entropies(self, model, *args, **kw):
            if torch.is_grad_enabled():
                return super()._get_per_token_logps_and_entropies(model, *args, **kw)
            with clock("scoring/reference" if model is self.ref_model else "scoring/policy"):
                return super()._get_per_token_logps_and_entropies(model, *args, **kw)
    return Trainer


def rloo_result(t: dict, n: int, starts: list, t_end: float, loop, B: int, k: int) -> dict:
    """The RLOO run's result from the phase clock's totals ``t`` and the ``n`` generation batches' start times."""
    # One iteration = one generation batch and its 16 updates: from one generation's start to the next's.
    iteration_s = [b - a_ for a_, b in zip(starts, starts[1:] + [t_end])]
    dt = loop.seconds - t.get("bookkeeping", 0.0)
    gen = t["generation"]
    score = t["gen+score"] - gen - t.get("bookkeeping", 0.0)
    return {
        "side": "trl", "stage": "rloo", "trainer": "trl.RLOOTrainer", "num_generations": k, "iterations": n,
        "episodes": n * B, "seconds": dt, "cpu_s": loop.cpu, "episodes_per_s": n * B / dt, "s_per_iter": dt / n,
        "generation_s": gen / n, "scoring_s": score / n, "optimization_s": (dt - gen - score) / n,
        "scoring_split_s": {kk.split("/", 1)[1]: v / n for kk, v in t.items() if kk.startswith("scoring/")},
        "rollout_tokens_per_s": t["response_tokens"] / gen, "response_length": t["response_tokens"] / (n * B),
        "iteration_s": iteration_s,
        "decode_steps": t["decode_steps"] / n, "generation_ms_per_step": 1000 * gen / t["decode_steps"]}
