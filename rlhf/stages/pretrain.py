"""pretrain: a byte-level BPE tokenizer and a small GPT-2 trained from scratch on the corpus (seed, step 1);
or, when ``pretrain.model_path`` names a local Hugging Face checkpoint, that model instead.

Checkpoints every ``pretrain.train.checkpoint_every`` steps into ``<out_dir>.ckpt/`` and resumes from the newest one
(the tokenizer is retrained: BPE training is deterministic for the same corpus, and the checkpoint's fingerprint
includes the corpus files); runs data-parallel under torchrun / accelerate launch like sft; ``pretrain.compute``
places the model and switches on bf16 and gradient checkpointing (rlhf/accel.py)."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel, distributed, sharding
from rlhf.checkpoint import CheckpointManager, inputs_signature, resume, stage_fingerprint, step_saver
from rlhf.config import PretrainConfig
from rlhf.data import load_jsonl
from rlhf.hub import resolve_model_path
from rlhf.modeling import build_gpt2, load_causal_lm, load_tokenizer, train_tokenizer
from rlhf.stages.common import Recorder, StageResult, n_params, save_tokenizer_and_model, seed_everything
from rlhf.tempdirs import atomic_output_dir
from rlhf.train_lm import pack_corpus, train_causal_lm


def run(cfg: PretrainConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir)
    if cfg.model_path:
        path = resolve_model_path(cfg.model_path, "pretrain.model_path")     # a local folder, or a hub id
        tok = load_tokenizer(path)
        model = load_causal_lm(path, tok)
        with atomic_output_dir(out) as tmp:
            save_tokenizer_and_model(model, tok, tmp)
        # plots stays declared (dvc.yaml lists plots/pretrain/loss.json): an empty curve, not a missing file.
        return StageResult({"n_params": n_params(model), "from_checkpoint": 1.0}, plots={"loss": []},
                           outputs={"model": str(out)})
    dist = distributed.init()
    device = accel.resolve_device(cfg.compute.device, dist.local_rank, "pretrain.compute.device")
    data = Path(cfg.data_dir)
    train = [r["text"] for r in load_jsonl(data / "corpus_train.jsonl")]
    val = [r["text"] for r in load_jsonl(data / "corpus_val.jsonl")]
    tok = train_tokenizer(train, cfg.tokenizer)
    model = build_gpt2(cfg.model, tok, cfg.seed)
    accel.prepare(model, device, cfg.compute)
    block = min(cfg.train.max_length, cfg.model.n_positions)
    rec = Recorder(on_log if dist.is_main else None)
    inputs = inputs_signature(data / "corpus_train.jsonl", data / "corpus_val.jsonl")
    ckpt = CheckpointManager(out, cfg.train.checkpoint_every, is_main=dist.is_main,
                             fingerprint=stage_fingerprint(cfg, dist.layout, inputs, __name__))
    models = {"model": model}
    state = resume(ckpt, models, rec)
    metrics = train_causal_lm(model, pack_corpus(tok, train, block), cfg.train, tok.pad_token_id, cfg.seed,
                              val_examples=pack_corpus(tok, val, block), on_log=rec, state=state,
                              on_step_end=step_saver(ckpt, models, rec, dist), dist=dist)
    distributed.assert_in_sync(model, dist)
    model = sharding.gathered(model, dist, lambda: build_gpt2(cfg.model, tok, cfg.seed))   # FSDP: whole on rank 0
    if dist.is_main:
        with atomic_output_dir(out) as tmp:
            save_tokenizer_and_model(model, tok, tmp)
    ckpt.clear()
    distributed.barrier(dist)
    metrics.update({"n_params": n_params(model), "vocab_size": len(tok), "from_checkpoint": 0.0})
    return StageResult(metrics, plots={"loss": rec.rows}, outputs={"model": str(out)})
