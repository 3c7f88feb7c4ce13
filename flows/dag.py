"""The stage graph, read from dvc.yaml through DVC itself (DESIGN invariant 1: one DAG, defined once)."""
from __future__ import annotations

import os
from pathlib import Path


def _repo(root: str | Path = "."):
    from dvc.repo import Repo
    return Repo(str(root))


def stage_order(root: str | Path = ".") -> list[str]:
    """Names of the dvc.yaml stages in dependency order (ties broken by their order in dvc.yaml)."""
    import networkx as nx
    import yaml

    declared = list((yaml.safe_load(Path(root, "dvc.yaml").read_text()) or {}).get("stages", {}))
    with _repo(root) as repo:
        graph = repo.index.graph                      # edges point from a stage to the stages it depends on
        stages = {s.name: s for s in graph.nodes if getattr(s, "name", None) in declared}
        sub = graph.subgraph(stages.values()).reverse(copy=True)
        order = nx.lexicographical_topological_sort(sub, key=lambda s: declared.index(s.name))
        return [s.name for s in order]


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
    """Record ``stage`` in dvc.lock and cache its outputs (as `dvc repro` would), then the stale reasons of the ``remaining`` stages, in one repository session."""
    with _repo(root) as repo:
        repo.commit(stage, force=True)
        if hasattr(repo, "_reset"):              # drop the index cached before the commit
            repo._reset()
        return _status_map(repo, remaining)


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
