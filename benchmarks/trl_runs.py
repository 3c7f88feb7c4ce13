"""TRL's side of the benchmark: the same work as ours.py through TRL's trainers, on the models our pipeline saved and
the token sequences ``ours.py prepare`` wrote. Runs in TRL's own virtualenvs (this file imports nothing of the project):

    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py sft    --artifacts A --work W --out R.json --steps N
    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py reward --artifacts A --work W --out R.json --pairs N
    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py rloo   --artifacts A --work W --out R.json --episodes E
    benchmarks/.venv-trl112/bin/python benchmarks/trl_runs.py ppo    --artifacts A --work W --out R.json --episodes E

Settings that change the work are set to ours: fp32 (TRL's configs default to bf16=True), no gradient checkpointing
(TRL's default is on; we do not checkpoint), AdamW eps 1e-5, the same learning rates, schedules, sizes and seeds.
Our reward model (a GPT2Model trunk + reward_head.safetensors with a normalising gain/bias) becomes a
GPT2ForSequenceClassification (num_labels=1) on the same trunk weights with the head copied into ``score``; the
normalisation is folded into ``score`` (a bias-carrying Linear, in memory only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PhaseClock, read_jsonl, set_threads, write_jsonl, write_result  # noqa: E402

COMMON_ARGS = dict(bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                   save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0, adam_epsilon=1e-5,
                   weight_decay=0.0)


def seed_all(seed: int = 0) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def manifest(work) -> dict:
    return json.loads((Path(work) / "manifest.json").read_text())


def tokenizer(path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"        # prompts are left-padded for generation (TRL's PPO and RLOO expect that)
    return tok


def seqcls_from_ours(reward_dir: Path, normalised: bool = True):
    """GPT2ForSequenceClassification on our reward model's trunk, our head copied into ``score``."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(str(reward_dir), num_labels=1)
    head = load_file(str(reward_dir / "reward_head.safetensors"))
    gain, bias = (float(head["gain"]), float(head["norm_bias"])) if normalised else (1.0, 0.0)
    score = torch.nn.Linear(head["weight"].shape[1], 1, bias=True)
    with torch.no_grad():
        score.weight.copy_(head["weight"] * gain)
        score.bias.copy_(head["bias"] * gain + bias)
    model.score = score
    return model


# -- SFT --------------------------------------------------------------------------------------------------------------
def cmd_sft(a) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    m, art = manifest(a.work), Path(a.artifacts)
    tok = tokenizer(art / "models" / "base")
    model = AutoModelForCausalLM.from_pretrained(str(art / "models" / "base"))
    model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_list(read_jsonl(Path(a.work) / "sft.jsonl"))     # input_ids + completion_mask: our tokens
    steps = a.steps or math.ceil(m["n_sft"] / m["sft_batch"])
    cfg = SFTConfig(output_dir=str(Path(a.work) / "trl_sft"), per_device_train_batch_size=m["sft_batch"],
                    learning_rate=m["sft_lr"], lr_scheduler_type="cosine", warmup_steps=0.05, max_steps=steps,
                    max_length=m["sft_max_length"], completion_only_loss=True,
                    logging_steps=10**6, **COMMON_ARGS)
    loop = LoopTimer()

    class Trainer(SFTTrainer):
        tokens = 0

        def compute_loss(self, model, inputs, *args, **kw):
            Trainer.tokens += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kw)

    seed_all()
    trainer = Trainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[loop])
    out = trainer.train()
    write_result(a.out, {"side": "trl", "stage": "sft", "steps": out.global_step, "seconds": loop.seconds,
                         "cpu_s": loop.cpu, "tokens": Trainer.tokens, "tokens_per_s": Trainer.tokens / loop.seconds,
                         "train_loss": out.training_loss})


def LoopTimer():
    """A TrainerCallback timing the training loop (first step to the end of training)."""
    from transformers import TrainerCallback

    class _T(TrainerCallback):
        t0 = t1 = c0 = c1 = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.t1, self.c1 = time.perf_counter(), time.process_time()

        @property
        def seconds(self):
            return self.t1 - self.t0

        @property
        def cpu(self):
            return self.c1 - self.c0
    return _T()


# -- reward model -----------------------------------------------------------------------------------------------------
def cmd_reward(a) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    hf_logging.set_verbosity_error()
    m, art = manifest(a.work), Path(a.artifacts)
    tok = tokenizer(art / "models" / "sft")
    model = AutoModelForSequenceClassification.from_pretrained(str(art / "models" / "sft"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_list(read_jsonl(Path(a.work) / "reward_pairs.jsonl"))   # chosen_ids/rejected_ids: our tokens
    # Our step = 16 rankings = all their pairs; TRL's batch counts pairs: the same number of pairs per step.
    batch = round(m["reward_groups_per_step"] * m["pairs_per_group"])
    pairs = a.pairs or m["n_pairs"]
    cfg = RewardConfig(output_dir=str(Path(a.work) / "trl_reward"), per_device_train_batch_size=batch,
                       learning_rate=m["reward_lr"], lr_scheduler_type="cosine", warmup_steps=0.05,
                       max_steps=math.ceil(pairs / batch), max_length=64,
                       logging_steps=10**6, **COMMON_ARGS)
    loop = LoopTimer()

    class Trainer(RewardTrainer):
        n_pairs = 0

        def compute_loss(self, model, inputs, *args, **kw):
            Trainer.n_pairs += inputs["input_ids"].size(0) // 2
            return super().compute_loss(model, inputs, *args, **kw)

    seed_all()
    trainer = Trainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[loop])
    out = trainer.train()
    write_result(a.out, {"side": "trl", "stage": "reward", "steps": out.global_step, "seconds": loop.seconds,
                         "cpu_s": loop.cpu, "pairs": Trainer.n_pairs, "pairs_per_s": Trainer.n_pairs / loop.seconds})


# -- PPO (trl==1.12.0, trl.experimental.ppo) ----------------------------------------------------------------------------
def decode_sample(tok, query_ids, response_ids, eos_id, pad_id):
    """(prompt text, response text without EOS/pad, ended) as our decode_responses writes them."""
    q = [t for t in query_ids if t != pad_id]
    keep, ended = [], False
    for t in response_ids:
        if t == eos_id:
            ended = True
            break
        if t != pad_id:
            keep.append(t)
    return tok.decode(q), tok.decode(keep).strip(), ended


def policy_setup(a):
    """What the PPO and RLOO runs start from: the manifest, our ``ppo:`` params (``--seed`` replacing the seed),
    seeded RNGs, the tokenizer, and a loader of the SFT policy with our pad token (distinct from EOS)."""
    from transformers import AutoModelForCausalLM

    m, art, work = manifest(a.work), Path(a.artifacts), Path(a.work)
    p = {**m["ppo"], **({"seed": a.seed} if a.seed >= 0 else {})}    # --seed: one run of several seeds
    seed_all(p["seed"])
    tok = tokenizer(art / "models" / "sft")

    def load_sft():
        lm = AutoModelForCausalLM.from_pretrained(str(art / "models" / "sft"))
        lm.config.pad_token_id = tok.pad_token_id
        lm.generation_config.pad_token_id = tok.pad_token_id
        return lm
    return m, art, work, p, tok, load_sft


def cmd_ppo(a) -> None:
    import torch
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    import trl.experimental.ppo.ppo_trainer as M
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    hf_logging.set_verbosity_error()
    m, art, work, p, tok, load_sft = policy_setup(a)
    policy, ref = load_sft(), load_sft()
    reward = seqcls_from_ours(art / "models" / "reward", normalised=True)
    value = seqcls_from_ours(art / "models" / "reward", normalised=False)   # TRL's convention: critic from the RM
    for mdl in (reward, value):
        mdl.config.pad_token_id = tok.pad_token_id
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

    # Phase clocks around TRL's own module functions (wrapping, not copying, its code).
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
        if a.samples:
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
    seed_all(p["seed"])
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, eval_dataset=ds.select(range(64)), value_model=value)
    logs = []
    inner_log = trainer.log
    trainer.log = lambda logs_, *x, **k: (logs.append(dict(logs_)), inner_log(logs_, *x, **k))[1]
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    t_end, cpu = time.perf_counter(), time.process_time() - c0
    book = sum(e.get("bookkeeping", 0.0) for e in events)
    dt = t_end - t0 - book
    for i, e in enumerate(events):
        nxt = events[i + 1]["gen_start"] if i + 1 < len(events) else t_end
        e["generation"] = e["gen_end"] - e["gen_start"]
        e["scoring"] = e["opt_start"] - e["gen_end"] - e.get("bookkeeping", 0.0)
        e["optimization"] = nxt - e["opt_start"]
    n = len(events)
    if a.samples:
        write_jsonl(a.samples, samples)
    mean = lambda k: sum(e[k] for e in events) / n  # noqa: E731
    B = p["rollout_batch_size"]
    write_result(a.out, {
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
        "kl_last": logs[-1].get("objective/kl") if logs else None})


# -- RLOO (current TRL) -------------------------------------------------------------------------------------------------
def cmd_rloo(a) -> None:
    import torch
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import RLOOConfig, RLOOTrainer

    hf_logging.set_verbosity_error()
    m, art, work, p, tok, load_sft = policy_setup(a)
    policy = load_sft()
    rm = seqcls_from_ours(art / "models" / "reward", normalised=True).eval()
    rm.config.pad_token_id = tok.pad_token_id
    prompts = read_jsonl(work / "ppo_prompts.jsonl")
    ds = Dataset.from_list([{"prompt": r["prompt"], "query_ids": r["input_ids"]} for r in prompts])
    B, k = p["rollout_batch_size"], a.num_generations
    mb = B // p["num_mini_batches"]
    generations = a.episodes // B
    clock, samples, state, starts = PhaseClock(), [], {"gen": -1}, []
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
            h = rm.transformer(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state[:, -1]
            scores = rm.score(h).squeeze(-1)
            ended = torch.tensor([len(c) > 0 and c[-1] == eos for c in completion_ids])
            scores = torch.where(ended, scores, scores - p["missing_eos_penalty"])
        t0 = time.perf_counter()
        if a.samples:
            for q, c, e in zip(prompts, completion_ids, ended.tolist()):
                samples.append({"iteration": state["gen"], "prompt": q,
                                "response": tok.decode([t for t in c if t not in (eos, pad)]).strip(), "ended": e})
        clock.add("bookkeeping", time.perf_counter() - t0)
        return scores.tolist()

    cfg = RLOOConfig(output_dir=str(work / "trl_rloo"), per_device_train_batch_size=mb, steps_per_generation=B // mb,
                     gradient_accumulation_steps=1, num_generations=k, num_iterations=p["ppo_epochs"],
                     max_completion_length=p["sampling"]["max_new_tokens"], temperature=p["sampling"]["temperature"],
                     top_k=0, top_p=1.0, beta=p["kl_coef"], epsilon=p["cliprange"], learning_rate=p["lr"],
                     lr_scheduler_type=p["lr_schedule"], max_steps=generations * (B // mb) * p["ppo_epochs"],
                     max_grad_norm=p["max_grad_norm"], logging_steps=10**6, disable_dropout=True,
                     **{**COMMON_ARGS, "seed": p["seed"]})
    loop = LoopTimer()

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

    seed_all(p["seed"])
    trainer = Trainer(model=policy, reward_funcs=[reward_model], args=cfg, train_dataset=ds, processing_class=tok,
                      callbacks=[loop])
    trainer.train()
    t_end = time.perf_counter()
    t = clock.totals
    n = state["gen"] + 1
    # One iteration = one generation batch and its 16 updates: from one generation's start to the next's.
    iteration_s = [b - a_ for a_, b in zip(starts, starts[1:] + [t_end])]
    dt = loop.seconds - t.get("bookkeeping", 0.0)
    gen = t["generation"]
    score = t["gen+score"] - gen - t.get("bookkeeping", 0.0)
    if a.samples:
        write_jsonl(a.samples, samples)
    write_result(a.out, {
        "side": "trl", "stage": "rloo", "trainer": "trl.RLOOTrainer", "num_generations": k, "iterations": n,
        "episodes": n * B, "seconds": dt, "cpu_s": loop.cpu, "episodes_per_s": n * B / dt, "s_per_iter": dt / n,
        "generation_s": gen / n, "scoring_s": score / n, "optimization_s": (dt - gen - score) / n,
        "scoring_split_s": {kk.split("/", 1)[1]: v / n for kk, v in t.items() if kk.startswith("scoring/")},
        "rollout_tokens_per_s": t["response_tokens"] / gen, "response_length": t["response_tokens"] / (n * B),
        "iteration_s": iteration_s,
        "decode_steps": t["decode_steps"] / n, "generation_ms_per_step": 1000 * gen / t["decode_steps"]})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["sft", "reward", "ppo", "rloo"])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=1280)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--samples")
    ap.add_argument("--seed", type=int, default=-1, help="ppo/rloo: this seed instead of params.yaml's ppo.seed")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    os.environ.setdefault("WANDB_DISABLED", "true")
    set_threads(a.threads)
    {"sft": cmd_sft, "reward": cmd_reward, "ppo": cmd_ppo, "rloo": cmd_rloo}[a.command](a)


if __name__ == "__main__":
    main()
