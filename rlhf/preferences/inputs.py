"""Which inputs an ingest reads: files as given, and folders expanded into their input files and saved datasets."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlhf.sources import SUFFIXES as INPUT_SUFFIXES
from rlhf.sources import is_saved_dataset

from .schema import IngestError


def expand_paths(paths: Sequence[str | Path], exclude: Path | None = None) -> list[Path]:
    """Files as given; a saved dataset folder as given; another folder stands for its input files (suffixes in
    ``INPUT_SUFFIXES``) and saved dataset folders, recursively, sorted, leaving out hidden files, the files inside a
    saved dataset, and anything under ``exclude`` (the output folder)."""
    out: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None

    def kept(f: Path) -> bool:
        return not (skip and f.resolve().is_relative_to(skip))

    for p in map(Path, paths):
        if p.is_dir() and not is_saved_dataset(p):
            found = sorted(p.rglob("*"))
            saved: list[Path] = []
            for d in (f for f in found if is_saved_dataset(f) and kept(f)):
                if not any(d.is_relative_to(s) for s in saved):      # a DatasetDict's split folders are its own
                    saved.append(d)
            files = [f for f in found if f.is_file() and f.suffix in INPUT_SUFFIXES and not f.name.startswith(".")
                     and kept(f) and not any(f.is_relative_to(s) for s in saved)]
            out.extend(sorted(files + saved))
        else:
            out.append(p)
    if not out:
        raise IngestError(f"{', '.join(map(str, paths)) or '<no paths>'}: no input files")
    return out
