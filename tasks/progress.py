"""Progress display for a stage's ``on_log(step, metrics)`` stream (DESIGN invariant 4: the core reports through
that callback; only the orchestration layers draw it).

``Progress`` is itself an ``on_log`` callable. On a terminal it draws a tqdm bar, redrawn at most ``min_redraw_s``
apart (count, rate, ETA, a few metrics as its postfix); elsewhere (CI logs, Prefect, files) it prints a plain
line at the first step, then at most every ``every_s`` seconds, and at the last step, so logs stay short and
greppable. ``RLHF_PROGRESS=bar|lines|off`` overrides the choice. tqdm is imported only when a bar is drawn.

``expected_total(stage, cfg, root)`` is the number of steps a stage will report when it can be known before the
stage runs (from the config and the row counts of its input files), else None (then no bar or ETA, only counts);
``for_stage(stage, cfg)`` builds a stage's display with it. Wiring (tasks/tracking.py owns the callback)::

    progress = for_stage(stage, cfg)            # in StageLogger.__init__
    progress(step, clean_metrics)               # in StageLogger.__call__, after mlflow.log_metrics
    progress.close()                            # when the stage returns or raises
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

MODES = ("bar", "lines", "off")
# What one on_log step counts, per stage (the training loops count optimiser steps).
UNITS = {"ppo": "iteration", "collect": "response", "preferences": "record"}

# The metrics each stage's progress line shows first (names from the core's on_log calls).
SHOWN = {
    "pretrain": ("loss/train",), "sft": ("loss/train",), "reward": ("loss/reward", "reward/accuracy"),
    "ppo": ("objective/scores", "objective/kl", "objective/kl_coef", "policy/clipfrac_avg"),
}


def choose_mode(stream: TextIO, env: Optional[dict] = None) -> str:
    """bar on an interactive terminal, lines otherwise; RLHF_PROGRESS overrides."""
    env = os.environ if env is None else env
    forced = env.get("RLHF_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and env.get("TERM") != "dumb" and not env.get("CI") else "lines"


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``on_log``-compatible progress: ``progress(step, metrics)``; ``close()`` ends a bar with a newline."""

    def __init__(self, label: str, total: Optional[int] = None, unit: str = "step", every_s: float = 5.0,
                 stream: Optional[TextIO] = None, mode: Optional[str] = None, keys: tuple[str, ...] = (),
                 max_metrics: int = 4, min_redraw_s: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 show_first: bool = True):
        self.label, self.total, self.unit = label, (total if total and total > 0 else None), unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or choose_mode(self.stream)
        if self.mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        self.every_s, self.min_redraw_s, self.clock = every_s, min_redraw_s, clock
        self.keys, self.max_metrics = tuple(keys), max_metrics
        self.t0 = clock()
        self.first_step: Optional[float] = None
        self.show_first = show_first       # False: nothing until the first interval has passed (quick jobs stay quiet)
        self.last_print = -math.inf if show_first else self.t0
        self.step, self.metrics = 0.0, {}
        self.drawn = False
        self._tqdm = None

    # -- on_log ----------------------------------------------------------------------------------------------------
    def __call__(self, step: float, metrics: Optional[dict] = None) -> None:
        now = self.clock()
        if self.first_step is None:
            self.first_step, self.t_first = float(step), now
        self.step, self.metrics = float(step), dict(metrics or {})
        if self.mode == "off":
            return
        final = self.total is not None and step >= self.total
        wait = self.min_redraw_s if self.mode == "bar" else self.every_s
        if not (final or (not self.drawn and self.show_first) or now - self.last_print >= wait):
            return
        self.last_print = now
        if self.mode == "bar":
            self._draw_bar()
        else:
            self.stream.write(self.render(now) + "\n")
            self.stream.flush()
        self.drawn = True

    def _draw_bar(self) -> None:
        """The terminal bar is tqdm's (count, rate, ETA and our metrics as its postfix); we only throttle."""
        if self._tqdm is None:
            from tqdm import tqdm
            self._tqdm = tqdm(total=self.total, desc=f"[{self.label}]", unit=self.unit, file=self.stream,
                              dynamic_ncols=True, mininterval=0, leave=True)
        self._tqdm.n = int(self.step) if float(self.step).is_integer() else self.step
        self._tqdm.set_postfix_str(" ".join(f"{k}={_num(v)}" for k, v in self.shown_metrics()), refresh=False)
        self._tqdm.refresh()

    def close(self) -> None:
        """Finish the bar's line (a no-op in lines mode)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self.drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- text ------------------------------------------------------------------------------------------------------
    def rate(self, now: float) -> Optional[float]:
        """Steps per second since the first report (the first step's own duration is unknown)."""
        if self.first_step is None or now <= self.t_first or self.step <= self.first_step:
            return None
        return (self.step - self.first_step) / (now - self.t_first)

    def render(self, now: Optional[float] = None) -> str:
        now = self.clock() if now is None else now
        step = int(self.step) if float(self.step).is_integer() else self.step
        parts = [f"[{self.label}]"]
        rate = self.rate(now)
        if self.total:
            frac = min(self.step / self.total, 1.0)
            parts.append(f"{step}/{self.total} {self.unit}s {frac:4.0%}")
        else:
            parts.append(f"{self.unit} {step}")
        parts.append(f"{fmt_duration(now - self.t0)} elapsed")
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.step < self.total:
                parts.append(f"eta {fmt_duration((self.total - self.step) / rate)}")
        shown = self.shown_metrics()
        if shown:
            parts.append(" ".join(f"{k}={_num(v)}" for k, v in shown))
        return " ".join(parts)

    def shown_metrics(self) -> list[tuple[str, float]]:
        """The preferred keys first, then other metrics (not perf/ or time/ counters), at most max_metrics."""
        keys = [k for k in self.keys if k in self.metrics]
        keys += [k for k in self.metrics if k not in keys and not k.startswith(("perf/", "time/", "progress/"))]
        out = []
        for k in keys:
            try:
                out.append((k, float(self.metrics[k])))
            except (TypeError, ValueError):
                continue
            if len(out) == self.max_metrics:
                break
        return out


def _num(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


# ------------------------------------------------------------------------------------------------- expected totals
def _rows(path: Path) -> Optional[int]:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def _train_steps(n: Optional[int], train) -> Optional[int]:
    """Optimiser steps of rlhf.train_lm.plan_batches: round(ceil(n / batch_size) * epochs), at least 1."""
    if not n:
        return None
    return max(1, int(round(math.ceil(n / train.batch_size) * train.epochs)))


def expected_total(stage: str, cfg: Any, root: str | Path = ".") -> Optional[int]:
    """The last ``step`` the stage passes to on_log, when knowable before it runs; else None.

    pretrain packs the tokenised corpus into blocks (count unknown until the tokenizer exists), preferences counts
    records as it streams them, and the other stages do not report steps: those give None."""
    root = Path(root)
    if stage == "ppo":
        return cfg.total_episodes // cfg.rollout_batch_size
    if stage == "sft" and not cfg.packing:
        return _train_steps(_rows(root / cfg.data_dir / "sft_train.jsonl"), cfg.train)
    if stage == "reward":
        return _train_steps(_rows(root / cfg.data_dir / "rankings_train.jsonl"), cfg.train)
    if stage == "collect":
        n = _rows(root / cfg.prompts)
        if n is None:
            return None
        return (min(n, cfg.max_prompts) if cfg.max_prompts else n) * cfg.k
    return None


def for_stage(stage: str, cfg: Any = None, root: str | Path = ".", **kwargs: Any) -> Progress:
    """The progress display of one stage: its label, unit, expected total (when knowable) and preferred metrics."""
    total = expected_total(stage, cfg, root) if cfg is not None else None
    kwargs.setdefault("unit", UNITS.get(stage, "step"))
    kwargs.setdefault("keys", SHOWN.get(stage, ()))
    return Progress(stage, total=total, **kwargs)
