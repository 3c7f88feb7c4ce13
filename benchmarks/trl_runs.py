"""TRL's side of the benchmark: the same work as ours.py through TRL's trainers, on the models our pipeline saved and
the token sequences ``ours.py prepare`` wrote. Runs in TRL's own virtualenvs (this file, trl_common.py and
trl_ppo_rloo.py, where the PPO and RLOO runs are, import nothing of the project):

    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py sft    --artifacts A --work W --out R.json --steps N
    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py reward --artifacts A --work W --out R.json --pairs N
    benchmarks/.venv-trl/bin/python    benchmarks/trl_runs.py rloo   --artifacts A --work W --out R.json --episodes E
    benchmarks/.venv-trl112/bin/python benchmarks/trl_runs.py ppo    --artifacts A --work W --out R.json --episodes E

Settings that change the work are set to ours: fp32 (TRL's configs default to bf16=True), no gradient checkpointing
(TRL's default is on; we do not checkpoint), AdamW eps 1e-5, the same learning rates, schedules, sizes and seeds.
Our reward model is a GPT2ForSequenceClassification folder (num_labels=1, the normalising gain folded into
``score.weight``, the bias in ``config.rlhf_reward``); TRL gets it with ``score`` replaced by a bias-carrying Linear
whose logit is the normalised (or raw) score, in memory only.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_jsonl, set_threads, write_result  # noqa: E402
from trl_common import COMMON_ARGS, LoopTimer, manifest, seed_all, tokenizer  # noqa: E402
from trl_ppo_rloo import cmd_ppo, cmd_rloo  # noqa: E402


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
