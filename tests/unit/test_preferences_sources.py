"""Preference data through rlhf/sources.py: conversational TRL records keep their prompt as messages, UltraFeedback
completions become a ranking by score, Parquet/CSV/Arrow rows go through the same readers, rejects carry the row,
and wrong keys fail in one line. The data sets are written here (nothing is downloaded)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlhf.config import DataSource, PreferencesConfig
from rlhf.preferences import IngestError, ingest
from rlhf.preferences.ingest import expand_paths
from rlhf.stages.preferences import run
from tests.unit.test_sources import write_arrow_folder, write_csv, write_jsonl, write_parquet


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


CONVERSATIONAL = [
    {"prompt": msgs(("system", "Be brief."), ("user", f"What is {i} + {i}?")),
     "chosen": msgs(("assistant", f"{2 * i}.")), "rejected": msgs(("assistant", "A fish."))} for i in range(5)] + [
    {"prompt": msgs(("user", "Say hi.")),                                             # row 6: two messages answer
     "chosen": msgs(("assistant", "Hi!"), ("user", "again")), "rejected": msgs(("assistant", "No."))},
    {"prompt": msgs(("user", "Say bye.")), "chosen": msgs(("user", "Bye")),          # row 7: not the assistant
     "rejected": msgs(("assistant", "No."))}]


def test_conversational_parquet_keeps_the_prompt_as_messages(tmp_path):
    path = write_parquet(tmp_path / "prefs.parquet", CONVERSATIONAL)
    summary = ingest([path], tmp_path / "out", max_reject_share=1.0)
    assert (summary.read, summary.accepted, summary.rejected) == (7, 5, 2)
    rankings = lines(tmp_path / "out" / "rankings.jsonl")
    assert rankings[0]["prompt"] == msgs(("system", "Be brief."), ("user", "What is 0 + 0?"))
    assert rankings[0]["responses"] == ["0.", "A fish."] and rankings[0]["ranks"] == [0, 1]
    pair = lines(tmp_path / "out" / "pairs.jsonl")[1]
    assert pair["prompt"] == msgs(("system", "Be brief."), ("user", "What is 1 + 1?")) and pair["chosen"] == "2."
    assert isinstance(lines(tmp_path / "out" / "elo.jsonl")[0]["prompt"], list)
    rejects = lines(tmp_path / "out" / "rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (6, "response is not one assistant turn: 'chosen' has 2 messages after the prompt"),
        (7, "response is not one assistant turn: 'chosen' is a 'user' message")]
    assert rejects[0]["source"] == str(path) and json.loads(rejects[0]["record"])["prompt"][0]["role"] == "user"


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet, write_arrow_folder],
                         ids=["jsonl", "csv", "parquet", "arrow"])
def test_every_format_gives_the_same_pairs_and_elo(tmp_path, writer):
    reference = tmp_path / "ref"
    ingest([write_jsonl(tmp_path / "ref.jsonl", CONVERSATIONAL)], reference, max_reject_share=1.0)
    path = writer(tmp_path / ("data" if writer is write_arrow_folder else f"data.{writer.__name__[6:]}"),
                  CONVERSATIONAL)
    ingest([path], tmp_path / "out", max_reject_share=1.0)
    for name in ("pairs.jsonl", "elo.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes(), name
    strip = ("meta",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in lines(tmp_path / "out" / "rankings.jsonl")] == \
        [{k: v for k, v in r.items() if k not in strip} for r in lines(reference / "rankings.jsonl")]


def test_ultrafeedback_completions_become_a_ranking_by_score(tmp_path):
    rows = [
        {"instruction": "Name a prime.", "source": "evol",
         "completions": [{"response": "9", "overall_score": 2.0, "model": "a"},
                         {"response": "7", "overall_score": 9.0, "model": "b"},
                         {"response": "Two.", "overall_score": 8.5, "model": "c"},
                         {"response": "Eleven.", "overall_score": 9.0, "model": "d"}]},
        {"instruction": "Say hi.", "source": "evol",
         "completions": [{"response": "Hi", "overall_score": float("nan"), "model": "a"},
                         {"response": "Hello", "overall_score": 3.0, "model": "b"}]},
    ]
    path = write_parquet(tmp_path / "uf.parquet", rows)
    summary = ingest([path], tmp_path / "out", max_reject_share=1.0, columns={"instruction": "prompt"})
    assert (summary.accepted, summary.rejected) == (1, 1) and summary.per_file[0]["format"] == "ultrafeedback"
    [ranking] = lines(tmp_path / "out" / "rankings.jsonl")
    assert ranking["prompt"] == "Name a prime." and ranking["responses"] == ["9", "7", "Two.", "Eleven."]
    assert ranking["ranks"] == [2, 0, 1, 0]                                  # higher score first, 9.0 ties
    assert ranking["meta"]["annotations"][0]["meta"] == {"scores": [2.0, 9.0, 8.5, 9.0], "source": "evol"}
    [reject] = lines(tmp_path / "out" / "rejects.jsonl")
    assert reject["line"] == 2 and reject["reason"].startswith("score out of range: nan at completions[0]")
    assert len(lines(tmp_path / "out" / "pairs.jsonl")) == 5                  # 6 pairs less the tie


def test_a_missing_mapped_column_names_preferences_columns(tmp_path):
    for path in (write_parquet(tmp_path / "p.parquet", CONVERSATIONAL[:2]),
                 write_jsonl(tmp_path / "p.jsonl", CONVERSATIONAL[:2])):
        start = time.perf_counter()
        with pytest.raises(IngestError) as err:
            ingest([path], tmp_path / "out", columns={"instruction": "prompt"})
        assert time.perf_counter() - start < 5
        assert str(err.value).startswith("preferences.columns: column 'instruction' is ")
        assert "chosen" in str(err.value) and "\n" not in str(err.value)


def test_a_hub_dataset_offline_fails_at_once_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(IngestError, match=r"^preferences\.dataset\.name: dataset 'trl-lib/ultrafeedback_binarized' "
                                          r"needs the Hugging Face hub, which is offline .* point "
                                          r"preferences\.dataset\.path at the saved folder, or allow the hub"):
        ingest([], tmp_path / "out", dataset=DataSource(name="trl-lib/ultrafeedback_binarized"))
    assert time.perf_counter() - start < 2 and not (tmp_path / "out").exists()


def test_the_stage_reads_a_split_of_a_saved_folder_with_its_columns(tmp_path):
    renamed = [{"question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in CONVERSATIONAL[:5]]
    folder = write_arrow_folder(tmp_path / "saved", renamed, split="test")
    cfg = PreferencesConfig(inputs=(), out_dir=str(tmp_path / "out"), val_fraction=0.2,
                            dataset=DataSource(path=str(folder), split="test", columns={"question": "prompt"}))
    metrics = run(cfg).metrics
    assert metrics["accepted"] == 5 and metrics["items_train"] + metrics["items_val"] == 5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_file"][0]["path"] == f"{folder}[test]"
    assert lines(tmp_path / "out" / "rankings.jsonl")[0]["prompt"][1]["role"] == "user"


def test_folders_expand_to_tabular_files_and_saved_datasets(tmp_path):
    write_parquet(tmp_path / "a.parquet", CONVERSATIONAL[:1])
    write_csv(tmp_path / "b.csv", CONVERSATIONAL[:1])
    write_jsonl(tmp_path / ".hidden.jsonl", CONVERSATIONAL[:1])
    write_arrow_folder(tmp_path / "c", CONVERSATIONAL[:1], split="train")
    assert expand_paths([tmp_path]) == [tmp_path / "a.parquet", tmp_path / "b.csv", tmp_path / "c"]
