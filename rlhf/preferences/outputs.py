"""The ingest's output files, all or nothing: each is written to a temp file in the output folder, and only when every
one is complete are they renamed into place, one after another with nothing computed between (``OutputSet``).

A failure of any kind before that (an unreadable input, a full disk, a MemoryError, Ctrl-C) removes the temp files
and leaves the previous outputs exactly as they were: never new pairs next to stale rankings. Every file is standard
JSON: a NaN or an infinity is a ValueError, never written (``allow_nan=False``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterable

from rlhf.jsonl import json_line
from rlhf.tempdirs import fsync_dir

FILE_MODE = 0o644  # mkstemp creates 0600; outputs are ordinary data files


class TempFile:
    """One output being written under a temp name next to ``path``; ``finish`` makes it durable, ``commit``
    renames it into place, ``discard`` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(self.tmp, FILE_MODE)
        # backslashreplace keeps a lone surrogate inside a JSON string as a valid \udXXX escape
        self.fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n")
        self.count = 0

    def write(self, obj: dict) -> None:
        """One JSON line."""
        self.fh.write(json_line(obj, allow_nan=False) + "\n")
        self.count += 1

    def finish(self) -> None:
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def commit(self) -> None:
        self.finish()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


class OutputSet:
    """The output files of one ingest in folder ``out``. Use as a context manager: leaving it by an exception
    discards every temp file; ``commit()`` (at the end, once everything is written) renames them all into place."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, TempFile] = {}

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.discard()

    def open(self, name: str) -> TempFile:
        """A new JSON Lines output ``name`` (written to a temp file until ``commit``)."""
        if name in self.files:
            raise ValueError(f"output {name} is written twice")
        self.files[name] = TempFile(self.out / name)
        return self.files[name]

    def jsonl(self, name: str, rows: Iterable[dict]) -> int:
        """Write ``rows`` as the JSON Lines output ``name``; returns the number written."""
        f = self.open(name)
        for row in rows:
            f.write(row)
        return f.count

    def json(self, name: str, obj: dict) -> None:
        """Write one pretty-printed JSON document as output ``name``."""
        f = self.open(name)
        json.dump(obj, f.fh, indent=2, ensure_ascii=False, allow_nan=False)
        f.fh.write("\n")

    def commit(self) -> None:
        """Make every file durable, then rename them all into place."""
        for f in self.files.values():
            f.finish()
        for f in self.files.values():
            f.commit()
        fsync_dir(self.out)
