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

from rlhf.checkpoint import (MANIFEST, STATE_FILE, CheckpointManager, checkpoint_dir, latest_checkpoint,
                             list_checkpoints, load_checkpoint, stage_fingerprint, write_checkpoint)
from rlhf.codeversion import code_version
from rlhf.config import TrainConfig
from rlhf.tempdirs import STALE_AFTER_S, atomic_output_dir, owned_name, pid_alive


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


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_saving_prunes_older_checkpoints_and_crash_leftovers(tmp_path):
    model = tiny(0)
    opt, sched = trained_state(model)
    (tmp_path / owned_name("step-00000001", pid=dead_pid())).mkdir(parents=True)
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


# -- a checkpoint found but not resumed is reported with its folder and the reason ---------------------------------
def weights_of(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model: nn.Module, weights: dict) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def sft_fingerprint(lr: float = 1e-3, world_size: int = 1, inputs=(("data/sft.jsonl", 10, 1),)) -> dict:
    return stage_fingerprint(TrainConfig(lr=lr), world_size, list(inputs), "rlhf.stages.sft")


@pytest.mark.parametrize("part", ["config", "world size", "inputs", "code"])
def test_a_checkpoint_of_another_run_is_reported_with_what_differs_and_not_resumed(tmp_path, capsys, monkeypatch,
                                                                                    part):
    out, original = tmp_path / "sft", sft_fingerprint()
    saved = CheckpointManager(out, every=2, fingerprint=original).save(2, {"model": tiny(0)}, {}, [])
    capsys.readouterr()
    if part == "code":                             # an edit to any module the stage imports changes its code version
        monkeypatch.setattr("rlhf.checkpoint.code_version", lambda module: "0" * 64)
    now = {"config": sft_fingerprint(lr=2e-3), "world size": sft_fingerprint(world_size=2),
           "inputs": sft_fingerprint(inputs=[("data/sft.jsonl", 11, 2)]), "code": sft_fingerprint()}[part]
    model = tiny(1)
    before = weights_of(model)
    assert CheckpointManager(out, every=2, fingerprint=now).restore({"model": model}) is None
    err = capsys.readouterr().err
    assert f"checkpoint {saved} not resumed: written with a different {part}; starting from step 0" in err, err
    assert same_weights(model, before)
    assert CheckpointManager(out, every=2, fingerprint=original).restore({"model": tiny(1)}) is not None


def flip_a_byte(path):
    f = path / "model-model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))


def cut_short(path):
    f = path / "model-model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])


def pickled_object_in_state(path):
    """Re-signed in the manifest, so only loading can tell (weights_only refuses it)."""
    import hashlib
    torch.save({"step": 2, "evil": subprocess.Popen}, path / STATE_FILE)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][STATE_FILE] = {"bytes": (path / STATE_FILE).stat().st_size,
                                      "sha256": hashlib.sha256((path / STATE_FILE).read_bytes()).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(manifest))


def weights_of_another_shape(path):
    other = write_checkpoint(path.parent / "other", 2, {"model": nn.Linear(3, 3)}, {}, [], fingerprint="fp")
    for f in path.iterdir():
        f.unlink()
    for f in other.iterdir():
        f.rename(path / f.name)


DAMAGE = {"corrupt": (flip_a_byte, "model-model.safetensors does not match its sha256 in the manifest (corrupt)"),
          "cut short": (cut_short, "model-model.safetensors has "),
          "no manifest": (lambda p: (p / MANIFEST).unlink(), "no manifest"),
          "garbage manifest": (lambda p: (p / MANIFEST).write_text("{not json"), "unreadable manifest"),
          "unreadable state": (pickled_object_in_state, "unreadable: UnpicklingError"),
          "another model": (weights_of_another_shape, "does not fit the model")}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_reported_and_leaves_the_model_untouched(tmp_path, capsys, damage):
    out = tmp_path / "sft"
    saved = CheckpointManager(out, every=2, fingerprint="fp").save(2, {"model": tiny(0)}, {}, [])
    break_it, reason = DAMAGE[damage]
    break_it(saved)
    capsys.readouterr()
    model = tiny(1)
    before = weights_of(model)
    assert CheckpointManager(out, every=2, fingerprint="fp").restore({"model": model}) is None
    err = capsys.readouterr().err
    assert f"checkpoint {saved} not resumed: " in err and reason in err and "starting from step 0" in err, err
    assert same_weights(model, before)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    out = tmp_path / "sft"
    mgr = CheckpointManager(out, every=2, fingerprint="fp", keep=2)
    mgr.save(2, {"model": tiny(0)}, {}, [{"step": 2}])
    flip_a_byte(mgr.save(4, {"model": tiny(0)}, {}, [{"step": 4}]))
    capsys.readouterr()
    state, rows = CheckpointManager(out, every=2, fingerprint="fp").restore({"model": tiny(1)})
    assert state["step"] == 2 and rows == [{"step": 2}]
    err = capsys.readouterr().err
    assert "step-00000004 not resumed: model-model.safetensors does not match" in err and "trying an older one" in err
    assert f"resuming from checkpoint {mgr.root / 'step-00000002'} (step 2)" in err


def test_only_the_main_process_reports(tmp_path, capsys):
    out = tmp_path / "sft"
    CheckpointManager(out, every=2, fingerprint="fp").save(2, {"model": tiny(0)}, {}, [])
    capsys.readouterr()
    assert CheckpointManager(out, every=2, fingerprint="other", is_main=False).restore({"model": tiny(1)}) is None
    assert capsys.readouterr().err == ""


def test_the_code_version_follows_the_modules_a_stage_imports(tmp_path):
    def package(root, losses="x = 1\n", other="y = 2\n"):
        (root / "rlhf" / "stages").mkdir(parents=True)
        (root / "rlhf" / "__init__.py").write_text("")
        (root / "rlhf" / "stages" / "__init__.py").write_text("")
        (root / "rlhf" / "stages" / "s.py").write_text("def f():\n    from rlhf.losses import x\n")
        (root / "rlhf" / "losses.py").write_text(losses)
        (root / "rlhf" / "other.py").write_text(other)
        return root
    base = code_version("rlhf.stages.s", package(tmp_path / "a"))
    assert code_version("rlhf.stages.s", package(tmp_path / "b", losses="x = 2\n")) != base    # an imported module
    assert code_version("rlhf.stages.s", package(tmp_path / "c", other="y = 3\n")) == base     # one it never runs
    with pytest.raises(ValueError, match="no module"):
        code_version("__main__")


# -- temporaries are removed only when their writer is gone --------------------------------------------------------
def test_a_live_writers_temporaries_survive_cleanup_and_a_dead_writers_go(tmp_path):
    live = subprocess.Popen(["sleep", "60"])                 # another process, still writing
    try:
        dead, models = dead_pid(), tmp_path / "models"
        ckpts = models / "sft.ckpt"
        ckpts.mkdir(parents=True)
        keep = [models / owned_name("sft", pid=live.pid), ckpts / owned_name("step-00000004", pid=live.pid),
                ckpts / owned_name("mlflow_run.json", pid=live.pid), models / ".tmp-sft-elsewhere.example-1"]
        gone = [models / owned_name("sft", pid=dead), models / owned_name("sft-old", pid=dead),
                ckpts / owned_name("step-00000002", pid=dead), models / ".tmp-sft-elsewhere.example-2"]
        for p in keep + gone:
            p.mkdir()
        day_ago = time.time() - STALE_AFTER_S - 60
        os.utime(gone[-1], (day_ago, day_ago))               # another host's, untouched for over a day
        with atomic_output_dir(models / "sft") as tmp:
            (tmp / "weights").write_text("v1")
        mgr = CheckpointManager(models / "sft", every=1, fingerprint="fp")
        mgr.save(6, {"model": tiny(0)}, {}, [])
        assert [p.name for p in keep if not p.exists()] == []
        assert [p.name for p in gone if p.exists()] == []
        mgr.clear()
        assert all(p.exists() for p in keep) and not (ckpts / "step-00000006").exists()
    finally:
        live.kill()
        live.wait()


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid())

    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "kill", denied)
    assert pid_alive(12345)


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
