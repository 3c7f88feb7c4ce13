"""Dataset lineage in MLflow: every dataset a stage writes is logged as an input of its run, with its hash."""
from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow

from rlhf.stages.common import StageResult


def file_digest(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_lineage(stage: str, result: StageResult) -> None:
    """Log the stage's JSONL/JSON outputs (not model folders) as MLflow dataset inputs of the active run."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for role, p in sorted(result.outputs.items()):
        path = Path(p)
        if not path.is_file() or path.suffix not in (".jsonl", ".json"):
            continue
        rows = sum(1 for _ in path.open(encoding="utf-8")) if path.suffix == ".jsonl" else None
        ds = MetaDataset(source=resolve_dataset_source(path.resolve().as_uri()), name=f"{stage}/{role}",
                         digest=file_digest(path)[:16])
        mlflow.log_input(ds, context=stage, tags={"rows": str(rows)} if rows is not None else None)
