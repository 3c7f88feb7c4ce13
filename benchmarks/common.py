"""Helpers shared by the benchmark scripts of BOTH sides (ours and TRL's): no project import here, so the TRL
virtualenvs can use this module too (it needs only the standard library and torch)."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path


def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1) if hasattr(torch, "set_num_interop_threads") else None


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_result(path, result: dict) -> None:
    """Every measured run ends by writing one JSON object (with its own peak RSS) to ``path``."""
    import torch
    result = {**result, "peak_rss_mb_self": peak_rss_mb(), "torch_threads": torch.get_num_threads()}
    Path(path).write_text(json.dumps(result, indent=1, default=float) + "\n")


class PhaseClock:
    """Accumulates wall time per named phase: ``with clock("generation"): ...``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def __call__(self, name: str):
        clock = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                clock.totals[name] = clock.totals.get(name, 0.0) + time.perf_counter() - self.t0
        return _Ctx()

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds


def timed_method(obj, name: str, clock: PhaseClock, phase: str, when=lambda: True):
    """Wrap ``obj.name`` so that its calls add their wall time to ``clock[phase]`` when ``when()`` is true."""
    inner = getattr(obj, name)

    def wrapper(*a, **k):
        if not when():
            return inner(*a, **k)
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            clock.add(phase, time.perf_counter() - t0)
    setattr(obj, name, wrapper)
    return inner


def env_threads(default: int = 2) -> int:
    return int(os.environ.get("OMP_NUM_THREADS", default))


def ppo_overrides(cfg, sets: list[str]):
    """``cfg`` (a PPOConfig) with ``--set KEY=VALUE`` overrides (YAML values), checked like params.yaml (an unknown
    key or a wrong type is an error naming it). Our side only: imports the project."""
    if not sets:
        return cfg
    import dataclasses

    import yaml
    from rlhf.config import PPOConfig, from_dict
    values = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in sets)}
    return from_dict(PPOConfig, {**dataclasses.asdict(cfg), **values}, "ppo")
