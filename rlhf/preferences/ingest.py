"""The ingest driver: annotation exports in, reward-model training data out, nothing lost.

``ingest(paths, out_dir, ...)`` reads every file (``detect.FileReader``), drops exact duplicates, merges
annotators per item (``merge``), derives pairs (``convert``) and Elo scores (``elo``), and writes, all or nothing
(``outputs.OutputSet``: temp files in ``out_dir``, renamed into place together once all are complete; a failure
leaves the previous outputs as they were):

``rankings.jsonl``  one merged item per line:
                    {"item_id", "prompt", "responses", "ranks", "n_annotators", "meta"}
                    (n_annotators = annotations merged; meta: mean_rank, annotators, annotations[...])
``pairs.jsonl``     {"group", "prompt", "chosen", "rejected", "margin"} from the merged rankings
``elo.jsonl``       {"group", "prompt", "response", "elo", "score"} from all accepted annotations
``rejects.jsonl``   {"source", "line", "reason", "record"} (record = raw text, at most 2000 chars)
``summary.json``    ``IngestSummary.to_dict()``
``<extra>.jsonl``   rankings rows chosen by ``extra_outputs`` (the preferences stage's train / held-out split)

A record is one annotation: a JSONL line, a JSON-MIN element, a row of a CSV, Parquet or Arrow input or of a
hub dataset (``line`` = its row number, from 1), or one annotation of a full Label Studio task (a task without
annotations is one record). ``read == accepted + rejected`` always holds.

``prompt`` in rankings, pairs and Elo rows is text, or a list of ``{"role", "content"}`` messages for a
conversational record (``conversation``); responses are always text.

Hostile input is bounded per record, each bound a reject with its reason (docs/preferences.md, "Limits"):
``max_record_bytes`` (a line or array element), ``max_depth`` (nesting), ``max_responses`` (and so at most
K(K-1)/2 pairs per record), finite numbers only, and file references only from ``refs_dir`` (off by default).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from rlhf.config import DataSource, PreferencesConfig
from rlhf.sources import Keys, SourceError, check_source

from .convert import group_by_item, ranking_to_pairs
from .detect import FileReader, normalise_format
from .elo import elo_from_groups
from .inputs import expand_paths
from .merge import Agreement, merge_item, agreement as measure_agreement
from .outputs import OutputSet, TempFile
from .schema import IngestError, Ranking, ReaderConfig, Reject, RejectLimitExceeded

PROGRESS_EVERY = 1000


@dataclass
class IngestSummary:
    """Counts of one ingest. ``read == accepted + rejected``; ``duplicates`` are part of ``rejected``."""

    files: int
    read: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    items: int
    pairs: int
    duplicates: int
    annotators: int
    agreement: Agreement
    reject_share: float
    elo_responses: int = 0
    per_file: list[dict] = field(default_factory=list)
    out_dir: str = ""
    rejects_path: str = ""
    outputs: dict[str, int] = field(default_factory=dict)   # rows written per JSON Lines file

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Tally:
    read: int = 0
    accepted: list[Ranking] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    seen: set = field(default_factory=set)
    per_file: list[dict] = field(default_factory=list)


def _read_all(inputs: list[Path | DataSource], cfg: ReaderConfig, format: str, columns: dict[str, str],
              rejects: TempFile, on_progress: Callable[[int], None] | None) -> _Tally:
    """Read every input (a path, or the dataset: a DataSource with its own columns): accepted rankings in memory,
    rejects streamed to ``rejects``."""
    tally = _Tally()
    for inp in inputs:
        if isinstance(inp, DataSource):
            reader = FileReader(inp.path or ".", cfg, format, seen=tally.seen, columns=inp.columns, source=inp,
                                keys=DATASET_KEYS)
        else:
            reader = FileReader(inp, cfg, format, seen=tally.seen, columns=columns)
        counts = Counter()
        for item in reader:
            tally.read += 1
            counts["read"] += 1
            if isinstance(item, Reject):
                rejects.write(item.to_dict())
                tally.reasons[item.kind] += 1
                counts["rejected"] += 1
            else:
                tally.accepted.append(item)
                counts["accepted"] += 1
            if on_progress is not None and tally.read % PROGRESS_EVERY == 0:
                on_progress(tally.read)
        if counts["read"] == 0:
            raise IngestError(f"{reader.source}: no records")
        tally.per_file.append({"path": reader.source, "format": reader.format, "read": counts["read"],
                               "accepted": counts["accepted"], "rejected": counts["rejected"]})
    return tally


DATASET_KEYS = Keys.of("preferences.dataset")
# The one source of the ingest's defaults: the preferences stage's config (params.yaml's `preferences:` section).
DEFAULTS = PreferencesConfig()


def ingest(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    format: str = DEFAULTS.format,
    max_reject_share: float = DEFAULTS.max_reject_share,
    max_field_chars: int = DEFAULTS.max_field_chars,
    rating_scale: tuple[float, float] = DEFAULTS.rating_scale,
    k_factor: float = DEFAULTS.k_factor,
    initial_rating: float = DEFAULTS.initial_rating,
    elo_rounds: int = DEFAULTS.elo_rounds,
    ranker_key: str | None = DEFAULTS.ranker_key,
    max_responses: int = DEFAULTS.max_responses,
    max_depth: int = DEFAULTS.max_depth,
    max_record_bytes: int = DEFAULTS.max_record_bytes,
    refs_dir: str | None = DEFAULTS.refs_dir,
    columns: dict[str, str] | None = None,
    dataset: DataSource | None = None,
    extra_outputs: Mapping[str, Callable[[dict], bool]] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest preference annotations from ``paths`` into ``out_dir`` (files and schemas: module docstring).

    ``columns`` renames fields of every file of ``paths`` (their -> ours, e.g. ``{"instruction": "prompt"}``);
    ``dataset`` is one more input (a hub dataset, or a split of a saved DatasetDict folder) read after them, renamed
    by its own ``columns``; ``paths`` may be empty when it is set. ``extra_outputs``: more JSON Lines files of
    rankings rows, file name -> which rows go in, written and committed with the other outputs.

    Raises IngestError for a file that cannot be read at all (message ``<file>: <reason>``), and
    RejectLimitExceeded when rejected / read > ``max_reject_share``, after all outputs are written. Any error
    before that leaves the previous outputs as they were.
    """
    fmt = normalise_format(format)
    if elo_rounds < 1:
        raise ValueError(f"elo_rounds must be >= 1, got {elo_rounds}")
    if not 0.0 <= max_reject_share <= 1.0:
        raise ValueError(f"max_reject_share must be within [0, 1], got {max_reject_share}")
    cfg = ReaderConfig(max_field_chars=max_field_chars, rating_scale=tuple(rating_scale), ranker_key=ranker_key,
                       max_responses=max_responses, max_depth=max_depth, max_record_bytes=max_record_bytes,
                       refs_dir=refs_dir or None)
    if cfg.refs_dir and not Path(cfg.refs_dir).is_dir():
        raise IngestError(f"{cfg.refs_dir}: refs_dir is not a folder")
    out = Path(out_dir)
    inputs = _inputs(paths, dataset, out)
    out.mkdir(parents=True, exist_ok=True)
    with OutputSet(out) as outputs:
        tally = _read_all(inputs, cfg, fmt, dict(columns or {}), outputs.open("rejects.jsonl"), on_progress)
        summary = _write_outputs(tally, outputs, len(inputs), k_factor, initial_rating, elo_rounds,
                                 dict(extra_outputs or {}))
        outputs.commit()
    if on_progress is not None and tally.read % PROGRESS_EVERY:
        on_progress(tally.read)
    if summary.reject_share > max_reject_share:
        raise RejectLimitExceeded(
            f"{summary.rejects_path}: {summary.rejected} of {summary.read} records rejected "
            f"(share {summary.reject_share:.3f} > max_reject_share {max_reject_share}); see the rejects file"
        )
    return summary


def _inputs(paths: Sequence[str | Path], dataset: DataSource | None, out: Path) -> list[Path | DataSource]:
    """The files of ``paths`` (folders expanded, ``out`` left out), then the dataset, checked before any reading."""
    has_dataset = dataset is not None and dataset.is_set
    inputs: list[Path | DataSource] = expand_paths(paths, exclude=out) if paths or not has_dataset else []
    if has_dataset:
        try:                                         # an offline hub or a wrong folder fails before any reading
            check_source(dataset, DATASET_KEYS)
        except SourceError as e:
            raise IngestError(str(e)) from None
        inputs.append(dataset)
    return inputs


def _write_outputs(tally: _Tally, outputs: OutputSet, n_files: int, k_factor: float, initial: float,
                   elo_rounds: int, extra: dict[str, Callable[[dict], bool]]) -> IngestSummary:
    """Merge, convert, write the data files and summary.json (as temp files of ``outputs``); returns the summary."""
    accepted, n_rejected = len(tally.accepted), outputs.files["rejects.jsonl"].count
    if tally.read != accepted + n_rejected:  # the invariant of DESIGN.md #7, checked before anything is written
        raise AssertionError(f"accounting broken: read {tally.read} != accepted {accepted} + rejected {n_rejected}")
    groups = group_by_item(tally.accepted)
    merged = [merge_item(key, members) for key, members in groups.items()]
    n_pairs = outputs.jsonl("pairs.jsonl", (p.to_dict() for r in merged for p in ranking_to_pairs(r)))
    outputs.jsonl("rankings.jsonl", (_ranking_row(r) for r in merged))
    for name, keep in extra.items():
        outputs.jsonl(name, (row for row in map(_ranking_row, merged) if keep(row)))
    scores = elo_from_groups(groups, k_factor=k_factor, initial=initial, n_rounds=elo_rounds)
    outputs.jsonl("elo.jsonl", (s.to_dict() for s in scores))
    out = outputs.out
    summary = IngestSummary(
        files=n_files, read=tally.read, accepted=accepted, rejected=n_rejected,
        rejected_by_reason=dict(sorted(tally.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        items=len(merged), pairs=n_pairs, duplicates=tally.reasons.get("duplicate", 0),
        annotators=len({r.annotator for r in tally.accepted if r.annotator is not None}),
        agreement=measure_agreement(groups), reject_share=n_rejected / tally.read if tally.read else 0.0,
        elo_responses=len(scores), per_file=tally.per_file, out_dir=str(out),
        rejects_path=str(out / "rejects.jsonl"), outputs={name: f.count for name, f in outputs.files.items()},
    )
    outputs.json("summary.json", summary.to_dict())
    return summary


def _ranking_row(r: Ranking) -> dict:
    return {"item_id": r.item_id, "prompt": r.prompt, "responses": list(r.responses), "ranks": list(r.ranks),
            "n_annotators": len(r.meta["annotations"]), "meta": r.meta}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(rows: list[tuple[str, ...]]) -> Iterator[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        yield "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))


def format_summary(summary: IngestSummary | dict) -> str:
    """A small aligned table of the summary (an IngestSummary or the summary.json dict), for printing."""
    s = summary.to_dict() if isinstance(summary, IngestSummary) else summary
    a = s["agreement"]
    rows = [("records read", _fmt(s["read"])), ("accepted", _fmt(s["accepted"])),
            ("rejected", f"{s['rejected']} ({s['reject_share']:.1%})")]
    rows += [(f"  {reason}", _fmt(n)) for reason, n in s["rejected_by_reason"].items()]
    rows += [("duplicates", _fmt(s["duplicates"])), ("items", _fmt(s["items"])), ("pairs", _fmt(s["pairs"])),
             ("elo responses", _fmt(s["elo_responses"])), ("annotators", _fmt(s["annotators"])),
             ("agreement (pairwise)", _fmt(a["pairwise"])), ("agreement (kendall tau)", _fmt(a["kendall_tau"])),
             ("items with overlap", _fmt(a["items"]))]
    lines = list(_table(rows))
    if s["per_file"]:
        files = [("file", "format", "read", "accepted", "rejected")]
        files += [(f["path"], str(f["format"]), str(f["read"]), str(f["accepted"]), str(f["rejected"]))
                  for f in s["per_file"]]
        lines += [""] + list(_table(files))
    return "\n".join(lines)


_METRIC_NAME_BAD = re.compile(r"[^\w./\- ]+")


def summary_metrics(summary: IngestSummary | dict) -> dict[str, float]:
    """The summary's numeric fields, agreement (``agreement_<name>``) and rejects by reason (``rejected/<reason>``),
    as valid MLflow metric names (letters, digits, _ - . / and space). The one conversion: the preferences stage
    and `rlhf ingest --log-mlflow` both log these."""
    s = summary.to_dict() if isinstance(summary, IngestSummary) else summary
    metrics = {k: float(v) for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in (s.get("agreement") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"agreement_{k}"] = float(v)
    for reason, n in (s.get("rejected_by_reason") or {}).items():
        name = _METRIC_NAME_BAD.sub("_", reason.replace("'", "").replace('"', "")).strip("_ ")[:60] or "other"
        metrics[f"rejected/{name}"] = metrics.get(f"rejected/{name}", 0.0) + float(n)
    return metrics
