"""The atomic checkpoint writer and reader (rlhf/checkpoint.py), atomic stage outputs, and the tracking retry helper.

A torn checkpoint (no manifest, a file missing or cut short, a temporary folder left by a crash) is never loaded;
the newest complete one wins; ``state.pt`` is read with weights_only=True, so a pickled object in it is refused."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from rlhf.checkpoint import (MANIFEST, STATE_FILE, CheckpointManager, atomic_output_dir, checkpoint_dir,
                             latest_checkpoint, list_checkpoints, load_checkpoint, write_checkpoint)


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def trained_state(model: nn.Module, steps: int = 3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(steps):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return opt, sched


def save(root, step, model, opt, sched, rows=(), fp="fp", keep=1):
    return write_checkpoint(root, step, {"model": model}, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                            list(rows), fingerprint=fp, keep=keep)


def test_checkpoint_dir_is_a_sibling_outside_the_output(tmp_path):
    assert checkpoint_dir(tmp_path / "artifacts" / "models" / "sft") == tmp_path / "artifacts" / "models" / "sft.ckpt"
    assert checkpoint_dir("artifacts/models/sft/") == checkpoint_dir("artifacts/models/sft")


def test_round_trip_restores_weights_optimizer_scheduler_rng_and_rows(tmp_path):
    model = tiny(0)
    opt, sched = trained_state(model)
    rows = [{"step": 1, "loss/train": 2.5}, {"step": 2, "loss/train": float("nan")}]
    random.seed(7)
    torch.manual_seed(7)
    save(tmp_path, 3, model, opt, sched, rows)
    expected_py, expected_torch = random.random(), torch.rand(3)

    other = tiny(1)
    opt2, sched2 = trained_state(other, steps=1)
    ckpt = latest_checkpoint(tmp_path, "fp")
    assert ckpt is not None and ckpt.step == 3
    state, got_rows = load_checkpoint(ckpt, {"model": other})
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert state["step"] == 3
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch
    for (_, sa), (_, sb) in zip(opt.state_dict()["state"].items(), opt2.state_dict()["state"].items()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert got_rows[0] == rows[0] and got_rows[1]["loss/train"] != got_rows[1]["loss/train"]   # NaN survives
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)       # RNG restored


def test_latest_complete_checkpoint_wins_and_torn_ones_are_ignored(tmp_path):
    model = tiny(0)
    opt, sched = trained_state(model)
    save(tmp_path, 2, model, opt, sched, keep=5)
    save(tmp_path, 4, model, opt, sched, keep=5)
    assert latest_checkpoint(tmp_path, "fp").step == 4

    # A newer checkpoint cut off before its manifest was written: ignored.
    no_manifest = save(tmp_path, 6, model, opt, sched, keep=5)
    (no_manifest / MANIFEST).unlink()
    assert latest_checkpoint(tmp_path, "fp").step == 4

    # A newer one whose weights were cut short after the manifest (disk full, bad copy): ignored.
    short = save(tmp_path, 8, model, opt, sched, keep=5)
    f = short / "model-model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    assert latest_checkpoint(tmp_path, "fp").step == 4

    # Same size but different bytes (bit rot): the sha256 in the manifest catches it.
    flipped = save(tmp_path, 9, model, opt, sched, keep=5)
    data = bytearray((flipped / STATE_FILE).read_bytes())
    data[-20] ^= 0xFF
    (flipped / STATE_FILE).write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path, "fp").step == 4

    # A garbage manifest and a temporary folder from a crashed writer: ignored.
    bad = tmp_path / "step-00000010"
    bad.mkdir()
    (bad / MANIFEST).write_text("{not json")
    (tmp_path / ".tmp-step-00000012-999").mkdir()
    assert latest_checkpoint(tmp_path, "fp").step == 4
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 4, 8, 9]

    # A checkpoint of another configuration (fingerprint) is not resumed.
    save(tmp_path, 14, model, opt, sched, fp="other", keep=10)
    assert latest_checkpoint(tmp_path, "fp").step == 4
    assert latest_checkpoint(tmp_path, "other").step == 14


def test_saving_prunes_older_checkpoints_and_crash_leftovers(tmp_path):
    model = tiny(0)
    opt, sched = trained_state(model)
    (tmp_path / ".tmp-step-00000001-123").mkdir(parents=True)
    for step in (1, 2, 3):
        save(tmp_path, step, model, opt, sched, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]


def test_state_is_loaded_without_arbitrary_unpickling(tmp_path):
    model = tiny(0)
    opt, sched = trained_state(model)
    path = save(tmp_path, 1, model, opt, sched)
    # Replace state.pt by a pickle of an arbitrary object and re-sign it: the manifest is fine, loading refuses.
    torch.save({"step": 1, "evil": subprocess.Popen}, path / STATE_FILE)
    manifest = json.loads((path / MANIFEST).read_text())
    import hashlib
    manifest["files"][STATE_FILE] = {"bytes": (path / STATE_FILE).stat().st_size,
                                      "sha256": hashlib.sha256((path / STATE_FILE).read_bytes()).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        load_checkpoint(latest_checkpoint(tmp_path, "fp"), {"model": tiny(1)})


def test_manager_saves_on_schedule_never_after_the_last_step_and_clear_keeps_other_files(tmp_path):
    out = tmp_path / "models" / "sft"
    mgr = CheckpointManager(out, every=2, fingerprint="fp")
    assert [s for s in range(1, 8) if mgr.due(s, total=6)] == [2, 4]
    assert not CheckpointManager(out, every=0).due(2, total=6)
    model = tiny(0)
    opt, sched = trained_state(model)
    mgr.save(2, {"model": model}, {"optimizer": opt.state_dict()}, [{"step": 2}])
    (mgr.root / "mlflow_run.json").write_text("{}")
    restored = CheckpointManager(out, every=2, fingerprint="fp").restore({"model": tiny(3)})
    assert restored is not None and restored[0]["step"] == 2 and restored[1] == [{"step": 2}]
    assert CheckpointManager(out, every=2, fingerprint="changed").restore({"model": tiny(3)}) is None
    assert CheckpointManager(out, every=2, fingerprint="fp", is_main=False).save(4, {"model": model}, {}, []) is None
    mgr.clear()
    assert sorted(p.name for p in mgr.root.iterdir()) == ["mlflow_run.json"]      # the run marker is tasks/' file
    (mgr.root / "mlflow_run.json").unlink()
    mgr.clear()
    assert not mgr.root.exists() and not out.exists()


def test_atomic_output_dir_keeps_the_old_output_when_writing_fails(tmp_path):
    out = tmp_path / "model"
    with atomic_output_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash while saving")
    assert (out / "weights").read_text() == "v1"
    with atomic_output_dir(out) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]                  # no temporaries left


def test_a_writer_killed_at_any_moment_never_leaves_a_loadable_torn_checkpoint(tmp_path):
    """A real SIGKILL while a process writes checkpoints in a loop: what is found afterwards loads completely."""
    code = textwrap.dedent(f"""
        import torch, sys
        from torch import nn
        from rlhf.checkpoint import write_checkpoint
        torch.manual_seed(0)
        m = nn.Linear(512, 1024)
        step = 0
        print("ready", flush=True)
        while True:
            step += 1
            with torch.no_grad():
                m.weight.fill_(float(step))
            write_checkpoint({str(tmp_path)!r}, step, {{"model": m}}, {{"x": torch.full((1000,), float(step))}}, [])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 60
    while not list_checkpoints(tmp_path) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3 + random.random() * 0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None
    m = nn.Linear(512, 1024)
    state, _ = load_checkpoint(ckpt, {"model": m})
    assert torch.all(m.weight == float(ckpt.step)) and torch.all(state["x"] == float(ckpt.step))


# -- tasks/tracking.py: retries only for transient connection errors -----------------------------------------------
def test_tracking_calls_are_retried_on_connection_errors_only():
    from tasks.tracking import with_retries
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("Connection refused")
        return "ok"
    assert with_retries(flaky, attempts=4, base_delay=0.01) == "ok" and len(calls) == 3

    calls.clear()

    def broken():
        calls.append(1)
        raise ValueError("invalid metric name")
    with pytest.raises(ValueError):
        with_retries(broken, attempts=4, base_delay=0.01)
    assert len(calls) == 1                                     # a usage error is never retried

    calls.clear()

    def down():
        calls.append(1)
        raise ConnectionError("down")
    with pytest.raises(ConnectionError):
        with_retries(down, attempts=3, base_delay=0.01)
    assert len(calls) == 3                                     # gives up after ``attempts``


def test_a_real_unreachable_tracking_server_counts_as_transient(monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from tasks.tracking import is_transient
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import socket
    with socket.socket() as s:                                 # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception) as err:
        MlflowClient(tracking_uri=f"http://127.0.0.1:{port}").get_experiment_by_name("rlhf")
    assert is_transient(err.value)
    assert not is_transient(mlflow.exceptions.MlflowException("Invalid value for parameter 'lr'"))
