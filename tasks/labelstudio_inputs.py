"""What the Label Studio round trip takes in, checked without a server: the server's URL and the API token (given,
else from the environment), the import tasks against their labelling config, and the counts of an export.

Label Studio does not check imported tasks against the labelling config, so ``load_tasks`` does: every ``$name``
the config uses must be in each task's data, and a ``List`` needs items with a unique ``id`` and a text ``body``
(the response that `ingest` reads). Standard library only at import time: the `rlhf` command line reads the
defaults below on every invocation.
"""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DEFAULT_URL = "http://localhost:8080"
DEFAULT_TITLE = "rlhf rankings"
IMPORT_BATCH = 500
_VAR = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class LabelStudioError(Exception):
    """A Label Studio request or input that failed; ``transient`` = worth retrying."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def resolve_url(url: str | None) -> str:
    """The server URL given, else ``$LABEL_STUDIO_URL``, else ``DEFAULT_URL``."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def resolve_token(token: Any) -> str:
    """The token given (str or pydantic SecretStr), else ``$LABEL_STUDIO_API_KEY``; LabelStudioError when neither
    is set."""
    from pydantic import SecretStr

    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    token = token or os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise LabelStudioError(f"no Label Studio API token: pass --token or set {TOKEN_ENV}")
    return token.strip()


def config_fields(label_config: str, source: str = "label config") -> dict[str, str]:
    """The data fields a labelling config reads: {field: tag}, from ``value="$field"`` attributes."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise LabelStudioError(f"{source}: not valid XML: {e}") from None
    fields = {}
    for el in root.iter():
        m = _VAR.match(el.attrib.get("value", "").strip())
        if m:
            fields[m.group(1)] = el.tag
    if not fields:
        raise LabelStudioError(f"{source}: no object tag reads task data (no value=\"$field\")")
    return fields


def check_task(task: Any, fields: dict[str, str], where: str) -> dict:
    """A task as Label Studio imports it ({"data": {...}}), checked against the config's fields."""
    if not isinstance(task, dict):
        raise LabelStudioError(f"{where}: expected an object, got {type(task).__name__}")
    data = task.get("data", task)
    if not isinstance(data, dict):
        raise LabelStudioError(f"{where}: 'data' must be an object")
    for name, tag in fields.items():
        if name not in data:
            raise LabelStudioError(f"{where}: missing data field '{name}' (the label config's {tag} reads ${name})")
        value = data[name]
        if tag == "List":
            _check_list(value, f"{where}: data.{name}")
        elif not isinstance(value, str) or not value.strip():
            raise LabelStudioError(f"{where}: data.{name} must be a non-empty string")
    return task if "data" in task else {"data": data}


def _check_list(items: Any, where: str) -> None:
    if not isinstance(items, list) or len(items) < 2:
        raise LabelStudioError(f"{where} must be an array of at least 2 items to rank")
    seen = set()
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), (str, int)) or isinstance(item["id"], bool):
            raise LabelStudioError(f"{where}[{j}]: expected an object with an 'id' (string or integer)")
        if str(item["id"]) in seen:
            raise LabelStudioError(f"{where}[{j}]: duplicate id {item['id']!r}")
        seen.add(str(item["id"]))
        if not isinstance(item.get("body"), str) or not item["body"].strip():
            raise LabelStudioError(f"{where}[{j}]: missing text 'body' (the response to rank)")


def load_tasks(tasks_path: str | Path, label_config_path: str | Path | None = None) -> tuple[list[dict], str]:
    """Read import tasks and their labelling config (default: ``label_config.xml`` beside the tasks, as the
    `collect` stage writes it) and check the tasks against it."""
    path = Path(tasks_path)
    config_path = Path(label_config_path) if label_config_path else path.parent / "label_config.xml"
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelStudioError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelStudioError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise LabelStudioError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(tasks, list) or not tasks:
        raise LabelStudioError(f"{path}: expected a non-empty JSON array of tasks")
    try:
        label_config = config_path.read_text(encoding="utf-8")
    except OSError as e:
        raise LabelStudioError(f"{config_path}: cannot read the label config: {e.strerror or e} "
                               "(the collect stage writes it beside tasks.json; or pass --label-config)") from None
    fields = config_fields(label_config, str(config_path))
    return [check_task(t, fields, f"{path}: task {i}") for i, t in enumerate(tasks)], label_config


def export_counts(path: str | Path) -> dict:
    """Tasks, annotations and cancelled annotations in a full JSON export (streamed, any size)."""
    from rlhf.preferences.jsonstream import iter_json_array
    counts = {"tasks": 0, "annotations": 0, "cancelled": 0}
    for raw in iter_json_array(Path(path)):
        counts["tasks"] += 1
        annotations = raw.value.get("annotations") if isinstance(raw.value, dict) else None
        for a in annotations if isinstance(annotations, list) else []:
            counts["annotations"] += 1
            counts["cancelled"] += bool(isinstance(a, dict) and a.get("was_cancelled"))
    return counts
