"""The prepare stage on every kind of source: the same records as JSONL, CSV, Parquet or a save_to_disk folder give
byte-identical prepared files (messages records included); bad rows go to rejects with their row; chat shapes,
hashed prompt splits and `use_corpus: false`; wrong keys fail in one line before anything is read."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlhf.config import DataSource, PrepareConfig
from rlhf.sources import SourceError
from rlhf.stages.prepare import hashed_split, run
from tests.unit.test_sources import write_arrow_folder, write_csv, write_jsonl, write_parquet

WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet, "arrow": write_arrow_folder}
PREPARED = ("corpus_train.jsonl", "corpus_val.jsonl", "sft_train.jsonl", "sft_val.jsonl", "prompts_annotate.jsonl",
            "prompts_ppo.jsonl", "prompts_eval.jsonl")


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


CORPUS = [{"text": f"review number {i} was fine."} for i in range(12)]
SFT = [{"prompt": f"the film {i}", "completion": f"was good {i}."} for i in range(6)] + [
    {"messages": msgs(("system", "Be kind."), ("user", f"Rate film {i}"), ("assistant", f"{i} stars."))}
    for i in range(6)] + [
    {"messages": msgs(("user", "no answer"))},                                  # row 13: no assistant turn
    {"prompt": "   ", "completion": "x"},                                       # row 14: blank prompt
    {"messages": msgs(("user", "hi"), ("assistant", "y" * 81))}]                # row 15: longer than max_chars
SFT_CHAT_PROMPTS = [{"prompt": msgs(("user", f"r{i}")), "completion": msgs(("assistant", f"b{i}"))} for i in range(6)] + [
    {"messages": msgs(("user", f"q{i}"), ("assistant", f"a{i}"))} for i in range(4)]   # (Arrow: one type a column)
PROMPTS = [{"prompt": f"opening {i}", "split": ("annotate", "ppo", "eval")[i % 3]} for i in range(9)] + [
    {"prompt": "odd one", "split": "train"}]                                    # row 10: unknown split
CHAT_PROMPTS = [{"messages": msgs(("user", f"question {i}"), ("assistant", f"old answer {i}"))} for i in range(40)]


def prepare(tmp_path: Path, kind: str, sft=SFT, prompts=PROMPTS, **cfg) -> tuple[Path, dict]:
    """Write the three inputs as ``kind`` and run prepare; returns (out_dir, metrics)."""
    src = tmp_path / kind
    src.mkdir()
    suffix = "" if kind == "arrow" else f".{kind}"
    paths = {name: WRITERS[kind](src / f"{name}{suffix}", rows)
             for name, rows in (("corpus", CORPUS), ("sft", sft), ("prompts", prompts))}
    out = tmp_path / f"out_{kind}"
    config = PrepareConfig(out_dir=str(out), max_chars=80, corpus=DataSource(path=str(paths["corpus"])),
                           sft=DataSource(path=str(paths["sft"])), prompts=DataSource(path=str(paths["prompts"])),
                           **cfg)
    return out, run(config).metrics


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("sft, prompts", [(SFT, PROMPTS), (SFT_CHAT_PROMPTS, CHAT_PROMPTS)], ids=["mixed", "chat"])
def test_every_format_gives_byte_identical_prepared_files(tmp_path, sft, prompts):
    outs = {kind: prepare(tmp_path, kind, sft, prompts) for kind in WRITERS}
    reference, metrics = outs["jsonl"]
    for kind, (out, m) in outs.items():
        assert m == metrics, kind
        for name in PREPARED:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (kind, name)
        strip = [{k: v for k, v in r.items() if k not in ("source", "record")} for r in rows(out / "rejects.jsonl")]
        assert strip == [{k: v for k, v in r.items() if k not in ("source", "record")}
                         for r in rows(reference / "rejects.jsonl")], kind


def test_bad_rows_go_to_rejects_with_their_row_and_reason(tmp_path):
    out, metrics = prepare(tmp_path, "parquet")
    rejects = rows(out / "rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (13, "field 'messages' has no assistant turn"), (14, "empty field 'prompt'"),
        (15, "field 'messages[1].content' longer than 80 characters"),
        (10, "unknown split 'train' (expected one of annotate, ppo, eval)")]
    assert rejects[0]["source"].endswith("sft.parquet") and json.loads(rejects[0]["record"])["messages"]
    assert metrics["records_read"] == metrics["records_accepted"] + metrics["records_rejected"] == 12 + 15 + 10


def test_chat_records_keep_their_shape(tmp_path):
    out, metrics = prepare(tmp_path, "parquet", SFT_CHAT_PROMPTS, CHAT_PROMPTS)
    sft = rows(out / "sft_train.jsonl") + rows(out / "sft_val.jsonl")
    def key(r): return json.dumps(r, sort_keys=True)
    assert sorted(sft, key=key) == sorted(SFT_CHAT_PROMPTS, key=key)
    prompts = rows(out / "prompts_ppo.jsonl") + rows(out / "prompts_eval.jsonl")
    assert rows(out / "prompts_annotate.jsonl") == [] and len(prompts) == 40 and metrics["records_rejected"] == 0
    for row in prompts:                                  # the messages column became the prompt, answer dropped
        assert set(row) == {"prompt", "split"} and row["prompt"][-1]["role"] == "user"
        assert row["split"] == hashed_split(row["prompt"], 0.1)
    assert 0 < len(rows(out / "prompts_eval.jsonl")) < 15


def test_sft_shapes_and_their_rejects(tmp_path):
    recs = [{"prompt": msgs(("user", "q")), "completion": "text answer"},                        # accepted
            {"prompt": "text", "completion": msgs(("assistant", "a"))},                          # text + messages
            {"prompt": msgs(("user", "q")), "completion": msgs(("user", "not an answer"))},
            {"messages": msgs(("user", "q"), ("assistant", "a")), "prompt": "both"},
            {"messages": [{"role": "robot", "content": "x"}]},
            {"messages": [{"role": "user", "content": 3}]}]
    out, metrics = prepare(tmp_path, "jsonl", sft=recs)
    assert metrics["n_sft"] == 1
    assert [r["reason"] for r in rows(out / "rejects.jsonl")][:5] == [
        "field 'completion' must be a string", "field 'completion' has no assistant turn",
        "ambiguous record: both 'messages' and 'prompt'/'completion' (keep one shape)",
        "field 'messages[0].role' must be one of system, user, assistant",
        "field 'messages[0].content' must be a string"]


def test_a_text_prompt_copying_a_user_turn_beside_messages_is_not_ambiguous(tmp_path):
    """HuggingFaceH4's SFT sets (ultrachat_200k, no_robots) carry `prompt` (the first user turn), `prompt_id` and
    `messages`: SFT learns the conversation, the prompt file takes the text prompt; a prompt that is not one of the
    user turns stays ambiguous."""
    conv = msgs(("user", "q one"), ("assistant", "a one"), ("user", "q two"), ("assistant", "a two"))
    recs = [{"prompt": "q one", "prompt_id": "x1", "messages": conv},
            {"prompt": "something else", "messages": conv}]
    out, metrics = prepare(tmp_path, "jsonl", sft=recs, prompts=recs)
    assert metrics["n_sft"] == 1
    sft = rows(out / "sft_train.jsonl") + rows(out / "sft_val.jsonl")
    assert sft == [{"prompt_id": "x1", "messages": conv}]
    prompts = rows(out / "prompts_ppo.jsonl") + rows(out / "prompts_eval.jsonl")
    assert [(r["prompt"], r["prompt_id"]) for r in prompts] == [("q one", "x1")]
    assert [r["reason"] for r in rows(out / "rejects.jsonl")] == [
        "ambiguous record: both 'messages' and 'prompt'/'completion' (keep one shape)",
        "ambiguous record: both 'messages' and 'prompt' (keep one)"]


def test_hashed_split_is_stable_and_follows_eval_fraction():
    prompts = [f"prompt {i}" for i in range(2000)]
    evals = sum(hashed_split(p, 0.1) == "eval" for p in prompts)
    assert 150 < evals < 250
    assert hashed_split(msgs(("user", "x")), 0.5) == hashed_split([{"content": "x", "role": "user"}], 0.5)


def test_without_corpus_no_corpus_is_read(tmp_path):
    out = tmp_path / "out"
    sft, prompts = write_jsonl(tmp_path / "s.jsonl", SFT[:6]), write_jsonl(tmp_path / "p.jsonl", PROMPTS[:9])
    metrics = run(PrepareConfig(data_dir=str(tmp_path / "no-such-folder"), out_dir=str(out), use_corpus=False,
                                sft=DataSource(path=str(sft)), prompts=DataSource(path=str(prompts)))).metrics
    assert metrics["n_corpus"] == 0 and metrics["n_sft"] == 6
    assert (out / "corpus_train.jsonl").read_text() == "" and (out / "corpus_val.jsonl").read_text() == ""


def test_the_default_sources_are_the_data_folder_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, recs in (("corpus", CORPUS), ("sft", SFT[:6]), ("prompts", PROMPTS[:9])):
        write_jsonl(data / f"{name}.jsonl", recs)
    metrics = run(PrepareConfig(data_dir=str(data), out_dir=str(tmp_path / "out"))).metrics
    assert (metrics["n_corpus"], metrics["n_sft"], metrics["n_prompts"]) == (12, 6, 9)


@pytest.mark.parametrize("sft, message", [
    (DataSource(name="org/chat-sft"), "prepare.sft.name: dataset 'org/chat-sft' needs the Hugging Face hub, which "
                                      "is offline"),
    (DataSource(path="PARQUET", columns={"instruction": "prompt"}), "prepare.sft.columns: column 'instruction' is "
                                                                    "not in"),
    (DataSource(path="missing.csv"), "prepare.sft.path: missing.csv: no such file or folder"),
])
def test_wrong_sources_fail_fast_in_one_line_naming_the_key(tmp_path, monkeypatch, sft, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if sft.path == "PARQUET":
        sft = DataSource(path=str(write_parquet(tmp_path / "sft.parquet", SFT[:6])), columns=sft.columns)
    corpus = write_jsonl(tmp_path / "c.jsonl", CORPUS)
    cfg = PrepareConfig(out_dir=str(tmp_path / "out"), corpus=DataSource(path=str(corpus)), sft=sft,
                        prompts=DataSource(path=str(write_jsonl(tmp_path / "p.jsonl", PROMPTS))))
    start = time.perf_counter()
    with pytest.raises(SourceError) as err:
        run(cfg)
    assert time.perf_counter() - start < 5
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()               # nothing written: it failed before any output
