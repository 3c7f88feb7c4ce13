"""Data plumbing: JSONL files (atomic writes), tokenisation of prompt/response pairs, left-padded batches.

Left padding everywhere: prompts end at the same column, so generation appends in place, the reward model reads
the last position, and the response of every row starts at the same index (context length).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from rlhf.chat import encode_prompt, encode_response  # noqa: F401  (the encoders live with the renderer)
from rlhf.jsonl import iter_lines, json_line
from rlhf.tempdirs import atomic_path


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the objects of a JSONL file; a bad line raises DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    for i, _, obj, error in iter_lines(path):
        if error:
            raise DataError(f"{path}:{i}: {error}")
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def load_jsonl(path: str | Path) -> list[dict]:
    return list(read_jsonl(path))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json_line(row, sort_keys=True) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def pad_left(seqs: list[list[int]], pad_id: int, masks: list[list[int]] | None = None):
    """Left-pad token lists into (input_ids (B, T), attention_mask (B, T)[, loss_mask (B, T)])."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss = torch.zeros((len(seqs), width), dtype=torch.float) if masks is not None else None
    for i, s in enumerate(seqs):
        if not s:
            continue
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s):] = 1
        if loss is not None:
            loss[i, width - len(s):] = torch.tensor(masks[i], dtype=torch.float)
    return (ids, attn) if loss is None else (ids, attn, loss)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True) -> list[list[int]]:
    """Index batches over range(n), shuffled with ``generator``; the last short batch is kept."""
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
