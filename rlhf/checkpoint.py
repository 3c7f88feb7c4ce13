"""Crash-safe checkpoints for the training loops (atomic stage outputs: rlhf/tempdirs.py).

A stage writing ``<out_dir>`` keeps its checkpoints in the sibling folder ``<out_dir>.ckpt/`` (outside the DVC output,
so DVC never caches them; removed when the stage completes)::

    artifacts/models/policy.ckpt/
        step-00000004/              one complete checkpoint (the newest ``keep`` are kept)
            model-policy.safetensors    weights of every trainable module (safetensors, shared tensors handled)
            state.pt                    optimizer, scheduler, KL controller, step, RNG states (tensors and plain data)
            rows.json                   the metric rows logged so far (plots stay complete after a resume)
            manifest.json               written LAST: step, config fingerprint, size and sha256 of every file
        .tmp-step-00000006-<host>-<pid>/   a checkpoint being written (or torn by a crash): never loaded
        mlflow_run.json             the stage's MLflow run id (written by tasks/, so a restart continues that run)

Writes are atomic: everything goes to a temporary folder, every file is fsynced, the manifest is written last, then the
folder is renamed into place (``os.replace``) and the parent fsynced. A folder without a valid manifest, or whose
files do not match it, is ignored; the newest complete checkpoint wins. ``state.pt`` is read with
``torch.load(weights_only=True)``: no arbitrary unpickling (DESIGN.md invariant 5).

A checkpoint is resumed only by the same run: its fingerprint covers the config, the number of processes, the input
files (size, mtime) and the code (``rlhf.codeversion``: the stage module and every rlhf/ module it imports). A
checkpoint that exists but is not resumed (other fingerprint, torn, corrupt, unreadable) is reported on stderr with
the reason, never skipped silently. Temporary folders name their writer (host, pid) and are removed only once that
writer is gone (``rlhf.tempdirs``): a live run's half-written checkpoint or output is never deleted under it.
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
from typing import Optional, Union

import torch

from rlhf.codeversion import code_version
from rlhf.tempdirs import fsync_dir, fsync_file, owned_name, remove_abandoned

CKPT_SUFFIX = ".ckpt"
MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
ROWS_FILE = "rows.json"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"
Fingerprint = Union[str, dict]          # one hash, or {part: hash} (config, world size, inputs, code)


def checkpoint_dir(out_dir: str | Path) -> Path:
    """``artifacts/models/sft`` -> ``artifacts/models/sft.ckpt`` (a sibling, never inside the DVC output)."""
    p = Path(out_dir)
    return p.with_name(p.name + CKPT_SUFFIX)


def fingerprint(*parts) -> str:
    """A stable short hash of ``parts`` (their reprs)."""
    return hashlib.sha256("\x1f".join(map(repr, parts)).encode("utf-8")).hexdigest()[:16]


def stage_fingerprint(config, world_size: int, inputs: list, module: str) -> dict[str, str]:
    """What a stage's checkpoint must match to be resumed, part by part (so a mismatch can say which part differs):
    the stage's config, the number of processes, ``inputs_signature(...)`` of its inputs, and the code it runs
    (``module``, normally the stage module's ``__name__``, and every rlhf/ module it imports)."""
    return {"config": fingerprint(config), "world size": fingerprint(world_size), "inputs": fingerprint(inputs),
            "code": code_version(module)[:16]}


def _fingerprint_id(fp: Fingerprint) -> str:
    return fp if isinstance(fp, str) else fingerprint(sorted(fp.items()))


# -- durable files --------------------------------------------------------------------------------------------------
def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and ``os.replace`` (readers see old or new, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(owned_name(path.name))
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


def _manifest(path: Path) -> tuple[Optional[dict], str]:
    """(the manifest, "") or (None, why the folder has no usable one)."""
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no manifest (its write was cut short)"
    except (OSError, ValueError) as e:
        return None, f"unreadable manifest ({type(e).__name__})"
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(m.get("step"), int):
        return None, "invalid manifest"
    if m.get("format") != FORMAT_VERSION:
        return None, f"manifest format {m.get('format')!r}, this code reads {FORMAT_VERSION}"
    return m, ""


def files_problem(path: Path, manifest: dict, verify_hash: bool = True) -> str:
    """"" when every file the manifest lists exists with the recorded size (and sha256); otherwise what is wrong."""
    for name, meta in manifest["files"].items():
        if not isinstance(meta, dict):
            return f"invalid manifest entry for {name}"
        try:
            size = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != meta.get("bytes"):
            return f"{name} has {size} bytes, its manifest says {meta.get('bytes')}"
        if verify_hash and _sha256(path / name) != meta.get("sha256"):
            return f"{name} does not match its sha256 in the manifest (corrupt)"
    return ""


def fingerprint_problem(manifest: dict, fp: Fingerprint) -> str:
    """"" when the checkpoint was written by a run with fingerprint ``fp``; otherwise which parts differ."""
    if manifest.get("fingerprint") == _fingerprint_id(fp):
        return ""
    theirs = manifest.get("fingerprint_parts")
    if isinstance(fp, dict) and isinstance(theirs, dict):
        differ = [k for k in fp if theirs.get(k) != fp[k]] + [k for k in theirs if k not in fp]
        if differ:
            return f"written with a different {', '.join(differ)}"
    return "written with a different config, code, inputs or number of processes (fingerprint differs)"


def step_folders(root: str | Path) -> list[Path]:
    """The ``step-*`` folders under ``root``, complete or not, newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []

    def step(p: Path) -> int:
        tail = p.name[len(STEP_PREFIX):]
        return int(tail) if tail.isdigit() else -1
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)), key=step, reverse=True)


def examine(path: Path, fp: Optional[Fingerprint] = None) -> tuple[Optional[Checkpoint], str]:
    """(the checkpoint in ``path``, "") when it is complete and matches ``fp`` (when given); (None, why not)."""
    m, why = _manifest(path)
    if m is None:
        return None, why
    why = fingerprint_problem(m, fp) if fp is not None else ""
    why = why or files_problem(path, m)
    return (None, why) if why else (Checkpoint(path, m["step"], m), "")


def list_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Checkpoints under ``root`` that have a readable manifest, oldest first (files not yet verified)."""
    out = []
    for p in step_folders(root):
        m, _ = _manifest(p)
        if m is not None:
            out.append(Checkpoint(p, m["step"], m))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(root: str | Path, fingerprint: Optional[Fingerprint] = None) -> Optional[Checkpoint]:
    """The newest complete checkpoint (matching ``fingerprint`` when given); torn or partial ones are skipped."""
    for p in step_folders(root):                       # newest first, each manifest read once
        ckpt, _ = examine(p, fingerprint)
        if ckpt is not None:
            return ckpt
    return None


def write_checkpoint(root: str | Path, step: int, models: dict[str, torch.nn.Module], state: dict,
                     rows: list[dict], fingerprint: Fingerprint = "", keep: int = 1,
                     weights: Optional[dict] = None) -> Path:
    """Write one checkpoint atomically, then remove all but the newest ``keep`` (and the leftovers of dead writers).
    ``weights``: {name: state dict} written for those models instead of the modules' own tensors."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / owned_name(final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, step, models, state, rows, fingerprint, weights or {})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    _prune(root, keep=keep, current=final)
    return final


def _write_files(tmp: Path, step: int, models: dict[str, torch.nn.Module], state: dict, rows: list[dict],
                 fp: Fingerprint, weights: dict) -> None:
    """Weights, state and rows into ``tmp``, each fsynced, then the manifest (last: its presence marks completeness)."""
    from safetensors.torch import save_file, save_model

    files = []
    for name, module in models.items():
        f = tmp / f"model-{name}.safetensors"
        if weights.get(name) is not None:
            save_file(_unshared(weights[name], _tied_aliases(module)), str(f))
        else:
            save_model(module, str(f))
        files.append(f)
    torch.save({**state, "step": int(step), "rng": rng_state()}, tmp / STATE_FILE)
    (tmp / ROWS_FILE).write_text(json.dumps(rows))
    files += [tmp / STATE_FILE, tmp / ROWS_FILE]
    for f in files:
        fsync_file(f)
    manifest = {"format": FORMAT_VERSION, "step": int(step), "fingerprint": _fingerprint_id(fp),
                "fingerprint_parts": fp if isinstance(fp, dict) else None, "created": time.time(),
                "models": sorted(models),
                "files": {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync_file(tmp / MANIFEST)
    fsync_dir(tmp)


def _tied_aliases(module: torch.nn.Module) -> set[str]:
    """The names ``safetensors.torch.save_model`` leaves out for ``module``: of parameters tied together (one
    object under several names, e.g. GPT-2's lm_head.weight and transformer.wte.weight), all but the first name in
    sorted order, as its duplicate removal keeps; ``load_model`` then expects exactly the remaining names."""
    names: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return {n for group in names.values() for n in sorted(group)[1:]}


def _unshared(state_dict: dict, leave_out: set[str] = frozenset()) -> dict:
    """Contiguous tensors, none sharing storage with another (safetensors refuses shared ones), without the names
    in ``leave_out``: the file ``save_model`` writes for the module, from a state dict gathered elsewhere."""
    out, seen = {}, set()
    for k, t in state_dict.items():
        if k in leave_out:
            continue
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _prune(root: Path, keep: int, current: Path) -> None:
    """Remove the temporaries of dead writers and every checkpoint except ``current`` and the newest ``keep - 1``
    before it (a temporary another live process is writing stays)."""
    remove_abandoned(root)
    others = [c for c in list_checkpoints(root) if c.path != current]
    kept = {c.path for c in others[-(keep - 1):]} if keep > 1 else set()
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and p != current and p not in kept:
            shutil.rmtree(p, ignore_errors=True)


def read_checkpoint(ckpt: Checkpoint, models: dict[str, torch.nn.Module]) -> tuple[dict, list[dict]]:
    """(state, rows), having checked that every weight file fits ``models`` (names, shapes) without changing them:
    whatever makes a checkpoint unreadable shows here, before a model is touched. weights_only=True for state.pt."""
    missing = set(models) - set(ckpt.manifest.get("models", []))
    if missing:
        raise ValueError(f"{ckpt.path}: no weights for {', '.join(sorted(missing))}")
    state = torch.load(ckpt.path / STATE_FILE, map_location="cpu", weights_only=True)
    rows = json.loads((ckpt.path / ROWS_FILE).read_text())
    if not isinstance(state, dict) or "step" not in state or not isinstance(rows, list):
        raise ValueError(f"{ckpt.path}: {STATE_FILE} or {ROWS_FILE} is not what a checkpoint holds")
    for name, module in models.items():
        _check_weights(ckpt.path / f"model-{name}.safetensors", module)
    return state, rows


def _check_weights(path: Path, module: torch.nn.Module) -> None:
    """Every tensor in ``path`` is one of ``module``'s, same shape; each of the module's is in the file or shares
    storage with one that is (safetensors stores tied weights once)."""
    from safetensors import safe_open

    own = module.state_dict()
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    wrong = [k for k, shape in shapes.items() if k not in own or tuple(own[k].shape) != shape]
    stored = {own[k].data_ptr() for k in shapes if k in own}
    absent = [k for k, t in own.items() if k not in shapes and t.data_ptr() not in stored]
    if wrong or absent:
        raise ValueError(f"{path.name} does not fit the model ({len(wrong)} tensors unknown or of another shape, "
                         f"{len(absent)} missing: {', '.join((wrong + absent)[:3])})")


def load_checkpoint(ckpt: Checkpoint, models: dict[str, torch.nn.Module], restore_rng: bool = True,
                    read: Optional[tuple[dict, list[dict]]] = None) -> tuple[dict, list[dict]]:
    """Load weights into ``models`` (in place); returns (state, rows), ``read`` when given (``read_checkpoint``'s
    result: not read twice). ``state.pt`` is read with weights_only=True."""
    from safetensors.torch import load_model

    state, rows = read or read_checkpoint(ckpt, models)
    for name, module in models.items():
        load_model(module, str(ckpt.path / f"model-{name}.safetensors"))
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state, rows


class CheckpointManager:
    """What a stage needs: resume from the newest matching checkpoint, save every ``every`` steps, clean up.

    Only the main process (rank 0) writes and reports; every process reads (a shared file system is assumed)."""

    def __init__(self, out_dir: str | Path, every: int, fingerprint: Fingerprint = "", keep: int = 1,
                 is_main: bool = True):
        self.root = checkpoint_dir(out_dir)
        self.every, self.fingerprint, self.keep, self.is_main = int(every), fingerprint, keep, is_main
        self.resumed_step = 0
        self._timed = False

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` (1-based count of finished steps)? Never after the last one: the output follows."""
        return self.every > 0 and step % self.every == 0 and step < total

    def note(self, line: str) -> None:
        if self.is_main:
            print(line, file=sys.stderr, flush=True)

    def restore(self, models: dict[str, torch.nn.Module]) -> Optional[tuple[dict, list[dict]]]:
        """Load the newest complete checkpoint of this run (same fingerprint) into ``models``; None: a fresh start.
        Each checkpoint found but not used gets one line on stderr: the folder and the reason."""
        folders = step_folders(self.root)
        for i, path in enumerate(folders):
            ckpt, why = examine(path, self.fingerprint)
            if ckpt is not None:
                try:
                    read = read_checkpoint(ckpt, models)
                except Exception as e:                      # noqa: BLE001 - anything unreadable: not this one
                    why = f"unreadable: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                else:
                    state, rows = load_checkpoint(ckpt, models, read=read)
                    self.resumed_step = int(state["step"])
                    self.note(f"resuming from checkpoint {ckpt.path} (step {self.resumed_step})")
                    return state, rows
            then = "trying an older one" if i + 1 < len(folders) else "starting from step 0"
            self.note(f"checkpoint {path} not resumed: {why}; {then}")
        return None

    def save(self, step: int, models: dict[str, torch.nn.Module], state: dict, rows: list[dict],
             weights: Optional[dict] = None) -> Optional[Path]:
        """Write a checkpoint (main process only); the first one's duration is reported, to size ``every`` by.
        ``weights``: {name: state dict} to write instead of a module's own tensors (FSDP's gathered ones)."""
        if not self.is_main:
            return None
        t0 = time.perf_counter()
        path = write_checkpoint(self.root, step, models, state, rows, self.fingerprint, self.keep, weights)
        if not self._timed:
            self._timed = True
            self.note(f"checkpoint {path} written in {time.perf_counter() - t0:.2f} s (one every {self.every} steps)")
        return path

    def clear(self) -> None:
        """Remove every checkpoint (the stage completed) and dead writers' temporaries; other files (the MLflow run
        marker) are left to their owner, and the folder goes when it is empty."""
        if not self.is_main or not self.root.is_dir():
            return
        for p in step_folders(self.root):
            shutil.rmtree(p, ignore_errors=True)
        remove_abandoned(self.root)
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


def step_saver(manager: CheckpointManager, models: dict[str, torch.nn.Module], recorder, dist=None):
    """``on_step_end`` for train_causal_lm / train_reward_model: a checkpoint every ``manager.every`` steps.
    ``dist`` (rlhf/distributed.py DistContext): under FSDP the weights and the optimiser state are gathered whole
    first (collectives: every rank runs this), so the checkpoint is the one a single process writes."""
    from rlhf import distributed, sharding
    dist = dist or distributed.SINGLE

    def on_step_end(step: int, live: dict) -> None:
        if manager.due(step, live["total"]):
            weights = {name: sharding.full_state_dict(m, dist) for name, m in models.items()}
            state = {"optimizer": sharding.optimizer_state(live["model"], live["optimizer"], dist),
                     "scheduler": live["scheduler"].state_dict()}
            manager.save(step, models, state, recorder.rows, weights=weights)
    return on_step_end
