"""The temporary Prefect server `rlhf run` starts itself (tasks/prefect_server.py): a real `prefect server start` process of
Prefect's app on 127.0.0.1; a flow runs against it and completes; it is gone after stop()."""
from __future__ import annotations

import urllib.request

import pytest

pytestmark = pytest.mark.slow


def test_a_flow_runs_against_the_temporary_server_and_the_server_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect import flow

    from tasks import prefect_server

    server = prefect_server.LocalServer.start()
    try:
        @flow(name="rlhf-server-probe")
        def probe(x: int) -> int:
            return x + 1

        with prefect_server.using(server):
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as r:
                assert r.status == 200
            state = probe(41, return_state=True)
            assert state.is_completed() and state.result() == 42
            from prefect.settings import PREFECT_API_URL
            assert PREFECT_API_URL.value() == server.api_url
    finally:
        server.stop()
    assert server.process.poll() is not None                     # stopped, not left running
    with pytest.raises(OSError):                                 # and nothing answers on its port any more
        urllib.request.urlopen(f"{server.api_url}/health", timeout=5)


def test_a_server_that_cannot_start_is_reported_with_its_port(monkeypatch, tmp_path):
    from tasks import prefect_server

    server = prefect_server.LocalServer.start()
    server.process.kill()
    server.process.wait()
    with pytest.raises(RuntimeError, match=f"port {server.port} exited with status"):
        server.wait(timeout=10)
