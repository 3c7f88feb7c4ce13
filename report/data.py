"""What a pipeline run left in the working tree, read into ``RunFiles``: the stages dvc.yaml declares
(tasks/graph.py), metrics/<name>.json, plots/<stage>/<name>.json, metrics/promote.json and the few stage outputs
the page shows when that stage is declared (prepare's rejects, preferences' summary, evaluate's samples).

Pure data, no HTML. A missing or broken file becomes a note on the page, never an error.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMOTE = "promote"          # metrics/promote.json: the promotion record (flows/promote.py), not a stage


@dataclass
class RunFiles:
    """What one pipeline run left in the working tree (every part optional)."""
    root: Path
    stages: list[str] = field(default_factory=list)                      # dvc.yaml's stages, as declared there
    metrics: dict[str, dict] = field(default_factory=dict)                # name -> metrics/<name>.json
    plots: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # stage -> plot name -> rows
    preferences_summary: dict | None = None
    prepare_rejects: dict[str, int] = field(default_factory=dict)          # reason -> count
    samples: list[dict] = field(default_factory=list)
    samples_total: int = 0
    promote: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)                   # role -> path shown on the page
    notes: list[str] = field(default_factory=list)                        # files missing or unreadable


def load_run_files(root: str | Path = ".", max_samples: int = 20) -> RunFiles:
    """Read the run's files under ``root``; missing ones become notes, nothing raises for a partial run."""
    run = RunFiles(root=Path(root))
    _read_metrics(run)
    run.stages = _stages(run)
    for path in sorted((run.root / "plots").glob("*/*.json")):
        rows = read_json(path, run.notes)
        if isinstance(rows, list):
            run.plots.setdefault(path.parent.name, {})[path.stem] = [r for r in rows if isinstance(r, dict)]
    if "prepare" in run.stages:
        run.prepare_rejects = _tally_reasons(run.root / out_dir(run, "prepare") / "rejects.jsonl")
    if "preferences" in run.stages:
        run.paths["preferences_summary"] = str(Path(out_dir(run, "preferences")) / "summary.json")
        summary = read_json(run.root / run.paths["preferences_summary"], run.notes)
        run.preferences_summary = summary if isinstance(summary, dict) else None
    if "evaluate" in run.stages:
        run.paths["samples"] = str(Path(out_dir(run, "evaluate")) / "samples.jsonl")
        run.samples, run.samples_total = _read_samples(run.root / run.paths["samples"], max_samples, run.notes)
    promote = read_json(run.root / "metrics" / f"{PROMOTE}.json", run.notes)
    run.promote = promote if isinstance(promote, dict) else None
    return run


def _read_metrics(run: RunFiles) -> None:
    for path in sorted((run.root / "metrics").glob("*.json")):
        data = read_json(path, run.notes)
        if isinstance(data, dict) and path.stem != PROMOTE:
            run.metrics[path.stem] = data


def _stages(run: RunFiles) -> list[str]:
    """dvc.yaml's stages; without a readable dvc.yaml, the names of the metrics files (with a note)."""
    from tasks.graph import GraphError, declared_stages
    try:
        return declared_stages(run.root)
    except (GraphError, OSError, ValueError) as e:       # yaml.YAMLError is a ValueError
        run.notes.append(f"stages taken from metrics/*.json: {e}")
        return sorted(run.metrics)


def out_dir(run: RunFiles, stage: str) -> str:
    """``<stage>.out_dir`` as params.yaml sets it (its config dataclass's default when it cannot be read)."""
    import typing

    import yaml

    from rlhf.config import ConfigError, PipelineConfig, from_dict
    section = typing.get_type_hints(PipelineConfig)[stage]
    raw: Any = {}
    path = run.root / "params.yaml"
    try:
        if path.exists():
            raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(stage)
        return from_dict(section, raw, stage).out_dir
    except (ConfigError, yaml.YAMLError, AttributeError) as e:
        run.notes.append(f"params.yaml not used for {stage} ({e}); default paths assumed")
        return section().out_dir


def read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e})")
        return None


def _tally_reasons(path: Path, limit: int = 1_000_000) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            try:
                reason = str(json.loads(line).get("reason", "?"))
            except (ValueError, AttributeError):
                reason = "unreadable reject line"
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _read_samples(path: Path, limit: int, notes: list[str]) -> tuple[list[dict], int]:
    if not path.exists():
        return [], 0
    rows, total = [], 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            total += 1
            if len(rows) < limit:
                try:
                    obj = json.loads(line)
                except ValueError:
                    notes.append(f"{path}: line {total} is not JSON")
                    continue
                if isinstance(obj, dict):
                    rows.append(obj)
    return rows, total


def provenance(root: Path) -> dict[str, str]:
    """Git commit and the hashes of params.yaml and dvc.lock: with the seed, what reproduces this run."""
    out = {}
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        out["git commit"] = res.stdout.strip() or "-"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["git working tree"] = "modified" if dirty else "clean"
    except (OSError, subprocess.SubprocessError):
        out["git commit"] = "-"
    for name in ("params.yaml", "dvc.lock"):
        p = root / name
        out[f"{name} sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "missing"
    return out


def content_key(run: RunFiles) -> str:
    """A short key of the run's metrics: the same outputs give the same file name."""
    blob = json.dumps(run.metrics, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
