"""preferences: ingest annotation exports (any supported format) into rankings, pairs and Elo scores, with
rejects and an accounting summary; then split the ranked items into train and held-out sets by a stable hash."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from rlhf.config import PreferencesConfig
from rlhf.data import load_jsonl, write_jsonl
from rlhf.preferences.ingest import ingest
from rlhf.stages.common import StageResult

METRIC_UNSAFE = re.compile(r"[^\w./\- :]")


def is_heldout(item_id: str, val_fraction: float) -> bool:
    """Stable split: the same item is held out on every machine and every run."""
    h = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < val_fraction


def run(cfg: PreferencesConfig, on_log=None) -> StageResult:
    out = Path(cfg.out_dir)
    summary = ingest(list(cfg.inputs), out, format=cfg.format, max_reject_share=cfg.max_reject_share,
                     max_field_chars=cfg.max_field_chars, k_factor=cfg.k_factor, initial_rating=cfg.initial_rating,
                     on_progress=(lambda n: on_log(n, {"progress/records": n})) if on_log else None)
    rows = load_jsonl(out / "rankings.jsonl")
    val = [r for r in rows if is_heldout(str(r["item_id"]), cfg.val_fraction)]
    train = [r for r in rows if not is_heldout(str(r["item_id"]), cfg.val_fraction)]
    write_jsonl(out / "rankings_train.jsonl", train)
    write_jsonl(out / "rankings_val.jsonl", val)
    s = summary.to_dict()
    metrics = {k: float(v) for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in (s.get("agreement") or {}).items():
        if isinstance(v, (int, float)):
            metrics[f"agreement_{k}"] = float(v)
    for reason, n in (s.get("rejected_by_reason") or {}).items():
        # MLflow metric names allow only letters, digits, _ - . / space and :
        name = METRIC_UNSAFE.sub("", reason)[:60]
        metrics[f"rejected/{name}"] = float(n)
    metrics.update({"items_train": len(train), "items_val": len(val)})
    return StageResult(metrics, outputs={"dir": str(out), "rejects": str(out / "rejects.jsonl")})
