"""The run report's inputs: what a pipeline run leaves in the working tree (metrics/, plots/, artifacts/), read
into ``RunFiles``; a missing or broken file becomes a note on the page, never an error (flows/report.py renders)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


STAGES = ("prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate")


# ---------------------------------------------------------------------------------------------------------- data
@dataclass
class RunFiles:
    """What one pipeline run left in the working tree (every part optional)."""
    root: Path
    metrics: dict[str, dict] = field(default_factory=dict)                # stage -> metrics/<stage>.json
    plots: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # stage -> plot name -> rows
    preferences_summary: dict | None = None
    prepare_rejects: dict[str, int] = field(default_factory=dict)          # reason -> count
    samples: list[dict] = field(default_factory=list)
    samples_total: int = 0
    promote: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)                   # role -> path shown on the page
    notes: list[str] = field(default_factory=list)                        # files missing or unreadable


@dataclass
class StageRun:
    """One stage's MLflow run as the report shows it."""
    run_id: str
    url: str | None = None
    in_parent: bool = True          # False: the stage was skipped in this pipeline run; this is the run it came from
    matches_files: bool | None = None   # its final/* metrics equal metrics/<stage>.json (None: nothing to compare)
    seconds: float | None = None
    registered: list[str] = field(default_factory=list)   # "rlhf-policy v3 (challenger)"
    origin: str = ""                # overrides the "run of" text (e.g. a run outside the pipeline run)


@dataclass
class Tracking:
    """The MLflow side of a report (see flows/commands/report.py)."""
    tracking_uri: str
    parent_run_id: str | None = None
    parent_url: str | None = None
    experiment_id: str | None = None
    stages: dict[str, StageRun] = field(default_factory=dict)
    ui_hint: str = ""
    notes: list[str] = field(default_factory=list)
    promotion: dict | None = None               # promotion/report.json of the run's 'promote' MLflow run
    promotion_run_id: str | None = None
    promotion_url: str | None = None


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e})")
        return None


def _config_paths(root: Path, notes: list[str]) -> dict[str, str]:
    """Where params.yaml puts the preferences and evaluate outputs (the defaults when it cannot be read)."""
    import yaml

    from rlhf.config import ConfigError, PipelineConfig, from_dict
    cfg = PipelineConfig()
    path = root / "params.yaml"
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            raw.pop("promote", None)           # flows/promote.py's section, not a stage
            cfg = from_dict(PipelineConfig, raw)
        except (ConfigError, yaml.YAMLError, AttributeError) as e:
            notes.append(f"params.yaml not used ({e}); default paths assumed")
    return {"preferences": cfg.preferences.out_dir, "evaluate": cfg.evaluate.out_dir, "prepare": cfg.prepare.out_dir}


def load_run_files(root: str | Path = ".", max_samples: int = 20) -> RunFiles:
    """Read the run's files under ``root``; missing ones become notes, nothing raises for a partial run."""
    root = Path(root)
    run = RunFiles(root=root)
    dirs = _config_paths(root, run.notes)
    others = sorted(p.stem for p in (root / "metrics").glob("*.json") if p.stem not in (*STAGES, "promote"))
    for stage in (*STAGES, *others):
        data = _read_json(root / "metrics" / f"{stage}.json", run.notes)
        if isinstance(data, dict):
            run.metrics[stage] = data
    for path in sorted((root / "plots").glob("*/*.json")):
        rows = _read_json(path, run.notes)
        if isinstance(rows, list):
            run.plots.setdefault(path.parent.name, {})[path.stem] = [r for r in rows if isinstance(r, dict)]
    summary_path = root / dirs["preferences"] / "summary.json"
    run.paths["preferences_summary"] = str(Path(dirs["preferences"]) / "summary.json")
    summary = _read_json(summary_path, run.notes)
    run.preferences_summary = summary if isinstance(summary, dict) else None
    run.prepare_rejects = _tally_reasons(root / dirs["prepare"] / "rejects.jsonl")
    samples_path = Path(dirs["evaluate"]) / "samples.jsonl"
    run.paths["samples"] = str(samples_path)
    run.samples, run.samples_total = _read_samples(root / samples_path, max_samples, run.notes)
    promote = _read_json(root / "metrics" / "promote.json", run.notes)
    run.promote = promote if isinstance(promote, dict) else None
    return run


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


