"""sft: supervised fine-tuning on demonstrations, loss on the response tokens and EOS only (seed, step 1)."""
from __future__ import annotations

from pathlib import Path

from rlhf.config import SFTConfig
from rlhf.data import load_jsonl
from rlhf.modeling import load_causal_lm, load_tokenizer
from rlhf.stages.common import Recorder, StageResult, save_tokenizer_and_model, seed_everything
from rlhf.train_lm import pack_sft, sft_examples, train_causal_lm


def run(cfg: SFTConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.model_path)
    model = load_causal_lm(cfg.model_path, tok)
    train = sft_examples(tok, load_jsonl(Path(cfg.data_dir) / "sft_train.jsonl"), cfg.train.max_length)
    val = sft_examples(tok, load_jsonl(Path(cfg.data_dir) / "sft_val.jsonl"), cfg.train.max_length)
    if cfg.packing:
        train = pack_sft(train, cfg.train.max_length)
    rec = Recorder(on_log)
    metrics = train_causal_lm(model, train, cfg.train, tok.pad_token_id, cfg.seed, val_examples=val, on_log=rec)
    save_tokenizer_and_model(model, tok, cfg.out_dir)
    return StageResult(metrics, plots={"loss": rec.rows}, outputs={"model": cfg.out_dir})
