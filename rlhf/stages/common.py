"""What every stage returns, and small helpers shared by the stage modules."""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

LogFn = Optional[Callable[[int, dict], None]]


@dataclass
class StageResult:
    metrics: dict[str, float]                                      # final metrics (metrics/<stage>.json)
    plots: dict[str, list[dict]] = field(default_factory=dict)     # plot name -> rows (plots/<stage>/<name>.json)
    outputs: dict[str, str] = field(default_factory=dict)          # role -> path (models, datasets, rejects)


def note(line: str) -> None:
    """One line for the user on stderr (what a stage decided for them), outside the metric log."""
    print(line, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Recorder:
    """Wraps an on_log callback and keeps every logged row for the stage's plots."""

    def __init__(self, on_log: LogFn):
        self.on_log, self.rows = on_log, []

    def __call__(self, step: int, metrics: dict) -> None:
        self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        if self.on_log:
            self.on_log(step, metrics)


def save_tokenizer_and_model(model, tokenizer, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
