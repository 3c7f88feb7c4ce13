"""reward: train the reward model on the ranked items, report train and held-out pairwise accuracy, then normalise
its output on reference-policy samples (seed, step 2). The model is written as a one-label
``*ForSequenceClassification`` folder that transformers loads as it is (rlhf/reward_format.py: the gain folded into
``score.weight``, the additive bias in ``config.rlhf_reward``).

Checkpoints every ``reward.train.checkpoint_every`` steps into ``<out_dir>.ckpt/`` and resumes from the newest one;
trains data-parallel under torchrun / accelerate launch (rank 0 evaluates, normalises and writes the model);
``reward.compute`` / ``reward.lora``: device, bf16, gradient checkpointing and LoRA on the trunk (rlhf/accel.py)."""
from __future__ import annotations

from rlhf.chat import check_prompts, prompt_key

import shutil
from pathlib import Path

from rlhf import accel, distributed, sharding
from rlhf.checkpoint import CheckpointManager, inputs_signature, resume, stage_fingerprint, step_saver
from rlhf.config import RewardConfig
from rlhf.data import load_jsonl
from rlhf.generation import sample_responses
from rlhf.modeling import RewardModel, load_causal_lm, load_tokenizer
from rlhf.train_reward import encode_groups, pairwise_accuracy, score_texts, set_normalization, train_reward_model
from rlhf.limits import check_fits, check_sampling
from rlhf.stages.common import Recorder, StageResult, save_tokenizer_and_model, seed_everything
from rlhf.tempdirs import atomic_output_dir


def load_elo(path: Path) -> dict:
    return {(prompt_key(r["prompt"]), r["response"]): float(r["score"]) for r in load_jsonl(path)} if path.exists() else {}


def normalize(model, tok, cfg: RewardConfig) -> dict:
    """Sample from the reference (SFT) policy and set gain/bias so those samples score mean 0, std 1."""
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    prompts = (prompts * (cfg.normalize_samples // max(len(prompts), 1) + 1))[:cfg.normalize_samples]
    policy = accel.prepare(load_causal_lm(cfg.model_path, tok, dtype=cfg.compute.dtype), accel.model_device(model), cfg.compute, trainable=False)
    s = cfg.sampling
    texts, ended = sample_responses(policy, tok, prompts, s.max_new_tokens, s.temperature, s.batch_size, cfg.seed + 1,
                                    s.max_prompt_tokens)
    raw = score_texts(model, tok, prompts, texts, ended, cfg.train.max_length, normalized=False)
    return set_normalization(model, raw)


def copy_generation_config(model_path, out_dir: Path) -> None:
    """The policy's generation_config.json beside the reward model: its end ids (rlhf/chat.py ``end_ids``) make the
    reward model's own tokenizer end a response exactly as the policy's does when scoring text."""
    src = Path(model_path) / "generation_config.json"
    if src.is_file():
        shutil.copyfile(src, Path(out_dir) / src.name)


def _whole(cfg: RewardConfig, tok, device) -> RewardModel:
    """An unsharded reward model as run() builds it, for FSDP's gathered weights (rlhf/sharding.py gathered)."""
    model = RewardModel.from_causal_lm_path(cfg.model_path, tok)
    return accel.prepare(model, device, cfg.compute, trainable=False, hf=model.trunk)


def run(cfg: RewardConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    check_fits(cfg.model_path, cfg.train.max_length, "reward.train.max_length")     # before any weights load
    check_sampling(cfg.model_path, cfg.sampling, "reward")
    dist = distributed.init()
    device = accel.resolve_device(cfg.compute.device, dist.local_rank, "reward.compute.device")
    data = Path(cfg.data_dir)
    tok = load_tokenizer(cfg.model_path)
    if cfg.lora.r:
        distributed.refuse_sharded(dist, "reward.lora (LoRA)")
    elo = load_elo(data / "elo.jsonl") if cfg.loss == "elo" else None
    train, val = (encode_groups(tok, load_jsonl(data / name), cfg.train.max_length, elo, str(data / name))
                  for name in ("rankings_train.jsonl", "rankings_val.jsonl"))     # rendered before weights load
    if not train:
        raise ValueError(f"{data / 'rankings_train.jsonl'}: no ranked items to train on")
    if cfg.normalize:
        check_prompts(tok, [r["prompt"] for r in load_jsonl(cfg.prompts)], cfg.prompts)
    model = RewardModel.from_causal_lm_path(cfg.model_path, tok)
    if cfg.lora.r:
        model.trunk = accel.apply_lora(model.trunk, cfg.lora, causal_lm=False)
    accel.prepare(model, device, cfg.compute, hf=model.trunk)
    rec = Recorder(on_log if dist.is_main else None)
    inputs = inputs_signature(cfg.model_path, data, cfg.prompts)
    ckpt = CheckpointManager(cfg.out_dir, cfg.train.checkpoint_every, is_main=dist.is_main,
                             fingerprint=stage_fingerprint(cfg, dist.layout, inputs, __name__))
    models = {"reward": model}
    state = resume(ckpt, models, rec)
    metrics = train_reward_model(model, train, cfg.train, tok.pad_token_id, cfg.loss, cfg.margin, cfg.seed, on_log=rec,
                                 state=state, on_step_end=step_saver(ckpt, models, rec, dist), dist=dist)
    distributed.assert_in_sync(model, dist)
    model = sharding.gathered(model, dist, lambda: _whole(cfg, tok, device))    # FSDP: whole on rank 0
    if dist.is_main:   # evaluation and normalisation are cheap next to training: rank 0 alone, as one process does
        metrics["train_accuracy"] = pairwise_accuracy(model, train, tok.pad_token_id)
        metrics["val_accuracy"] = pairwise_accuracy(model, val, tok.pad_token_id) if val else float("nan")
        if cfg.normalize:
            metrics.update(normalize(model, tok, cfg))
        with atomic_output_dir(cfg.out_dir) as tmp:
            model.trunk = accel.merge_lora(model.trunk, tmp / accel.ADAPTER_DIR)
            save_tokenizer_and_model(model, tok, tmp)        # a *ForSequenceClassification folder (reward_format)
            copy_generation_config(cfg.model_path, tmp)
    ckpt.clear()
    distributed.barrier(dist)
    return StageResult(metrics, plots={"loss": rec.rows}, outputs={"model": cfg.out_dir})
