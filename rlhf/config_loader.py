"""Loading params.yaml into the dataclasses of rlhf/config.py: YAML types checked against the annotations, unknown
keys named with a suggestion, nested sections filled from their own stage's defaults, and the sections of stages
that rlhf/config.py does not know taken from their stage module's ``Config`` (``rlhf/stages/<name>.py``)."""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# A decimal number written as text: YAML 1.1 (PyYAML) reads ``1e-4`` and ``1E+3`` (no dot) as strings. No nan, inf,
# underscores or spaces, which float() would also take.
NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _as_float(value: Any, key: str) -> float:
    """A float key's value: a number (not a bool), or a string that is a decimal number (``"1e-4"``). Range and
    finiteness are the dataclass's rules (rlhf/config_rules.py)."""
    if isinstance(value, str) and NUMBER_TEXT.fullmatch(value):
        return float(value)
    check_rule(isinstance(value, (int, float)) and not isinstance(value, bool), f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{key}: expected a finite number, got an integer of {len(str(value))} digits") from None


def _as_int(value: Any, key: str) -> int:
    """An int key's value: an integer literal only. ``1e3``, ``1000.0`` and ``2.5`` are refused (a float is never
    rounded into a count); a whole number written so gets a hint with the integer to write."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    written = isinstance(value, float) or (isinstance(value, str) and NUMBER_TEXT.fullmatch(value))
    number = float(value) if written else None
    hint = f" (write it as {int(number)})" if number is not None and number.is_integer() else ""
    raise ConfigError(f"{key}: expected an integer, got {value!r}{hint}")


def _coerce(tp: Any, value: Any, key: str, base: Any = None) -> Any:
    """Convert a YAML value to the annotated field type, or raise ConfigError naming the key. A nested section
    fills its missing keys from ``base``, the field's own default (sft's train defaults are not pretrain's)."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, base)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if origin is dict:
        check_rule(isinstance(value, dict), f"{key}: expected a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(tp)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        check_rule(isinstance(value, (list, tuple)), f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(typing.get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _as_float(value, key)
    if tp is int:
        return _as_int(value, key)
    if tp is bool:
        check_rule(isinstance(value, bool), f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        check_rule(isinstance(value, str), f"{key}: expected a string, got {value!r}")
        return value
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type, data: Any, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a mapping, missing keys taken from ``base`` (else the class defaults); unknown
    keys and wrong types raise ConfigError with the key path."""
    where = prefix or "params"
    if data is None:
        data = {}
    check_rule(isinstance(data, dict), f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{path}: unknown key{hint}")
        nested = getattr(base, key) if base is not None else _field_default(fields[key])
        kwargs[key] = _coerce(hints[key], value, path, nested if dataclasses.is_dataclass(nested) else None)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except FieldError as e:                      # "lr must be > 0 ..." -> "sft.train.lr must be > 0 ..."
        raise FieldError(f"{prefix}.{e}" if prefix else str(e)) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_params(path: str | Path = "params.yaml") -> PipelineConfig:
    """Load and validate params.yaml; every error names the file and the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    try:
        check_rule(isinstance(raw, dict), f"expected a mapping of sections, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(PipelineConfig)} - {"extra_stages"}
        extra = {k: _stage_config(k, v) for k, v in raw.items() if k not in known and _stage_module_config(k)}
        cfg = from_dict(PipelineConfig, {k: v for k, v in raw.items() if k not in extra})
        return dataclasses.replace(cfg, extra_stages=extra) if extra else cfg
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _stage_module_config(name: str) -> type | None:
    """The ``Config`` dataclass of stage module rlhf/stages/<name>.py, or None when there is no such module."""
    import importlib
    import importlib.util
    if not str(name).isidentifier() or importlib.util.find_spec(f"rlhf.stages.{name}") is None:
        return None
    cls = getattr(importlib.import_module(f"rlhf.stages.{name}"), "Config", None)
    return cls if dataclasses.is_dataclass(cls) else None


def _stage_config(name: str, data: Any) -> Any:
    return from_dict(_stage_module_config(name), data, name)


def to_dict(cfg: Any) -> dict:
    """The config as plain data (for MLflow params and model cards)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists/tuples become strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


# Last, so that either module can be imported first: rlhf/config.py re-exports this module's functions on its last
# line, and the names below are only used when a function runs.
from rlhf.config import ConfigError, FieldError, PipelineConfig, check_rule  # noqa: E402
