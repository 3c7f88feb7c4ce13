"""preferences: ingest annotation exports (any supported format) into rankings, pairs and Elo scores, with
rejects and an accounting summary; then split the ranked items into train and held-out sets by a stable hash."""
from __future__ import annotations

import hashlib
from pathlib import Path

from rlhf.config import PreferencesConfig
from rlhf.data import load_jsonl, write_jsonl
from rlhf.preferences.ingest import ingest, summary_metrics
from rlhf.stages.common import StageResult


def is_heldout(item_id: str, val_fraction: float) -> bool:
    """Stable split: the same item is held out on every machine and every run."""
    h = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < val_fraction


def run(cfg: PreferencesConfig, on_log=None) -> StageResult:
    out = Path(cfg.out_dir)
    summary = ingest(list(cfg.inputs), out, format=cfg.format, max_reject_share=cfg.max_reject_share,
                     max_field_chars=cfg.max_field_chars, rating_scale=tuple(cfg.rating_scale),
                     k_factor=cfg.k_factor, initial_rating=cfg.initial_rating, elo_rounds=cfg.elo_rounds,
                     ranker_key=cfg.ranker_key, columns=cfg.columns, dataset=cfg.dataset,
                     on_progress=(lambda n: on_log(n, {"progress/records": n})) if on_log else None)
    rows = load_jsonl(out / "rankings.jsonl")
    val = [r for r in rows if is_heldout(str(r["item_id"]), cfg.val_fraction)]
    train = [r for r in rows if not is_heldout(str(r["item_id"]), cfg.val_fraction)]
    write_jsonl(out / "rankings_train.jsonl", train)
    write_jsonl(out / "rankings_val.jsonl", val)
    metrics = {**summary_metrics(summary), "items_train": len(train), "items_val": len(val)}
    return StageResult(metrics, outputs={"dir": str(out), "rejects": str(out / "rejects.jsonl")})
