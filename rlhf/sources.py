"""Stage inputs through Hugging Face ``datasets``: one ``DataSource`` (rlhf/config.py) in, records out.

A source is one of (DESIGN invariant 11, "inputs through datasets"):

* a JSON Lines file (``.jsonl``/``.ndjson``, or ``.json`` not starting with ``[``): read line by line here, NOT by
  ``datasets``, which aborts the whole file on one bad line; a broken line becomes one error record with its line;
* a ``.json`` file holding one array: streamed element by element (rlhf/preferences/jsonstream.py), same idea;
* a ``.csv``, ``.parquet``/``.pq`` or ``.arrow`` file, or a folder written by ``Dataset.save_to_disk`` (a
  ``DatasetDict`` folder: the source's ``split``): read with ``datasets``; ``line`` is the row number (1 = first row);
* a hub dataset (``name``, ``config``, ``split``): only when the hub is reachable. With ``HF_HUB_OFFLINE`` or
  ``HF_DATASETS_OFFLINE`` set, or no connection, it fails at once, naming the key and what to do instead.

Every record comes out as ``Record(value, line, text, error)``: ``value`` a dict of plain Python data (lists and
dicts, never Arrow or numpy objects; chat ``messages`` are lists of dicts), ``text`` the raw record for a rejects
file, ``error`` the reason when the record could not be read at all. Three normalisations make a Parquet, CSV, Arrow
or JSONL copy of the same records give the same values:

* Arrow has no "absent": a null cell, and a null field of a struct (Arrow fills every message with every key any
  message has), is dropped, as if the key were missing from a JSON line;
* CSV has no types: every cell is read as text (an empty cell is absent), and only in the columns that can hold a
  list (``LIST_COLUMNS``) or a conversation (``CONVERSATION_COLUMNS``), named as ours after renaming, a cell whose
  text is a JSON array is parsed (a conversation column only when the array holds objects with a ``role``);
* ``columns`` renames their column names to ours before anything else looks at the record. A mapped column that the
  source does not have is an error naming the key and the columns it has (checked before reading for tabular
  sources; after reading for JSON, whose records have no fixed columns).

Errors are ``SourceError``: one line, naming the params key and the path or dataset. Imports of ``datasets`` are
deferred, so importing this module is cheap (the ingest CLI). Core module: no prefect, mlflow or dvc.
"""
from __future__ import annotations

import csv
import datetime
import decimal
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlhf.config import DataSource
from rlhf.hub import hub_reachable, offline_var
from rlhf.jsonl import RawRecord as Record
from rlhf.jsonl import iter_lines, nested_reason, too_deep, value_too_deep

LINE_SUFFIXES = (".jsonl", ".ndjson")
TABULAR_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
SUFFIXES = (*LINE_SUFFIXES, ".json", *TABULAR_SUFFIXES)
LIST_COLUMNS = ("messages", "completions", "responses", "ranking", "ranks", "ratings")
CONVERSATION_COLUMNS = ("prompt", "completion", "chosen", "rejected")


class SourceError(ValueError):
    """A source that cannot be read at all; one line naming the params key and the path or dataset. (Not a
    rlhf.data.DataError: that module imports torch, and the ingest CLI imports this one.)"""


@dataclass(frozen=True)
class Keys:
    """The params keys that errors name: ``path``, ``name``, ``split``, ``columns`` of one source."""
    path: str
    name: str
    split: str
    columns: str

    @classmethod
    def of(cls, key: str) -> "Keys":
        return cls(f"{key}.path", f"{key}.name", f"{key}.split", f"{key}.columns")


def describe(source: DataSource) -> str:
    """Where records come from, as rejects files and messages name it (a path, or ``hub:<name>[:<config>][split]``)."""
    if source.name:
        return f"hub:{source.name}{':' + source.config if source.config else ''}[{source.split}]"
    path = Path(source.path)
    return f"{path}[{source.split}]" if (path / "dataset_dict.json").is_file() else str(path)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``: one input."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def check_source(source: DataSource, keys: Keys) -> None:
    """The checks that need no reading, in milliseconds: the path exists and is a known kind, or the hub is reachable.
    Stages call this for every input before reading any, so a wrong key fails before any work."""
    if source.name:
        _check_hub(source, keys)
        return
    if not source.path:
        raise SourceError(f"{keys.path}: no path and no name given")
    path = Path(source.path)
    if not path.exists():
        raise SourceError(f"{keys.path}: {path}: no such file or folder")
    if path.is_dir():
        if not is_saved_dataset(path):
            raise SourceError(f"{keys.path}: {path} is a folder but not a dataset written by save_to_disk "
                              f"(no state.json or dataset_dict.json)")
    elif path.suffix.lower() not in SUFFIXES:
        raise SourceError(f"{keys.path}: {path}: unknown file type {path.suffix!r} (use {', '.join(SUFFIXES)}, "
                          f"or a save_to_disk folder)")


def iter_records(source: DataSource, keys: Keys, columns: dict[str, str] | None = None,
                 max_depth: int | None = None) -> Iterator[Record]:
    """Every record of ``source`` (module docstring), renamed by ``columns`` (default: ``source.columns``).
    ``max_depth``: a row of a table nested deeper (a CSV cell counted before it is parsed) is an error record
    "nested deeper than N levels"; JSON files are bounded by their reader (rlhf/preferences/jsonstream.py)."""
    check_source(source, keys)
    columns = dict(source.columns if columns is None else columns)
    path = Path(source.path)
    if not source.name and path.is_file() and path.suffix.lower() not in TABULAR_SUFFIXES:
        yield from renamed(_json_records(path), columns, keys.columns, str(path))
        return
    ds = _hub_dataset(source, keys) if source.name else _local_dataset(path, source.split, keys)
    is_csv = path.suffix.lower() == ".csv"
    check_columns(columns, list(ds.column_names), keys.columns, describe(source))
    for record in renamed(_rows(ds), columns, keys.columns, describe(source), fixed=True):
        yield _checked_row(record, is_csv, max_depth) if record.error is None else record


def _checked_row(record: Record, is_csv: bool, max_depth: int | None) -> Record:
    """A row with its CSV cells parsed, or an error record when it nests deeper than ``max_depth`` (None: no bound;
    a row is level 1, so a cell's array is level 2)."""
    if is_csv and max_depth is not None and isinstance(record.value, dict) and any(
            _json_cell(col, cell) and too_deep(cell, max_depth - 1) for col, cell in record.value.items()):
        return replace(record, value=None, error=nested_reason(max_depth))
    value = parse_json_cells(record.value) if is_csv else record.value
    if max_depth is not None and value_too_deep(value, max_depth):
        return replace(record, value=None, error=nested_reason(max_depth))
    return replace(record, value=value)


def load_records(source: DataSource, key: str) -> list[dict]:
    """All records of ``source`` as dicts, for callers without a rejects file: a bad record is a SourceError."""
    keys, out = Keys.of(key), []
    for record in iter_records(source, keys):
        if record.error is not None or not isinstance(record.value, dict):
            raise SourceError(f"{describe(source)}:{record.line}: {record.error or 'expected a JSON object'}")
        out.append(record.value)
    return out


# ---- renaming and CSV cells ------------------------------------------------------------------------------------

def check_columns(columns: dict[str, str], have: list[str], key: str, where: str) -> None:
    """Before reading a source with fixed columns: every mapped column exists and no rename replaces a column."""
    for theirs, ours in columns.items():
        if theirs not in have:
            raise SourceError(f"{key}: column {theirs!r} is not in {where} (its columns: {', '.join(have)})")
        if ours in have and ours not in columns:
            raise SourceError(f"{key}: renaming {theirs!r} to {ours!r} would replace the column {ours!r} of {where}")


def renamed(records: Iterable[Record], columns: dict[str, str], key: str, where: str,
            fixed: bool = False) -> Iterator[Record]:
    """Records with ``columns`` renamed (their -> ours); a record holding both names is an error record. Without
    ``fixed`` columns (JSON; ``check_columns`` did it otherwise), a mapped column that no record has is an error
    after the last record."""
    if not columns:
        yield from records
        return
    seen: set[str] = set()
    for record in records:
        if record.error is None and isinstance(record.value, dict):
            seen.update(record.value)
            clash = [ours for theirs, ours in columns.items() if theirs in record.value and ours in record.value
                     and ours not in columns]
            if clash:
                yield replace(record, value=None, error=f"column clash: {clash[0]!r} is both in the record and the "
                                                        f"new name of a mapped column")
                continue
            record = replace(record, value={columns.get(k, k): v for k, v in record.value.items()})
        yield record
    missing = [c for c in columns if c not in seen]
    if missing and seen and not fixed:
        raise SourceError(f"{key}: column {missing[0]!r} is in no record of {where} (its records have: "
                          f"{', '.join(sorted(seen)[:20])})")


def parse_json_cells(value: Any) -> Any:
    """A CSV row with the JSON arrays of its list and conversation columns parsed (module docstring)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for col, cell in value.items():
        if not _json_cell(col, cell):
            continue
        try:
            parsed = json.loads(cell)
        except (ValueError, RecursionError):
            continue                                       # stays text: the stage's validation names the problem
        if col in LIST_COLUMNS or (isinstance(parsed, list) and parsed
                                   and all(isinstance(m, dict) and "role" in m for m in parsed)):
            out[col] = parsed
    return out


def _json_cell(col: str, cell: Any) -> bool:
    """A CSV cell that ``parse_json_cells`` parses: text starting with '[' in a list or conversation column."""
    return (col in LIST_COLUMNS or col in CONVERSATION_COLUMNS) and isinstance(cell, str) \
        and cell.lstrip().startswith("[")


# ---- JSON files ---------------------------------------------------------------------------------------------------

def _json_records(path: Path) -> Iterator[Record]:
    """A JSON Lines file line by line (a broken line is one error record), or a ``.json`` array element by element."""
    if path.suffix.lower() == ".json":
        from rlhf.preferences.jsonstream import iter_json_array, sniff_container
        try:
            container = sniff_container(path)
        except ValueError:
            return                                         # empty file: no records
        if container == "array":
            for raw in iter_json_array(path):
                yield raw
            return
    for i, line, obj, error in iter_lines(path):
        yield Record(obj, i, line, error)


# ---- datasets: local files and folders, the hub -------------------------------------------------------------------

@contextmanager
def _quiet():
    """``datasets`` without its progress bars and info logs (stage logs stay readable); restored afterwards."""
    import datasets
    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _local_dataset(path: Path, split: str, keys: Keys):
    """A Dataset from a local CSV/Parquet/Arrow file or save_to_disk folder. The builders' cache goes to a temporary
    folder that is removed (the table stays in memory): nothing stale, nothing left in ~/.cache."""
    with _quiet() as datasets, tempfile.TemporaryDirectory(prefix="rlhf-datasets-") as cache:
        try:
            if path.is_dir():
                return _split_of(datasets.load_from_disk(str(path)), split, keys, str(path))   # memory-mapped
            kind = TABULAR_SUFFIXES[path.suffix.lower()]
            if kind == "arrow":
                return datasets.Dataset.from_file(str(path))                                  # memory-mapped
            if kind == "parquet":
                return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache,
                                             keep_in_memory=True)
            features = datasets.Features({c: datasets.Value("string") for c in _csv_header(path, keys)})
            return datasets.load_dataset("csv", data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True, features=features, keep_default_na=False, na_values=[""])
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"{keys.path}: {path}: cannot read it: {_first_line(e)}") from None


def _csv_header(path: Path, keys: Keys) -> list[str]:
    """The CSV's column names: every column is then read as text (CSV has no types; module docstring)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise SourceError(f"{keys.path}: {path}: empty CSV file (no header row)")
    return header


def _split_of(ds, split: str, keys: Keys, where: str):
    """A Dataset as it is, or the ``split`` of a DatasetDict (an error listing its splits when it has no such one)."""
    if not hasattr(ds, "keys"):
        return ds
    if split not in ds:
        raise SourceError(f"{keys.split}: no split {split!r} in {where} (its splits: {', '.join(ds.keys())})")
    return ds[split]


def _hub_advice(keys: Keys, offline: bool = False) -> str:
    allow = ", or allow the hub with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 (the rlhf CLI sets both to 1)"
    return (f"download it on a machine with access (datasets.load_dataset(...).save_to_disk(DIR)) and point "
            f"{keys.path} at the saved folder{allow if offline else ''}")


def _check_hub(source: DataSource, keys: Keys) -> None:
    var = offline_var()
    if var:
        raise SourceError(f"{keys.name}: dataset {source.name!r} needs the Hugging Face hub, which is offline "
                          f"({var}={os.environ[var]}); {_hub_advice(keys, offline=True)}")
    if not hub_reachable():
        raise SourceError(f"{keys.name}: dataset {source.name!r} needs the Hugging Face hub, which cannot be "
                          f"reached (no connection); {_hub_advice(keys)}")


def _hub_dataset(source: DataSource, keys: Keys):
    """``load_dataset(name, config, split=split)``; a failure is one line (a network failure says the hub is
    unreachable)."""
    with _quiet() as datasets:
        try:
            return datasets.load_dataset(source.name, source.config or None, split=source.split)
        except Exception as e:
            chain, cause = [], e
            while cause is not None:
                chain.append(type(cause).__name__)
                cause = cause.__cause__ or cause.__context__
            if any(w in n for n in chain for w in ("Connection", "Timeout", "Offline")):
                raise SourceError(f"{keys.name}: dataset {source.name!r} needs the Hugging Face hub, which cannot "
                                  f"be reached ({_first_line(e)}); {_hub_advice(keys)}") from None
            raise SourceError(f"{keys.name}: dataset {source.name!r} (config {source.config or 'default'}, split "
                              f"{source.split!r}): {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# ---- rows as plain data -------------------------------------------------------------------------------------------

def _rows(ds) -> Iterator[Record]:
    """The rows of a Dataset as Records of plain Python data (row numbers from 1; nulls dropped)."""
    for i, row in enumerate(ds.with_format(None), 1):
        text = json.dumps(row, ensure_ascii=False, default=str)
        try:
            yield Record(_plain(row, ""), i, text)
        except TypeError as e:
            yield Record(None, i, text, str(e))


def _plain(value: Any, where: str) -> Any:
    """JSON data from a row: nulls in mappings dropped (Arrow's "absent"), dates as ISO text, decimals as floats;
    anything else (bytes, images) is a TypeError naming the column."""
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}" if where else k) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"unsupported value in column '{where}': {type(value).__name__} is not JSON data")
