"""Crash-safe checkpoints for the training loops, and atomic stage outputs.

A stage writing ``<out_dir>`` keeps its checkpoints in the sibling folder ``<out_dir>.ckpt/`` (outside the DVC output,
so DVC never caches them; removed when the stage completes)::

    artifacts/models/policy.ckpt/
        step-00000004/              one complete checkpoint (the newest ``keep`` are kept)
            model-policy.safetensors    weights of every trainable module (safetensors, shared tensors handled)
            state.pt                    optimizer, scheduler, KL controller, step, RNG states (tensors and plain data)
            rows.json                   the metric rows logged so far (plots stay complete after a resume)
            manifest.json               written LAST: step, config fingerprint, size and sha256 of every file
        .tmp-step-00000006-1234/    a checkpoint being written (or torn by a crash): never loaded
        mlflow_run.json             the stage's MLflow run id (written by tasks/, so a restart continues that run)

Writes are atomic: everything goes to a temporary folder, every file is fsynced, the manifest is written last, then the
folder is renamed into place (``os.replace``) and the parent fsynced. A folder without a valid manifest, or whose
files do not match it, is ignored; the newest complete checkpoint wins. ``state.pt`` is read with
``torch.load(weights_only=True)``: no arbitrary unpickling (DESIGN.md invariant 5).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

CKPT_SUFFIX = ".ckpt"
MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
ROWS_FILE = "rows.json"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def checkpoint_dir(out_dir: str | Path) -> Path:
    """``artifacts/models/sft`` -> ``artifacts/models/sft.ckpt`` (a sibling, never inside the DVC output)."""
    p = Path(out_dir)
    return p.with_name(p.name + CKPT_SUFFIX)


def fingerprint(*parts) -> str:
    """A stable short hash of the things a checkpoint must match to be resumed (config repr, world size)."""
    return hashlib.sha256("\x1f".join(map(repr, parts)).encode("utf-8")).hexdigest()[:16]


# -- durable file-system primitives ---------------------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and ``os.replace`` (readers see old or new, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write a stage output into; on success it replaces ``out_dir``.

    A crash while writing leaves ``out_dir`` as it was (old or absent) plus a ``.tmp-`` folder that the next write
    removes; readers never see a half-written model folder."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{TMP_PREFIX}{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    old = None
    if out.exists():
        # os.replace cannot replace a non-empty directory: move the old one aside first, then swap.
        old = out.with_name(f"{TMP_PREFIX}{out.name}-old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- RNG state ------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Global RNG states as tensors and plain data (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- checkpoints ----------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    step: int
    manifest: dict


def _read_manifest(path: Path) -> Optional[dict]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT_VERSION or not isinstance(m.get("files"), dict):
        return None
    return m


def is_complete(path: Path, manifest: dict, verify_hash: bool = True) -> bool:
    """Every file the manifest lists exists with the recorded size (and sha256)."""
    for name, meta in manifest["files"].items():
        f = path / name
        try:
            if f.stat().st_size != meta["bytes"]:
                return False
        except OSError:
            return False
        if verify_hash and _sha256(f) != meta["sha256"]:
            return False
    return True


def list_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Checkpoints under ``root`` that have a readable manifest, oldest first (files not yet verified)."""
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if not p.is_dir() or not p.name.startswith(STEP_PREFIX):
            continue
        m = _read_manifest(p)
        if m is not None and isinstance(m.get("step"), int):
            out.append(Checkpoint(p, m["step"], m))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(root: str | Path, fingerprint: Optional[str] = None) -> Optional[Checkpoint]:
    """The newest complete checkpoint (matching ``fingerprint`` when given); torn or partial ones are skipped."""
    for c in reversed(list_checkpoints(root)):
        if fingerprint is not None and c.manifest.get("fingerprint") != fingerprint:
            continue
        if is_complete(c.path, c.manifest):
            return c
    return None


def write_checkpoint(root: str | Path, step: int, models: dict[str, torch.nn.Module], state: dict,
                     rows: list[dict], fingerprint: str = "", keep: int = 1) -> Path:
    """Write one checkpoint atomically, then remove all but the newest ``keep`` (and any torn leftovers)."""
    from safetensors.torch import save_model

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = []
    for name, module in models.items():
        f = tmp / f"model-{name}.safetensors"
        save_model(module, str(f))
        files.append(f)
    torch.save({**state, "step": int(step), "rng": rng_state()}, tmp / STATE_FILE)
    (tmp / ROWS_FILE).write_text(json.dumps(rows))
    files += [tmp / STATE_FILE, tmp / ROWS_FILE]
    for f in files:
        fsync_file(f)
    manifest = {"format": FORMAT_VERSION, "step": int(step), "fingerprint": fingerprint, "created": time.time(),
                "models": sorted(models),
                "files": {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))       # last: its presence marks completeness
    fsync_file(tmp / MANIFEST)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    _prune(root, keep=keep, current=final)
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    """Remove torn temporaries and every checkpoint except ``current`` and the newest ``keep - 1`` before it."""
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
    others = [c for c in list_checkpoints(root) if c.path != current]
    kept = {c.path for c in others[-(keep - 1):]} if keep > 1 else set()
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and p != current and p not in kept:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(ckpt: Checkpoint, models: dict[str, torch.nn.Module],
                    restore_rng: bool = True) -> tuple[dict, list[dict]]:
    """Load weights into ``models`` (in place); returns (state, rows). ``state.pt`` is read with weights_only=True."""
    from safetensors.torch import load_model

    missing = set(models) - set(ckpt.manifest.get("models", []))
    if missing:
        raise ValueError(f"{ckpt.path}: no weights for {', '.join(sorted(missing))}")
    for name, module in models.items():
        load_model(module, str(ckpt.path / f"model-{name}.safetensors"))
    state = torch.load(ckpt.path / STATE_FILE, map_location="cpu", weights_only=True)
    rows = json.loads((ckpt.path / ROWS_FILE).read_text())
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state, rows


class CheckpointManager:
    """What a stage needs: resume from the newest matching checkpoint, save every ``every`` steps, clean up.

    Only the main process (rank 0) writes; every process reads (a shared file system is assumed)."""

    def __init__(self, out_dir: str | Path, every: int, fingerprint: str = "", keep: int = 1, is_main: bool = True):
        self.root = checkpoint_dir(out_dir)
        self.every, self.fingerprint, self.keep, self.is_main = int(every), fingerprint, keep, is_main
        self.resumed_step = 0

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` (1-based count of finished steps)? Never after the last one: the output follows."""
        return self.every > 0 and step % self.every == 0 and step < total

    def restore(self, models: dict[str, torch.nn.Module]) -> Optional[tuple[dict, list[dict]]]:
        """Load the newest complete checkpoint into ``models``; None when there is none (fresh start)."""
        ckpt = latest_checkpoint(self.root, self.fingerprint)
        if ckpt is None:
            return None
        state, rows = load_checkpoint(ckpt, models)
        self.resumed_step = int(state["step"])
        if self.is_main:
            print(f"resuming from checkpoint {ckpt.path} (step {self.resumed_step})", file=sys.stderr, flush=True)
        return state, rows

    def save(self, step: int, models: dict[str, torch.nn.Module], state: dict, rows: list[dict]) -> Optional[Path]:
        if not self.is_main:
            return None
        return write_checkpoint(self.root, step, models, state, rows, self.fingerprint, self.keep)

    def clear(self) -> None:
        """Remove every checkpoint (the stage completed); other files (the MLflow run marker) are left to their
        owner, and the folder goes when it is empty."""
        if not self.is_main or not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.is_dir() and (p.name.startswith(STEP_PREFIX) or p.name.startswith(TMP_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()


# -- glue for the stage modules -------------------------------------------------------------------------------------
def inputs_signature(*paths: str | Path) -> list:
    """(path, size, mtime) of every file under ``paths``: a checkpoint is resumed only against the same inputs
    (an upstream stage that ran again invalidates it; a false mismatch only costs a fresh start)."""
    sig = []
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
                sig.append((str(f), st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append((str(f), None, None))
    return sig


def resume(manager: CheckpointManager, models: dict[str, torch.nn.Module], recorder) -> Optional[dict]:
    """Restore the newest checkpoint into ``models`` and ``recorder.rows``; returns the loop state (None: fresh)."""
    loaded = manager.restore(models)
    if loaded is None:
        return None
    state, rows = loaded
    recorder.rows = list(rows)
    return state


def step_saver(manager: CheckpointManager, models: dict[str, torch.nn.Module], recorder):
    """``on_step_end`` for train_causal_lm / train_reward_model: a checkpoint every ``manager.every`` steps."""
    def on_step_end(step: int, live: dict) -> None:
        if manager.due(step, live["total"]):
            manager.save(step, models, {"optimizer": live["optimizer"].state_dict(),
                                        "scheduler": live["scheduler"].state_dict()}, recorder.rows)
    return on_step_end
