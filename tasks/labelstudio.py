"""The Label Studio service: ``LabelStudioClient`` over its HTTP API, and the Prefect tasks of the round trip
(create a project, import a batch of tasks, download the export), which flows/labelstudio.py composes.

The client speaks Label Studio's HTTP API with `requests` (no SDK; checked against label-studio 1.23.2).
Auth: a legacy API token (``Authorization: Token <t>``), or a personal access token (a JWT refresh token; it is
exchanged at ``/api/token/refresh`` for a short-lived access token sent as ``Bearer`` and renewed once on a 401).
The token never appears in an error message or a log line. The server is the URL given, else ``$LABEL_STUDIO_URL``,
else http://localhost:8080; the token the one given, else ``$LABEL_STUDIO_API_KEY`` (tasks/labelstudio_inputs.py).

A task retries only errors marked ``transient``: a connection that was never made, a timeout of a read-only
request, HTTP 429/502/503/504. An HTTP error such as 400/401/404 fails at once. Retrying an import is made safe by
counting: a batch that reached the project before the connection broke is not imported twice (``import_batch``).
The full JSON export (not JSON_MIN, which silently drops cancelled annotations) keeps every annotation, so
cancelled ones end in the ingest's rejects file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import requests
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from tasks.labelstudio_inputs import LabelStudioError, export_counts, resolve_token, resolve_url

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class LabelStudioClient:
    """A small client over the endpoints the round trip needs (one `requests.Session`)."""

    def __init__(self, url: str | None, token: str | SecretStr | None, timeout: float = 60.0) -> None:
        self.url = resolve_url(url).rstrip("/")
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


def connect(url: str | None, token: str | SecretStr | None, project_id: int | None = None) -> LabelStudioClient:
    """A client whose server answers and accepts the token (and holds ``project_id`` when given), checked before
    any flow runs; else LabelStudioError (a missing project: HTTP 404)."""
    client = LabelStudioClient(url, token)
    client.whoami()
    if project_id is not None:
        client.project(project_id)
    return client


# --- Prefect tasks ---------------------------------------------------------------------------------------------
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
