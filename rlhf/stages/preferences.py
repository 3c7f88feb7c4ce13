"""preferences: ingest annotation exports (any supported format) into rankings, pairs and Elo scores, with
rejects and an accounting summary; then split the ranked items into train and held-out sets by a stable hash."""
from __future__ import annotations

import hashlib
from pathlib import Path

from rlhf.config import PreferencesConfig
from rlhf.preferences.ingest import ingest, summary_metrics
from rlhf.stages.common import StageResult

TRAIN, VAL = "rankings_train.jsonl", "rankings_val.jsonl"


def is_heldout(item_id: str, val_fraction: float) -> bool:
    """Stable split: the same item is held out on every machine and every run."""
    h = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < val_fraction


def run(cfg: PreferencesConfig, on_log=None) -> StageResult:
    """The split files are outputs of the ingest itself: all of them are replaced together, or none."""
    out = Path(cfg.out_dir)
    split = {TRAIN: lambda row: not is_heldout(str(row["item_id"]), cfg.val_fraction),
             VAL: lambda row: is_heldout(str(row["item_id"]), cfg.val_fraction)}
    summary = ingest(list(cfg.inputs), out, format=cfg.format, max_reject_share=cfg.max_reject_share,
                     max_field_chars=cfg.max_field_chars, rating_scale=tuple(cfg.rating_scale),
                     k_factor=cfg.k_factor, initial_rating=cfg.initial_rating, elo_rounds=cfg.elo_rounds,
                     ranker_key=cfg.ranker_key, max_responses=cfg.max_responses, max_depth=cfg.max_depth,
                     max_record_bytes=cfg.max_record_bytes, refs_dir=cfg.refs_dir, columns=cfg.columns,
                     dataset=cfg.dataset, extra_outputs=split,
                     on_progress=(lambda n: on_log(n, {"progress/records": n})) if on_log else None)
    metrics = {**summary_metrics(summary), "items_train": summary.outputs[TRAIN], "items_val": summary.outputs[VAL]}
    return StageResult(metrics, outputs={"dir": str(out), "rejects": str(out / "rejects.jsonl")})
