"""sft: supervised fine-tuning on demonstrations, loss on the response tokens and EOS only (seed, step 1).

Checkpoints every ``sft.train.checkpoint_every`` steps into ``<out_dir>.ckpt/`` and resumes from the newest one;
runs data-parallel under torchrun / accelerate launch (rank 0 writes the model); ``sft.compute`` and ``sft.lora``
place the model and switch on bf16, gradient checkpointing and LoRA (rlhf/accel.py)."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel, distributed, sharding
from rlhf.checkpoint import CheckpointManager, inputs_signature, resume, stage_fingerprint, step_saver
from rlhf.chat import has_template, read_template, stop_ids
from rlhf.config import SFTConfig
from rlhf.hub import resolve_model_path
from rlhf.limits import check_fits
from rlhf.data import load_jsonl
from rlhf.modeling import load_causal_lm, load_tokenizer
from rlhf.stages.common import Recorder, StageResult, note, save_tokenizer_and_model, seed_everything
from rlhf.tempdirs import atomic_output_dir
from rlhf.train_lm import Example, pack_sft, sft_examples, train_causal_lm


def with_targets(examples: list[Example], where: str, max_length: int, required: bool) -> list[Example]:
    """The demonstrations that keep at least one assistant token within ``sft.train.max_length`` (a conversation is
    cut at its end, so a long one can lose every assistant turn). The others are left out with one line saying how
    many and the first one's line; none left in the training file is an error naming the key."""
    kept = [e for e in examples if any(e.mask)]
    lost = [line for line, e in enumerate(examples, 1) if not any(e.mask)]
    if lost and required and not kept:
        raise ValueError(f"{where}: no demonstration has an assistant token within sft.train.max_length "
                         f"({max_length}); raise it")
    if lost:
        note(f"sft: {len(lost)} of {len(examples)} demonstrations in {where} have no assistant token within "
             f"sft.train.max_length ({max_length}) and are left out (the first: line {lost[0]}); raise it to keep them")
    return kept


def run(cfg: SFTConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    dist = distributed.init()
    device = accel.resolve_device(cfg.compute.device, dist.local_rank, "sft.compute.device")
    model_path = resolve_model_path(cfg.model_path, "sft.model_path")       # a local folder, or a hub id
    check_fits(model_path, cfg.train.max_length, "sft.train.max_length")
    tok = load_tokenizer(model_path)
    if cfg.chat_template:                      # saved with the model: every later stage renders with it
        tok.chat_template = read_template(cfg.chat_template)
    if cfg.lora.r:
        distributed.refuse_sharded(dist, "sft.lora (LoRA)")
    data = Path(cfg.data_dir)

    def examples(name: str, required: bool) -> list[Example]:      # every row through the template, before weights
        where = str(data / name)
        return with_targets(sft_examples(tok, load_jsonl(data / name), cfg.train.max_length, where), where,
                            cfg.train.max_length, required)
    train, val = examples("sft_train.jsonl", required=True), examples("sft_val.jsonl", required=False)
    model = load_causal_lm(model_path, tok, dtype=cfg.compute.dtype)
    if cfg.lora.r:
        model = accel.apply_lora(model, cfg.lora, causal_lm=True)
    accel.prepare(model, device, cfg.compute)
    if cfg.packing:
        train = pack_sft(train, cfg.train.max_length)
    rec = Recorder(on_log if dist.is_main else None)
    inputs = inputs_signature(model_path, data / "sft_train.jsonl", data / "sft_val.jsonl")
    ckpt = CheckpointManager(cfg.out_dir, cfg.train.checkpoint_every, is_main=dist.is_main,
                             fingerprint=stage_fingerprint(cfg, dist.layout, inputs, __name__))
    models = {"model": model}
    state = resume(ckpt, models, rec)
    metrics = train_causal_lm(model, train, cfg.train, tok.pad_token_id, cfg.seed, val_examples=val, on_log=rec,
                              state=state, on_step_end=step_saver(ckpt, models, rec, dist), dist=dist)
    distributed.assert_in_sync(model, dist)
    model = sharding.gathered(model, dist, lambda: accel.prepare(       # FSDP: rank 0 gets the whole model
        load_causal_lm(model_path, tok, dtype=cfg.compute.dtype), device, cfg.compute, trainable=False))
    if dist.is_main:
        if has_template(tok):                  # sampling stops on the template's end of turn wherever it is loaded
            accel.hf_model(model).generation_config.eos_token_id = stop_ids(tok)
        with atomic_output_dir(cfg.out_dir) as tmp:
            save_tokenizer_and_model(accel.merge_lora(model, tmp / accel.ADAPTER_DIR), tok, tmp)
    ckpt.clear()
    distributed.barrier(dist)
    return StageResult(metrics, plots={"loss": rec.rows}, outputs={"model": cfg.out_dir})
