"""The Label Studio round trip: push the `collect` stage's tasks into a ranking project, pull the finished
annotations back as a full JSON export, which `rlhf.preferences.ingest` reads (format ``labelstudio``).

``LabelStudioClient`` speaks Label Studio's HTTP API with `requests` (no SDK; checked against label-studio 1.23.2).
Auth: a legacy API token (``Authorization: Token <t>``), or a personal access token (a JWT refresh token; it is
exchanged at ``/api/token/refresh`` for a short-lived access token sent as ``Bearer`` and renewed once on a 401).
The token never appears in an error message, a log line or a stored Prefect parameter (``_TokenSafeFlow``).

The Prefect flows only compose tasks. A task retries only errors marked ``transient``: a connection that was
never made, a timeout of a read-only request, HTTP 429/502/503/504. An HTTP error such as 400/401/404 fails at once.
Retrying an import is made safe by counting: a batch that reached the project before the connection broke is not
imported twice (``import_batch``).

Label Studio does not check imported tasks against the labelling config, so ``load_tasks`` does: every ``$name``
the config uses must be in each task's data, and a ``List`` needs items with a unique ``id`` and a text ``body``
(the response that `ingest` reads). The full JSON export (not JSON_MIN, which silently drops cancelled annotations)
keeps every annotation, so cancelled ones end in the ingest's rejects file.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import requests
from prefect import Flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DEFAULT_URL = "http://localhost:8080"
IMPORT_BATCH = 500
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
_VAR = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class LabelStudioError(Exception):
    """A Label Studio request or input that failed; ``transient`` = worth retrying."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def resolve_token(token: str | SecretStr | None) -> str:
    """The token given, else ``$LABEL_STUDIO_API_KEY``; LabelStudioError when neither is set."""
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    token = token or os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise LabelStudioError(f"no Label Studio API token: pass --token or set {TOKEN_ENV}")
    return token.strip()


class LabelStudioClient:
    """A small client over the endpoints the round trip needs (one `requests.Session`)."""

    def __init__(self, url: str, token: str | SecretStr | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._token = resolve_token(token)
        self.timeout = timeout
        self.session = requests.Session()
        self._pat = self._token.count(".") == 2          # a JWT: personal access (refresh) token
        self._access: str | None = None

    # --- plumbing -------------------------------------------------------------------------------------------
    def _auth(self) -> dict:
        if not self._pat:
            return {"Authorization": f"Token {self._token}"}
        if self._access is None:
            r = self._send("POST", "/api/token/refresh", auth=False, json={"refresh": self._token})
            self._access = r.json()["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def _send(self, method: str, path: str, *, auth: bool = True, stream: bool = False, **kw) -> requests.Response:
        where = f"{method} {self.url}{path.split('?')[0]}"
        try:
            headers = self._auth() if auth else {}
            r = self.session.request(method, self.url + path, headers=headers, timeout=self.timeout,
                                     stream=stream, **kw)
            if r.status_code == 401 and auth and self._pat and self._access is not None:
                self._access = None                        # the access token expired: renew it once
                r = self.session.request(method, self.url + path, headers=self._auth(), timeout=self.timeout,
                                         stream=stream, **kw)
        except requests.exceptions.ConnectionError as e:
            # No connection = the request never reached the server: safe to retry even a POST.
            never_sent = isinstance(e, requests.exceptions.ConnectTimeout) or "NewConnectionError" in repr(e) \
                or "Connection refused" in str(e)
            raise LabelStudioError(f"{where}: cannot connect to {self.url} (is Label Studio running there?)",
                                   transient=never_sent or method == "GET") from None
        except requests.exceptions.Timeout:
            raise LabelStudioError(f"{where}: no answer within {self.timeout:g} s",
                                   transient=method == "GET") from None
        if r.status_code >= 400:
            raise LabelStudioError(f"{where}: HTTP {r.status_code}: {_detail(r)}",
                                   transient=r.status_code in TRANSIENT_STATUS)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        r = self._send(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise LabelStudioError(f"{method} {self.url}{path}: the answer is not JSON "
                                   f"(is {self.url} a Label Studio server?)") from None

    # --- the API --------------------------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self._json("GET", "/api/current-user/whoami")

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        body = {"title": title, "label_config": label_config, "description": description}
        return int(self._json("POST", "/api/projects", json=body)["id"])

    def project(self, project_id: int) -> dict:
        return self._json("GET", f"/api/projects/{int(project_id)}")

    def task_count(self, project_id: int) -> int:
        return int(self._json("GET", f"/api/tasks?project={int(project_id)}&page_size=1&fields=task_only")["total"])

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Import tasks; returns how many the server says it created."""
        return int(self._json("POST", f"/api/projects/{int(project_id)}/import", json=tasks)["task_count"])

    def iter_tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict]:
        """Every task of a project (id, data, ...), page by page."""
        total, page = self.task_count(project_id), 1
        while (page - 1) * page_size < total:
            yield from self._json("GET", f"/api/tasks?project={int(project_id)}&page={page}"
                                         f"&page_size={page_size}&fields=task_only")["tasks"]
            page += 1

    def create_annotation(self, task_id: int, result: list[dict], *, was_cancelled: bool = False,
                          lead_time: float | None = None) -> dict:
        """Submit (or skip, ``was_cancelled``) one annotation of a task, as the labelling UI does."""
        body: dict = {"result": result, "was_cancelled": was_cancelled}
        if lead_time is not None:
            body["lead_time"] = lead_time
        return self._json("POST", f"/api/tasks/{int(task_id)}/annotations", json=body)

    def export(self, project_id: int, out_path: str | Path, export_type: str = "JSON") -> Path:
        """Download the project's annotated tasks (full JSON export) to ``out_path`` atomically."""
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        r = self._send("GET", f"/api/projects/{int(project_id)}/export?exportType={export_type}", stream=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in r.iter_content(1 << 20):
                    fh.write(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except requests.exceptions.RequestException:
            raise LabelStudioError(f"GET {self.url}/api/projects/{project_id}/export: connection lost during "
                                   "the download", transient=True) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out


def _detail(r: requests.Response) -> str:
    """Label Studio's error detail (JSON ``detail`` / ``validation_errors``), else the start of the body."""
    try:
        body = r.json()
    except ValueError:
        text = "" if "html" in r.headers.get("Content-Type", "") else " ".join(r.text[:200].split())
        return (r.reason or "error") + (f": {text}" if text else "")
    if isinstance(body, dict):
        detail = str(body.get("detail") or r.reason)
        if body.get("validation_errors"):
            detail += f" {json.dumps(body['validation_errors'])[:300]}"
        return detail
    return str(body)[:200]


# --- input checks (no server needed) ---------------------------------------------------------------------------
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


# --- Prefect tasks and flows -----------------------------------------------------------------------------------
def _transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry a LabelStudioError marked transient, nothing else."""
    try:
        state.result()
    except LabelStudioError as e:
        return e.transient
    except Exception:
        return False
    return False


_RETRY = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient, cache_policy=NO_CACHE)


@task(name="ls-create-project", **_RETRY)
def create_project(client: LabelStudioClient, title: str, label_config: str) -> int:
    """Create a labelling project; returns its id."""
    return client.create_project(title, label_config)


@task(name="ls-import-batch", **_RETRY)
def import_batch(client: LabelStudioClient, project_id: int, batch: list[dict], before: int) -> int:
    """Import one batch into a project holding ``before`` tasks; returns the count after (idempotent on retry)."""
    now = client.task_count(project_id)
    if now == before + len(batch):                          # an earlier attempt landed before the connection broke
        return now
    if now != before:
        raise LabelStudioError(f"project {project_id} holds {now} tasks, expected {before}: not importing twice")
    client.import_tasks(project_id, batch)
    return client.task_count(project_id)


@task(name="ls-export", **_RETRY)
def export_annotations(client: LabelStudioClient, project_id: int, out_path: str) -> dict:
    """Download the full JSON export; returns its counts."""
    return {"path": str(client.export(project_id, out_path)), **export_counts(out_path)}


class _TokenSafeFlow(Flow):
    """A flow whose ``token`` parameter Prefect stores obfuscated even when a caller passes a plain str (Prefect
    records a flow run's parameters as given; only a SecretStr is written as '**********')."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if isinstance(parameters.get("token"), str):
            parameters = {**parameters, "token": SecretStr(parameters["token"])}
        return super().serialize_parameters(parameters)


def _flow(name: str):
    return lambda fn: _TokenSafeFlow(fn, name=name)


@_flow("push_to_label_studio")
def push_to_label_studio(tasks_path: str, url: str = DEFAULT_URL, token: SecretStr | None = None,
                         title: str = "rlhf rankings", label_config_path: str | None = None,
                         batch_size: int = IMPORT_BATCH) -> dict:
    """Create a ranking project from the collect stage's tasks.json (+ label_config.xml) and import the tasks."""
    tasks, label_config = load_tasks(tasks_path, label_config_path)
    client = LabelStudioClient(url, token)
    project_id = create_project(client, title, label_config)
    count = 0
    for start in range(0, len(tasks), batch_size):
        count = import_batch(client, project_id, tasks[start:start + batch_size], count)
    get_run_logger().info("project %s: %s tasks imported", project_id, count)
    return {"project_id": project_id, "tasks": count, "url": f"{client.url}/projects/{project_id}"}


@_flow("pull_from_label_studio")
def pull_from_label_studio(project_id: int, out_path: str, url: str = DEFAULT_URL,
                           token: SecretStr | None = None) -> dict:
    """Export a project's annotated tasks (full JSON, cancelled annotations included) to ``out_path``."""
    client = LabelStudioClient(url, token)
    counts = export_annotations(client, project_id, out_path)
    get_run_logger().info("project %s: %s tasks, %s annotations (%s cancelled) -> %s", project_id,
                          counts["tasks"], counts["annotations"], counts["cancelled"], counts["path"])
    return counts
