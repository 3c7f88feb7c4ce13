"""prepare: validate the raw data (data/) and split it into the datasets the other stages read.

Every input record ends in an output file or in rejects.jsonl with its file, line and reason (DESIGN invariant 7)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf.config import PrepareConfig
from rlhf.data import DataError, write_jsonl
from rlhf.stages.common import StageResult

SCHEMAS = {"corpus.jsonl": ("text",), "sft.jsonl": ("prompt", "completion"), "prompts.jsonl": ("prompt", "split")}
PROMPT_SPLITS = ("annotate", "ppo", "eval")


def validate(obj, fields: tuple[str, ...], max_chars: int) -> str | None:
    """None when the record is usable, else the reason."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for f in fields:
        if f not in obj:
            return f"missing field '{f}'"
        if not isinstance(obj[f], str):
            return f"field '{f}' must be a string"
        if not obj[f].strip():
            return f"empty field '{f}'"
        if len(obj[f]) > max_chars:
            return f"field '{f}' longer than {max_chars} characters"
    if "split" in fields and obj["split"] not in PROMPT_SPLITS:
        return f"unknown split {obj['split']!r} (expected one of {', '.join(PROMPT_SPLITS)})"
    return None


def read_valid(path: Path, fields: tuple[str, ...], max_chars: int, rejects: list[dict]) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: no such file (prepare expects {', '.join(SCHEMAS)} in the data folder)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rejects.append({"source": str(path), "line": i, "reason": f"invalid JSON: {e.msg}", "record": line[:2000]})
                continue
            reason = validate(obj, fields, max_chars)
            if reason:
                rejects.append({"source": str(path), "line": i, "reason": reason, "record": line[:2000]})
            else:
                rows.append(obj)
    return rows


def split(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(rows) * val_fraction))
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def run(cfg: PrepareConfig, on_log=None) -> StageResult:
    data, out = Path(cfg.data_dir), Path(cfg.out_dir)
    rejects: list[dict] = []
    read = {}
    tables = {}
    for name, fields in SCHEMAS.items():
        before = len(rejects)
        tables[name] = read_valid(data / name, fields, cfg.max_chars, rejects)
        read[name] = len(tables[name]) + len(rejects) - before
    outputs = {}
    for name, key in (("corpus.jsonl", "corpus"), ("sft.jsonl", "sft")):
        train, val = split(tables[name], cfg.val_fraction, cfg.seed)
        for part, rows in (("train", train), ("val", val)):
            path = out / f"{key}_{part}.jsonl"
            write_jsonl(path, rows)
            outputs[f"{key}_{part}"] = str(path)
    for s in PROMPT_SPLITS:
        path = out / f"prompts_{s}.jsonl"
        write_jsonl(path, [r for r in tables["prompts.jsonl"] if r["split"] == s])
        outputs[f"prompts_{s}"] = str(path)
    write_jsonl(out / "rejects.jsonl", rejects)
    accepted = sum(len(t) for t in tables.values())
    assert sum(read.values()) == accepted + len(rejects), "prepare lost records"
    metrics = {"records_read": sum(read.values()), "records_accepted": accepted, "records_rejected": len(rejects),
               **{f"n_{k.split('.')[0]}": len(v) for k, v in tables.items()}}
    if on_log:
        on_log(0, metrics)
    return StageResult(metrics, outputs={**outputs, "rejects": str(out / "rejects.jsonl")})
