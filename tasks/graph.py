"""The stage graph: the stage list, derived once from dvc.yaml (DESIGN invariant 1: one DAG, defined once; every
other module that needs the stages imports them from here, and a test fails if any other module lists them), and
what DVC says about it: which stages are stale and why, and recording a stage that ran in dvc.lock."""
from __future__ import annotations

import os
from pathlib import Path


class GraphError(ValueError):
    """dvc.yaml is missing or has no stages."""


def declared_stages(root: str | Path = ".") -> list[str]:
    """Names of the stages in dvc.yaml, in the order they are declared there (cheap: no DVC import)."""
    import yaml

    path = Path(root, "dvc.yaml")
    if not path.is_file():
        raise GraphError(f"{path}: not found (run from the project root, where dvc.yaml is)")
    stages = list((yaml.safe_load(path.read_text()) or {}).get("stages") or {})
    if not stages:
        raise GraphError(f"{path}: no stages")
    return stages


def stage_order(root: str | Path = ".") -> list[str]:
    """Names of the dvc.yaml stages in dependency order, from DVC's own graph (ties broken by declaration order)."""
    import networkx as nx

    declared = declared_stages(root)
    with _repo(root) as repo:
        graph = repo.index.graph                      # edges point from a stage to the stages it depends on
        here = (Path(root).resolve() / "dvc.yaml")
        stages = {s.name: s for s in graph.nodes if getattr(s, "name", None) in declared
                  and Path(s.dvcfile.path).resolve() == here}      # a repo may hold other dvc.yaml (examples/)
        sub = graph.subgraph(stages.values()).reverse(copy=True)
        order = nx.lexicographical_topological_sort(sub, key=lambda s: declared.index(s.name))
        return [s.name for s in order]


def _repo(root: str | Path = "."):
    from dvc.repo import Repo
    return Repo(str(root))


def stale_reasons(stage: str, root: str | Path = ".") -> list[str]:
    """Why ``stage`` would run under `dvc repro` (empty when it is up to date)."""
    return all_stale_reasons([stage], root)[stage]


def all_stale_reasons(stages: list[str], root: str | Path = ".") -> dict[str, list[str]]:
    """``stale_reasons`` of every stage from ONE status call (one repository open, one pass over the workspace),
    valid until a stage runs: then the stages after it must be asked again (``commit_and_status``)."""
    with _repo(root) as repo:
        return _status_map(repo, stages)


def _status_map(repo, stages: list[str]) -> dict[str, list[str]]:
    if not stages:
        return {}
    status = repo.status(targets=list(stages))
    return {stage: _reasons([e for key, v in status.items() if key == stage or key.endswith(f":{stage}") for e in v])
            for stage in stages}


def commit_and_status(stage: str, remaining: list[str], root: str | Path = ".") -> dict[str, list[str]]:
    """Record ``stage`` in dvc.lock and cache its outputs (as `dvc repro` would), then the stale reasons of the
    ``remaining`` stages from a new repository session (a session caches its index; the commit changed it)."""
    with _repo(root) as repo:
        repo.commit(stage, force=True)
    return all_stale_reasons(remaining, root)


def _reasons(entries: list) -> list[str]:
    """DVC status entries of one stage -> readable reasons ("changed deps x: modified")."""
    reasons = []
    for entry in entries:
        if isinstance(entry, dict):
            for kind, changes in entry.items():
                items = changes.items() if isinstance(changes, dict) else [(changes, "")]
                reasons.extend(f"{kind} {k}: {v}".strip(": ") for k, v in items)
        else:
            reasons.append(str(entry))
    return reasons


def configure(root: str | Path = ".") -> None:
    """Keep DVC's site cache inside the project (STACK-NOTES trap 7) and analytics off."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(Path(root).resolve() / ".dvc" / "tmp" / "site_cache"))
