"""Judges for `evaluate` and promotion: what scores SFT against the policy on held-out prompts.

``evaluate.judge`` names one (the promotion gates use the same judge, so they read whatever metrics it produces):

* ``gold``: the demo's noise-free annotator preference (rlhf/demo/judge.py), learnt from ``evaluate.corpus``;
* ``reward_model``: the reward model at ``evaluate.reward_path`` (the one PPO optimised: a proxy, so its win rate
  overstates real gains; see "over-optimisation" in docs/stages.md);
* ``reward_model:PATH``: another reward model (a held-out or larger one), any sequence-classification reward
  model folder;
* ``module:function``: a Python callable ``function(prompts, responses, ended) -> list[float]`` (importable from
  the working directory or the installed packages), e.g. a wrapper around an LLM judge of your choice.

A judge has ``score_many(prompts, responses, ended) -> list[float]`` (higher is better) and a ``name``. Prompts may
be text or chat messages; each judge gets them as it needs (the gold judge reads the last user turn).

``ppo.probe.judge`` takes the same specs (with ``ppo.probe.corpus``): the judge of PPO's over-optimisation curve
(rlhf/probe.py), read against the reward model PPO optimises.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhf.chat import prompt_text


class JudgeError(ValueError):
    """An ``evaluate.judge`` (or ``ppo.probe.judge``) that cannot be loaded (one line naming the key)."""


class GoldJudgeOnText:
    """The demo's gold judge, fed the prompt's text."""
    name = "gold"

    def __init__(self, corpus: str | Path, key: str = "evaluate"):
        from rlhf.demo.judge import GoldJudge
        if not Path(corpus).is_file():
            raise JudgeError(f"{key}.corpus: {corpus} not found (the gold judge learns its fluency from it)")
        self.inner = GoldJudge.from_corpus(corpus)

    def score_many(self, prompts: Sequence, responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        return self.inner.score_many([prompt_text(p) for p in prompts], responses, ended)


class RewardModelJudge:
    """A reward model as the judge: its normalised score of each (prompt, response)."""

    def __init__(self, scorer: Any, name: str, max_length: int):
        self.scorer, self.name, self.max_length = scorer, name, max_length

    def score_many(self, prompts: Sequence, responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        from rlhf.evaluation import Samples, rm_scores
        return rm_scores(self.scorer, list(prompts), Samples(list(responses), list(ended)), self.max_length)


class CallableJudge:
    """A user's function ``f(prompts, responses, ended) -> scores``."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def score_many(self, prompts: Sequence, responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        scores = [float(s) for s in self.fn(list(prompts), list(responses), list(ended))]
        if len(scores) != len(responses):
            raise JudgeError(f"judge {self.name}: returned {len(scores)} scores for {len(responses)} responses")
        return scores


def import_callable(spec: str, key: str = "evaluate") -> Callable:
    """``module:function`` -> the function (the working directory is importable, as for `python -m`); ``key``: the
    config section errors name."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise JudgeError(f"{key}.judge: {spec!r} is not module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise JudgeError(f"{key}.judge: cannot import {spec!r}: {e}") from None
    if not callable(fn):
        raise JudgeError(f"{key}.judge: {spec!r} is not callable")
    return fn


def check_spec(spec: str, key: str = "evaluate") -> str:
    """The judge kind (gold | reward_model | callable), or JudgeError for a malformed spec (before work starts);
    ``key``: the config section whose ``judge`` it is (``evaluate``, ``ppo.probe``), named in the error."""
    if spec in ("gold", "reward_model"):
        return spec
    if spec.startswith("reward_model:"):
        if not Path(spec.split(":", 1)[1]).is_dir():
            raise JudgeError(f"{key}.judge: reward model folder {spec.split(':', 1)[1]} not found")
        return "reward_model"
    if ":" in spec:
        return "callable"
    raise JudgeError(f"{key}.judge: {spec!r}: expected gold, reward_model, reward_model:PATH or module:function")


def load_judge(spec: str, corpus: str, reward_path: str, load_scorer: Callable[[str], Any], max_length: int,
               key: str = "evaluate"):
    """The judge ``spec`` names; ``load_scorer(path)`` loads a reward model as a scorer (.model, .tok); ``key``: the
    config section of ``spec`` and ``corpus``, named in errors."""
    kind = check_spec(spec, key)
    if kind == "gold":
        return GoldJudgeOnText(corpus, key)
    if kind == "reward_model":
        path = spec.split(":", 1)[1] if ":" in spec else reward_path
        return RewardModelJudge(load_scorer(path), f"reward_model:{path}", max_length)
    return CallableJudge(import_callable(spec, key), spec)
