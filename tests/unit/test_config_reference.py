"""docs/configuration.md documents every params.yaml key: each field of the config dataclasses (nested ones as
``section.sub.key``), with its type and default; no key that no longer exists; and every key that the repo's
params files set exists in the dataclasses.

Sections: the fields of ``rlhf.config.PipelineConfig``.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from rlhf.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
PARAMS_FILES = [ROOT / "params.yaml", ROOT / "tests" / "fixtures" / "params_tiny.yaml"]
ROW = re.compile(r"^\|\s*`(?P<key>[A-Za-z0-9_.]+)`\s*\|\s*(?P<type>[^|]*?)\s*\|\s*`(?P<default>[^`]*)`\s*\|")


def type_text(annotation: str) -> str:
    """A field's annotation as the doc writes it: ``float | None`` -> ``float or null``, tuples -> list[...]."""
    text = re.sub(r"Optional\[(\w+)\]", r"\1 | None", annotation.replace("typing.", ""))
    text = re.sub(r"tuple\[(\w+), \.\.\.\]", r"list[\1]", text)
    return " or ".join("null" if part.strip() == "None" else part.strip() for part in text.split("|"))


def default_text(value) -> str:
    """A default as YAML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def dataclass_keys(default, prefix: str) -> dict[str, tuple[str, str]]:
    """{"section.sub.key": (type, default)} for every leaf field of the default-built config ``default`` (a nested
    section's defaults are its field's own: sft.train's are not pretrain.train's)."""
    cls = type(default)
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str, str]] = {}
    for f in dataclasses.fields(cls):
        if f.name == "extra_stages":          # filled by load_params from stage modules; not a params key
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(dataclass_keys(value, key))
            continue
        default_value = value
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out[key] = (type_text(annotation), default_text(default_value))
    return out


def config_keys() -> dict[str, tuple[str, str]]:
    return dataclass_keys(PipelineConfig(), "")


def documented(text: str) -> dict[str, tuple[str, str]]:
    """{"key": (type, default)} from the doc's table rows: | `key` | type | `default` | meaning |."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out[m["key"]] = (m["type"].strip(), m["default"])
    return out


def problems(doc_text: str, keys: dict[str, tuple[str, str]]) -> list[str]:
    doc = documented(doc_text)
    out = [f"{k}: not documented; add the row | `{k}` | {t} | `{d}` | <meaning> |"
           for k, (t, d) in keys.items() if k not in doc]
    out += [f"{k}: documented but not a config key (removed or renamed?)" for k in doc if k not in keys]
    for k, (t, d) in keys.items():
        if k in doc and doc[k] != (t, d):
            out.append(f"{k}: documented as type {doc[k][0]!r}, default `{doc[k][1]}`; the code says {t!r}, `{d}`")
    return out


def test_every_config_key_is_documented_with_its_type_and_default():
    found = problems(DOC.read_text(encoding="utf-8"), config_keys())
    assert not found, "docs/configuration.md is out of date:\n" + "\n".join(found)


def test_the_check_names_missing_stale_and_wrong_rows():
    keys = {"ppo.lr": ("float", "3e-05"), "ppo.sampling.temperature": ("float", "1.0"),
            "sft.packing": ("bool", "false")}
    doc = ("| key | type | default | meaning |\n|---|---|---|---|\n"
           "| `ppo.lr` | float | `3e-05` | learning rate |\n"
           "| `sft.packing` | bool | `true` | packing |\n"
           "| `ppo.cliprang` | float | `0.2` | typo |\n")
    found = problems(doc, keys)
    assert any(p.startswith("ppo.sampling.temperature: not documented") for p in found)
    assert any(p.startswith("ppo.cliprang: documented but not a config key") for p in found)
    assert any(p.startswith("sft.packing: documented as type 'bool', default `true`") for p in found)
    assert len(found) == 3


def test_nested_and_typed_keys_are_walked():
    keys = config_keys()
    assert keys["pretrain.train.lr"] == ("float", "0.002") and keys["sft.train.lr"] == ("float", "0.0005")
    assert keys["preferences.inputs"] == ("list[str]", "[artifacts/annotations/export.json]")
    assert keys["pretrain.model_path"] == ("str", '""')
    assert "ppo.sampling.max_new_tokens" in keys and "ppo.sampling" not in keys


def unknown_keys(data, cls, prefix: str = "") -> list[str]:
    """Keys of a params mapping that no dataclass field accepts (every one, not just the first)."""
    if not isinstance(data, dict):
        return []
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            out.append(path)
        elif dataclasses.is_dataclass(hints[key]):
            out += unknown_keys(value, hints[key], path)
    return out


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_params_key_exists_in_the_dataclasses(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    bad = unknown_keys(raw, PipelineConfig)
    assert not bad, f"{path.name}: keys no dataclass defines: {', '.join(bad)}"


def test_unknown_params_keys_are_all_named():
    assert unknown_keys({"ppo": {"lr": 1, "cliprang": 2, "sampling": {"temp": 1}}, "sfft": {}}, PipelineConfig) == [
        "ppo.cliprang", "ppo.sampling.temp", "sfft"]
