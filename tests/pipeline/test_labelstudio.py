"""The Label Studio round trip against a REAL Label Studio server on 127.0.0.1: push the collect stage's tasks,
annotate them through the API as the labelling UI does, pull the full JSON export, ingest it, and compare.

Label Studio cannot share the project's virtualenv (it pins python-json-logger and forces prefect down, see
STACK-NOTES), so it lives in its own, created once and reused: ``$RLHF_LABEL_STUDIO_VENV``, default
``<repo>/.venv-labelstudio`` (pip install label-studio==1.23.2, ~40-100 s). Beside it a data folder migrated once
(``label-studio version`` applies the migrations without starting a server) is copied for each server, which then
starts in seconds instead of the ~30-60 s of migrating a new data folder. The server runs with every offline
switch of STACK-NOTES, in a temporary data folder, on a free port, and its process group is killed at teardown.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tasks.labelstudio import LabelStudioClient
from tasks.labelstudio_inputs import LabelStudioError, load_tasks

ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
VENV = Path(os.environ.get("RLHF_LABEL_STUDIO_VENV") or ROOT / ".venv-labelstudio")
READY = VENV / ".rlhf-ready"                      # written after a complete install: holds the version
TEMPLATE = VENV / "rlhf-migrated-data"            # an empty, migrated data folder
RLHF = Path(sys.executable).parent / "rlhf"
OFFLINE = {"LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
           "LABEL_STUDIO_SENTRY_DSN": "", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
PROMPTS = ["the acting in this film", "i watched this movie", "the plot was", "what a soundtrack", "the ending"]
# Best-first orders the "annotator" submits, by task; the last prompt's annotation is cancelled, one task is left
# unannotated (so it is not in the export of finished annotations).
ORDERS = {0: ["r2", "r0", "r1"], 1: ["r1", "r2", "r0"], 2: ["r0", "r1", "r2"]}
CANCELLED, UNANNOTATED = 3, 4


def _ls_env(data_dir: Path, **extra: str) -> dict:
    """A minimal environment: the server also reads plain HOST, PORT, USERNAME, PASSWORD (STACK-NOTES traps)."""
    env = {"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(data_dir)),
           "LANG": "C.UTF-8", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), **OFFLINE, **extra}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def _run(cmd: list, what: str, timeout: float, **kw) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode != 0:
        pytest.fail(f"{what} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")


@pytest.fixture(scope="session")
def label_studio_venv() -> Path:
    """The Label Studio virtualenv and a migrated data template, created once (under a lock) and reused."""
    lock_path = Path(tempfile.gettempdir()) / f"rlhf-ls-{hashlib.md5(str(VENV).encode()).hexdigest()[:12]}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (READY.exists() and READY.read_text().strip() == LS_VERSION):
            shutil.rmtree(VENV, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(VENV)], "python -m venv", 120)
            _run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  f"label-studio=={LS_VERSION}"], "pip install label-studio", 900)
            READY.write_text(LS_VERSION + "\n")
        if not (TEMPLATE / "label_studio.sqlite3").exists():
            tmp = TEMPLATE.with_name(TEMPLATE.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            # `label-studio version` applies the migrations and exits (`--version` would START a server).
            _run([str(VENV / "bin" / "label-studio"), "version"], "label-studio migrations", 600, env=_ls_env(tmp))
            tmp.rename(TEMPLATE)
    return VENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(label_studio_venv, tmp_path_factory):
    """A running Label Studio server (legacy API token enabled) in a fresh copy of the migrated data folder."""
    base = tmp_path_factory.mktemp("label-studio")
    data = base / "data"
    shutil.copytree(TEMPLATE, data)
    token, port = secrets.token_hex(20), _free_port()
    env = _ls_env(data, LABEL_STUDIO_USERNAME="annotator@example.com", LABEL_STUDIO_PASSWORD=secrets.token_hex(8),
                  LABEL_STUDIO_USER_TOKEN=token, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([str(VENV / "bin" / "label-studio"), "start", "--no-browser", "--internal-host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = _wait_healthy(proc, port, base / "server.log", deadline=time.monotonic() + 90)
        yield SimpleNamespace(url=url, token=token, log=base / "server.log")
    finally:
        _stop(proc)
        log.close()


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, deadline: float) -> str:
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"label-studio exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        # The server moves to another port when its port was taken meanwhile: follow what it says.
        m = re.search(r"Starting development server at (http://[\d.]+:\d+)/", log.read_text(errors="replace"))
        url = m.group(1) if m else url
        try:
            if requests.get(f"{url}/health", timeout=2).json().get("status") == "UP":
                return url
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"label-studio not healthy at {url} within 90 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def collect_out(tmp_path_factory) -> Path:
    """A small output of the collect stage: tasks.json (make_task) and label_config.xml."""
    from rlhf.stages.collect import LABEL_CONFIG, make_task
    out = tmp_path_factory.mktemp("collect")
    tasks = [make_task(p, [f"{p} was great fun", f"{p} bored me", f"{p} was fine"], [True, False, True])
             for p in PROMPTS]
    (out / "tasks.json").write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    (out / "label_config.xml").write_text(LABEL_CONFIG + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def prefect_api(prefect_harness) -> str:
    """The Prefect test server's URL, so that CLI subprocesses share it instead of each starting their own."""
    from prefect.settings import PREFECT_API_URL
    return PREFECT_API_URL.value()


def rlhf(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_API_KEY"}
    full.update(env or {})
    return subprocess.run([str(RLHF), *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300)


def ranker(order: list[str]) -> list[dict]:
    """The result the labelling UI submits for a List + Ranker config (rank only, no buckets)."""
    return [{"from_name": "rank", "to_name": "candidates", "type": "ranker", "origin": "manual",
             "value": {"ranker": {"rank": order}}}]


def personal_access_token(ls) -> str:
    """A personal access token (JWT refresh token) of the server's user, created with the legacy token."""
    r = requests.post(f"{ls.url}/api/token/", headers={"Authorization": f"Token {ls.token}"}, timeout=30)
    if r.status_code == 409:                                    # one per user: revoke the previous one
        requests.delete(f"{ls.url}/api/token/", headers={"Authorization": f"Token {ls.token}"}, timeout=30)
        r = requests.post(f"{ls.url}/api/token/", headers={"Authorization": f"Token {ls.token}"}, timeout=30)
    r.raise_for_status()
    return r.json()["token"]


@pytest.mark.slow
def test_push_annotate_pull_ingest_round_trip(label_studio, collect_out, prefect_api, tmp_path):
    from rlhf.preferences import ingest

    ls = label_studio
    env = {"PREFECT_API_URL": prefect_api, "LABEL_STUDIO_API_KEY": ls.token}
    push = rlhf("label-studio", "push", "--tasks", str(collect_out / "tasks.json"), "--url", ls.url,
                "--title", "round trip", env=env)
    assert push.returncode == 0, push.stderr[-3000:]
    project_id = int(re.search(r"^project (\d+): 5 tasks imported", push.stdout, re.M).group(1))

    client = LabelStudioClient(ls.url, ls.token)
    tasks = {t["data"]["prompt"]: t for t in client.iter_tasks(project_id)}
    assert sorted(tasks) == sorted(PROMPTS)
    assert tasks[PROMPTS[0]]["data"]["candidates"][1] == {"id": "r1", "title": "Response 2",
                                                         "body": f"{PROMPTS[0]} bored me", "ended": False}
    for i, order in ORDERS.items():
        made = client.create_annotation(tasks[PROMPTS[i]]["id"], ranker(order), lead_time=2.5 + i)
        assert made["result"][0]["value"] == {"ranker": {"rank": order}}      # stored as submitted
    client.create_annotation(tasks[PROMPTS[CANCELLED]]["id"], [], was_cancelled=True)

    export = tmp_path / "export.json"
    pull = rlhf("label-studio", "pull", "--project", str(project_id), "--out", str(export), "--url", ls.url,
                env={"PREFECT_API_URL": prefect_api, "LABEL_STUDIO_API_KEY": personal_access_token(ls)})
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert "4 annotated tasks, 4 annotations (1 cancelled)" in pull.stdout

    summary = ingest([export], tmp_path / "prefs", max_reject_share=0.5)
    assert (summary.read, summary.accepted, summary.rejected) == (4, 3, 1)
    assert summary.rejected_by_reason == {"cancelled": 1}
    assert summary.per_file[0]["format"] == "labelstudio"
    rows = {r["prompt"]: r for r in map(json.loads, (tmp_path / "prefs" / "rankings.jsonl").open())}
    assert sorted(rows) == sorted(PROMPTS[i] for i in ORDERS)           # neither cancelled nor unannotated
    for i, order in ORDERS.items():
        row = rows[PROMPTS[i]]
        (annotation,) = row["meta"]["annotations"]
        assert annotation["meta"]["task_id"] == tasks[PROMPTS[i]]["id"] and annotation["meta"]["lead_time"] == 2.5 + i
        ids = [c["id"] for c in annotation["meta"]["candidates"]]
        assert ids == ["r0", "r1", "r2"]
        assert row["responses"] == [c["body"] for c in tasks[PROMPTS[i]]["data"]["candidates"]]
        assert row["ranks"] == [order.index(rid) for rid in ids]        # rank 0 = the annotator's first
    best_first = {p["chosen"] for p in map(json.loads, (tmp_path / "prefs" / "pairs.jsonl").open())
                  if p["prompt"] == PROMPTS[0]}
    assert f"{PROMPTS[0]} was fine" in best_first and f"{PROMPTS[0]} bored me" not in best_first
    rejects = [json.loads(line) for line in (tmp_path / "prefs" / "rejects.jsonl").open()]
    assert [r["reason"] for r in rejects] == ["cancelled"]
    assert json.loads(rejects[0]["record"])["task_id"] == tasks[PROMPTS[CANCELLED]]["id"]


@pytest.mark.slow
def test_flows_in_process_batches_and_keep_the_token_out_of_prefect(label_studio, collect_out, prefect_api,
                                                                     tmp_path):
    from prefect.client.orchestration import get_client
    from pydantic import SecretStr

    from flows.labelstudio import pull_from_label_studio, push_to_label_studio
    ls = label_studio
    result = push_to_label_studio(str(collect_out / "tasks.json"), ls.url, SecretStr(ls.token), "batches",
                                  batch_size=2)                          # 5 tasks: three import batches
    assert result["tasks"] == 5 and result["url"] == f"{ls.url}/projects/{result['project_id']}"
    counts = pull_from_label_studio(result["project_id"], str(tmp_path / "none.json"), ls.url, SecretStr(ls.token))
    assert counts["tasks"] == 0 and json.loads((tmp_path / "none.json").read_text()) == []
    with pytest.raises(LabelStudioError, match="HTTP 404"):          # not transient: no retry
        pull_from_label_studio(9999, str(tmp_path / "x.json"), ls.url, ls.token)     # a plain str token
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs()
        exports = [t for t in prefect.read_task_runs() if t.name.startswith("ls-export")]
    assert len(exports) >= 2 and {t.run_count for t in exports} == {1}     # the 404 ran once
    pushed = [r for r in runs if r.parameters.get("title") == "batches"]
    assert len(pushed) == 1 and pushed[0].parameters["token"] == "**********"
    assert ls.token not in json.dumps([r.parameters for r in runs])    # the plain str too


@pytest.mark.slow
def test_import_retry_does_not_duplicate_tasks(label_studio, collect_out):
    from tasks.labelstudio import import_batch
    ls = label_studio
    tasks, config = load_tasks(collect_out / "tasks.json")
    client = LabelStudioClient(ls.url, ls.token)
    pid = client.create_project("retry", config)
    assert import_batch.fn(client, pid, tasks[:3], 0) == 3
    assert import_batch.fn(client, pid, tasks[:3], 0) == 3              # a retry after the batch landed: no-op
    assert client.task_count(pid) == 3
    with pytest.raises(LabelStudioError, match="holds 3 tasks, expected 1"):
        import_batch.fn(client, pid, tasks[3:4], 1)                   # the count is not what we saw: refuse


@pytest.mark.slow
def test_server_errors_are_one_line(label_studio, collect_out, tmp_path):
    ls = label_studio
    bad = rlhf("label-studio", "push", "--tasks", str(collect_out / "tasks.json"), "--url", ls.url,
               "--token", "0" * 40)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "HTTP 401" in bad.stderr and "0" * 40 not in bad.stderr
    missing = rlhf("label-studio", "pull", "--project", "9999", "--out", str(tmp_path / "x.json"), "--url", ls.url,
                   "--token", ls.token)
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0
    assert "/api/projects/9999: HTTP 404" in missing.stderr and not (tmp_path / "x.json").exists()
    down = rlhf("label-studio", "pull", "--project", "1", "--out", str(tmp_path / "x.json"),
                "--url", f"http://127.0.0.1:{_free_port()}", "--token", ls.token)
    assert down.returncode == 1 and "cannot connect" in down.stderr and "Traceback" not in down.stderr


# --- no server needed ------------------------------------------------------------------------------------------
def test_only_transient_errors_are_retried():
    from prefect.states import Completed, Failed

    from tasks.labelstudio import _transient
    assert _transient(None, None, Failed(data=LabelStudioError("503", transient=True))) is True
    assert _transient(None, None, Failed(data=LabelStudioError("401"))) is False
    assert _transient(None, None, Failed(data=ValueError("bug"))) is False
    assert _transient(None, None, Completed(data=1)) is False


def test_server_url_from_argument_else_environment_else_default(monkeypatch):
    from tasks.labelstudio_inputs import DEFAULT_URL, URL_ENV
    monkeypatch.delenv(URL_ENV, raising=False)
    assert LabelStudioClient(None, "t").url == DEFAULT_URL
    monkeypatch.setenv(URL_ENV, "http://ls.example:9000/")
    assert LabelStudioClient(None, "t").url == "http://ls.example:9000"
    assert LabelStudioClient("http://other:1", "t").url == "http://other:1"


def test_transient_classification_of_a_refused_connection():
    client = LabelStudioClient(f"http://127.0.0.1:{_free_port()}", "t", timeout=5)
    for call in (lambda: client.create_project("x", "<View/>"), client.whoami):   # POST never sent, and a GET
        with pytest.raises(LabelStudioError, match="cannot connect") as exc:
            call()
        assert exc.value.transient


def test_push_checks_tasks_against_the_label_config(collect_out, tmp_path):
    tasks = json.loads((collect_out / "tasks.json").read_text())
    shutil.copy(collect_out / "label_config.xml", tmp_path / "label_config.xml")
    cases = {
        "missing data field 'candidates'": lambda t: t[2]["data"].pop("candidates"),
        "task 1: data.candidates[1]: duplicate id 'r0'": lambda t: t[1]["data"]["candidates"][1].update(id="r0"),
        "task 0: data.candidates[2]: missing text 'body'": lambda t: t[0]["data"]["candidates"][2].pop("body"),
        "task 4: data.prompt must be a non-empty string": lambda t: t[4]["data"].update(prompt=" "),
    }
    for message, spoil in cases.items():
        broken = json.loads(json.dumps(tasks))
        spoil(broken)
        (tmp_path / "tasks.json").write_text(json.dumps(broken))
        with pytest.raises(LabelStudioError, match=re.escape(message)):
            load_tasks(tmp_path / "tasks.json")
    (tmp_path / "tasks.json").write_text("[{\"data\": ")
    with pytest.raises(LabelStudioError, match=r"tasks.json:1: invalid JSON"):
        load_tasks(tmp_path / "tasks.json")
    (tmp_path / "label_config.xml").unlink()
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(LabelStudioError, match="label_config.xml: cannot read the label config"):
        load_tasks(tmp_path / "tasks.json")


def test_push_without_token_or_tasks_is_one_line(collect_out, tmp_path):
    no_token = rlhf("label-studio", "push", "--tasks", str(collect_out / "tasks.json"), "--url", "http://127.0.0.1:9")
    assert no_token.returncode == 1
    assert no_token.stderr.strip() == "rlhf label-studio: error: no Label Studio API token: pass --token or set " \
                                      "LABEL_STUDIO_API_KEY"
    no_file = rlhf("label-studio", "push", "--tasks", str(tmp_path / "nope.json"), "--token", "t")
    assert no_file.returncode == 1 and no_file.stderr.strip().endswith("nope.json: no such file")
