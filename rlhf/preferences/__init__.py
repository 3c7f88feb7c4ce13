"""Preference-collection ingest: human rankings from annotation exports -> reward-model training data.

Public API::

    ingest(paths, out_dir, *, format="auto", max_reject_share=0.2, ...) -> IngestSummary
    format_summary(summary) -> str
    FileReader(path, cfg, format="auto")            # iterate one file as Ranking | Reject
    ranking_to_pairs(ranking) -> list[Pair]
    elo_scores(rankings, k_factor=32, initial=1000, n_rounds=1) -> list[EloScore]
    merge_annotations(rankings) -> (list[Ranking], Agreement)
    iter_json_array(path_or_file) -> Iterator[RawRecord]   # streaming top-level JSON array

Pure stdlib: no prefect, mlflow or dvc here (DESIGN.md, layer rlhf/).
"""
from .convert import Pair, group_by_item, item_key, ranking_to_pairs
from .detect import FORMATS, FileReader, classify
from .elo import EloScore, elo_scores
from .ingest import IngestSummary, format_summary, ingest, summary_metrics
from .jsonstream import RawRecord, iter_json_array, iter_jsonl
from .merge import Agreement, merge_annotations
from .schema import IngestError, Ranking, ReaderConfig, Reject, RejectLimitExceeded

__all__ = [
    "Agreement", "EloScore", "FORMATS", "FileReader", "IngestError", "IngestSummary", "Pair", "Ranking",
    "RawRecord", "ReaderConfig", "Reject", "RejectLimitExceeded", "classify", "elo_scores", "format_summary",
    "group_by_item", "ingest", "item_key", "iter_json_array", "iter_jsonl", "merge_annotations",
    "ranking_to_pairs", "summary_metrics",
]
