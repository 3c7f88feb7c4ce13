"""Dataset lineage in MLflow: every dataset a stage reads or writes is logged as a dataset input of its run
(``mlflow.log_input``), with its hash and counts, so a run says exactly which bytes it saw and made.

* Outputs (context = the stage name): the stage's JSONL/JSON files, and the ``*.jsonl`` files directly inside an
  output folder (the preferences stage's rankings, pairs, Elo scores, rejects, train/val splits). Model folders are
  not datasets (the registry versions them).
* An output folder holding an ingest ``summary.json`` (``rlhf.preferences.ingest``) adds its counts (read,
  accepted, rejected, reject_share, items, pairs) as tags of those outputs, and logs the annotation exports it
  read as inputs (context ``input``) with their per-file counts and detected format.

Tags of every dataset: ``md5`` (the full hex digest: the hash DVC records for the file), ``bytes``, ``rows``
(JSON Lines: lines; a JSON array: elements), ``role``. The dataset digest is the md5's first 16 characters.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

if TYPE_CHECKING:  # rlhf.stages.common imports torch; the ingest CLI logs lineage without it
    from rlhf.stages.common import StageResult

DATASET_SUFFIXES = (".jsonl", ".json")
SUMMARY_COUNTS = ("read", "accepted", "rejected", "reject_share", "items", "pairs", "duplicates", "annotators")


def file_md5(path: Path) -> str:
    """md5 of a file's bytes (the hash DVC records for a file)."""
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_path(path: str | Path) -> str:
    """md5 of a file; for a folder, md5 over its sorted "relpath md5" lines (suffix .dir, like DVC's folder hashes,
    but not byte-equal to them: used only where DVC cannot hash, and tagged ``lineage.hash_method=md5``)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()} {file_md5(p)}\n" for p in files)
    return hashlib.md5(lines.encode()).hexdigest() + ".dir"


def data_dvc_md5(root: str | Path = ".") -> str:
    """The md5 data.dvc records for the raw data ("" without data.dvc)."""
    import yaml
    path = Path(root) / "data.dvc"
    if not path.exists():
        return ""
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", ""))


def dep_name(path: str | Path, base: str | Path) -> str:
    """A dependency as a tag-safe name: relative to ``base``, the git work tree (a stage of a nested project such as
    examples/chat lists ../../rlhf/...; MLflow refuses keys with '..'); its file name when outside it."""
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def dvc_hashes(stage: str, model_dir: str | Path, root: str | Path = ".") -> dict[str, str]:
    """DVC's own hashes of the stage's file dependencies and of the model folder, as dvc.lock will record them.
    Falls back to plain md5 of the model folder when there is no dvc.yaml stage of that name."""
    model_dir = Path(model_dir)
    if Path(root, "dvc.yaml").exists():
        os.environ.setdefault("DVC_SITE_CACHE_DIR", str(Path(root).resolve() / ".dvc" / "tmp" / "site_cache"))
        try:
            from dvc.dependency.param import ParamsDependency
            from dvc.repo import Repo
            with Repo(str(root)) as repo:
                (st,) = repo.stage.collect(stage)
                top = repo.scm.root_dir                  # the git work tree: one name space for nested projects
                tags = {f"lineage.dep.{dep_name(d.fs_path, top)}": str(d.get_hash().value) for d in st.deps
                        if not isinstance(d, ParamsDependency) and d.exists}
                for o in st.outs:
                    if Path(o.fs_path).resolve() == model_dir.resolve():
                        tags["lineage.model_md5"] = str(o.get_hash().value)
            if "lineage.model_md5" in tags:
                return {**tags, "lineage.hash_method": "dvc"}
        except Exception as e:  # lineage must never fail a training run; the tag says what happened
            return {"lineage.model_md5": md5_path(model_dir), "lineage.hash_method": "md5",
                    "lineage.dvc_error": one_line(e, 200)}
    return {"lineage.model_md5": md5_path(model_dir), "lineage.hash_method": "md5"}


def one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def count_rows(path: Path) -> int | None:
    """Records in a data file: lines of JSON Lines, elements of a top-level JSON array; None for anything else."""
    from rlhf.preferences.jsonstream import iter_json_array, sniff_container
    try:
        container = sniff_container(path)
        if container == "lines" and path.suffix == ".json":           # one JSON document (an object): no rows
            return None
        if container == "lines":
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        return sum(1 for _ in iter_json_array(path))
    except (OSError, ValueError):
        return None


def log_dataset(path: str | Path, name: str, context: str, tags: dict | None = None) -> dict:
    """Log one file as an MLflow dataset input of the active run; returns the tags logged."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(path)
    md5 = file_md5(path)
    rows = count_rows(path)
    all_tags = {"md5": md5, "bytes": str(path.stat().st_size), **({"rows": str(rows)} if rows is not None else {})}
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    with warnings.catch_warnings():  # MLflow registers its local source class twice and warns about the tie
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(path.resolve().as_uri())
    ds = MetaDataset(source=source, name=name, digest=md5[:16])
    mlflow.log_input(ds, context=context, tags=all_tags)
    return all_tags


def _dataset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix in DATASET_SUFFIXES else []
    if path.is_dir() and not (path / "config.json").exists():      # a model folder is not a dataset
        return sorted(f for f in path.iterdir() if f.is_file() and f.suffix == ".jsonl" and not f.name.startswith("."))
    return []


def read_summary(folder: Path) -> dict | None:
    """The ingest summary.json of an output folder, or None."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "per_file" in summary else None


def log_ingest_inputs(prefix: str, summary: dict) -> list[str]:
    """The files an ingest read (its summary's ``per_file``), as datasets with context ``input``."""
    names = []
    for f in summary.get("per_file") or []:
        path = Path(f["path"])
        if path.is_file():
            name = f"{prefix}/input/{path.name}"
            log_dataset(path, name, "input", {"role": "input", "format": f.get("format"), "read": f.get("read"),
                                              "accepted": f.get("accepted"), "rejected": f.get("rejected")})
            names.append(name)
    return names


def log_outputs(prefix: str, outputs: dict[str, str], context: str) -> list[str]:
    """Every dataset file of ``outputs`` ({role: file or folder}) once, with ingest counts where a folder has them."""
    names, seen = [], set()
    for role, p in sorted(outputs.items()):
        folder = Path(p) if Path(p).is_dir() else Path(p).parent
        summary = read_summary(folder)
        counts = {f"ingest.{k}": summary.get(k) for k in SUMMARY_COUNTS} if summary else {}
        for f in _dataset_files(Path(p)):
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            name = f"{prefix}/{f.stem}" if Path(p).is_dir() else f"{prefix}/{role}"
            log_dataset(f, name, context, {"role": f.stem if Path(p).is_dir() else role, **counts})
            names.append(name)
    return names


def log_lineage(stage: str, result: StageResult) -> None:
    """Log the stage's dataset outputs (and, for an ingest, the exports it read) as MLflow dataset inputs."""
    log_outputs(stage, result.outputs, context=stage)
    for p in result.outputs.values():
        summary = read_summary(Path(p)) if Path(p).is_dir() else None
        if summary is not None:
            log_ingest_inputs(stage, summary)
            break
