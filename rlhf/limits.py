"""Lengths checked before any model loads its weights: a sequence a stage will build must fit the positions of the
model it goes through (read from config.json alone, milliseconds). One line naming the params key on failure."""
from __future__ import annotations

import json
from pathlib import Path

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len")


class LengthError(ValueError):
    """A configured length that the model cannot hold."""


def text_config(config):
    """The text part of a (possibly multimodal) transformers config, or the config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def positions(config) -> int | None:
    """The longest sequence a model takes, from its config (a transformers config or config.json as a dict; the
    smallest of the position keys it sets), None when it does not say."""
    if config is None:
        return None
    if isinstance(config, dict):
        get = {**config.get("text_config", {}), **config}.get
    else:
        text = text_config(config)
        get = lambda k: getattr(text, k, None)                       # noqa: E731
    values = [get(k) for k in POSITION_KEYS if isinstance(get(k), int) and get(k) > 0]
    return min(values) if values else None


def max_positions(model_path: str | Path) -> int | None:
    """The longest sequence a local model folder can take, from its config.json (None when it does not say)."""
    f = Path(model_path) / "config.json"
    return positions(json.loads(f.read_text())) if f.is_file() else None


def check_fits(model_path: str | Path, needed: int, key: str, what: str = "tokens") -> None:
    """LengthError when ``needed`` tokens exceed the model's positions; ``key`` names the params that set them."""
    limit = max_positions(model_path)
    if limit is not None and needed > limit:
        raise LengthError(f"{key}: {needed} {what} exceed the {limit} positions of the model at {model_path} "
                          "(lower the setting, or use a model with more positions)")


def check_sampling(model_path: str | Path, sampling, stage: str) -> None:
    """A sampled sequence is at most max_prompt_tokens + max_new_tokens long."""
    check_fits(model_path, sampling.max_prompt_tokens + sampling.max_new_tokens,
               f"{stage}.sampling.max_prompt_tokens + {stage}.sampling.max_new_tokens")
