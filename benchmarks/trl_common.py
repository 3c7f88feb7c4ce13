"""What the TRL side's runs share (benchmarks/trl_runs.py, trl_ppo_rloo.py): TRL's training arguments set to our
settings, seeding, the manifest of ``ours.py prepare``, our models as TRL takes them, a timer of the training loop.
Runs in TRL's own virtualenvs: imports nothing of the project."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

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
    """Our reward model (a GPT2ForSequenceClassification folder, rlhf/reward_format.py) with ``score`` given a bias,
    so that its logit is the normalised score (``logits + config.rlhf_reward["bias"]``) or, ``normalised`` False,
    the raw one (``(logits + bias) * raw_std + raw_mean``)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(str(reward_dir), num_labels=1)
    meta = model.config.rlhf_reward
    scale, shift = (1.0, 0.0) if normalised else (meta["raw_std"], meta["raw_mean"])
    w = model.score.weight.detach()
    score = torch.nn.Linear(w.shape[1], 1, bias=True)
    with torch.no_grad():
        score.weight.copy_(w * scale)
        score.bias.fill_(meta["bias"] * scale + shift)
    model.score = score
    return model


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
