"""The preference ingest on hostile input: every problem is one reject with a reason (or one clear error), the rest
of the input is ingested, and a failed ingest leaves the previous outputs as they were (docs/preferences.md,
"Limits")."""
from __future__ import annotations

import importlib
import json
import math
import os
import tracemalloc
from pathlib import Path

import pytest

from rlhf.config import PreferencesConfig
from rlhf.preferences import ingest
from rlhf.stages.preferences import run as run_stage

OUTPUTS = ("rankings.jsonl", "pairs.jsonl", "elo.jsonl", "rejects.jsonl", "summary.json")
GOOD = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}


def good(i: int) -> str:
    return json.dumps({**GOOD, "prompt": f"p{i}"})


def strict_lines(path: Path) -> list[dict]:
    """Parse as the JSON standard says: NaN, Infinity and out-of-range numbers are errors."""
    def refuse(name):
        raise ValueError(f"non-standard constant {name}")

    def finite(text):
        assert math.isfinite(float(text)), text
        return float(text)
    return [json.loads(x, parse_constant=refuse, parse_float=finite)
            for x in path.read_text(encoding="utf-8").splitlines()]


def rejects(out: Path) -> list[tuple[int, str]]:
    return [(r["line"], r["reason"]) for r in strict_lines(out / "rejects.jsonl")]


def in_deep_stack(depth: int, fn):
    """Call ``fn`` under ``depth`` extra Python frames (a Prefect task or a CLI runs the ingest deep in a stack)."""
    return fn() if depth == 0 else in_deep_stack(depth - 1, fn)


# ---- 1. nesting depth ------------------------------------------------------------------------------------------

def test_deeply_nested_records_are_rejected_and_the_rest_ingests(tmp_path):
    deep_objects = '{"a":' * 990 + "1" + "}" * 990
    deep_lists = "[" * 990 + "]" * 990
    deep_extra = json.dumps({**GOOD, "prompt": "q"})[:-1] + ', "x": ' + "[" * 100 + "]" * 100 + "}"
    text = "\n".join([good(1), deep_objects, deep_lists, deep_extra, good(2)]) + "\n"
    (tmp_path / "in.jsonl").write_text(text)
    (tmp_path / "in.json").write_text("[" + ",\n".join([good(3), deep_objects, deep_extra, good(4)]) + "]")
    csv = tmp_path / "in.csv"                                      # a CSV cell holding a JSON array is parsed
    csv.write_text('prompt,responses,ranking\np5,"' + "[" * 3000 + "]" * 3000 + '","[0, 1]"\np6,"[""a"", ""b""]",'
                   '"[1, 0]"\n')
    for name in ("in.jsonl", "in.json", "in.csv"):
        out = tmp_path / f"out-{name}"
        summary = in_deep_stack(400, lambda: ingest([tmp_path / name], out, max_reject_share=1.0))
        reasons = {reason for _, reason in rejects(out)}
        assert reasons == {"nested deeper than 64 levels"}, name
        assert summary.accepted == {"in.jsonl": 2, "in.json": 2, "in.csv": 1}[name]
        assert summary.rejected == {"in.jsonl": 3, "in.json": 2, "in.csv": 1}[name]
    assert [line for line, _ in rejects(tmp_path / "out-in.jsonl")] == [2, 3, 4]
    summary = ingest([tmp_path / "in.jsonl"], tmp_path / "o2", max_reject_share=1.0, max_depth=128)
    assert summary.accepted == 3 and rejects(tmp_path / "o2")[-1] == (3, "nested deeper than 128 levels")


# ---- 2. responses per record (all-pairs conversion is quadratic) ----------------------------------------------

def test_too_many_responses_is_a_reject_naming_the_count_and_the_key(tmp_path):
    many = {"prompt": "q", "responses": [f"r{i}" for i in range(60)], "ranking": list(range(60))}
    sixteen = {"prompt": "s", "responses": [f"r{i}" for i in range(16)], "ranking": list(range(16))}
    (tmp_path / "in.jsonl").write_text("\n".join([good(1), json.dumps(many), json.dumps(sixteen)]) + "\n")
    task = {"id": 9, "data": {"prompt": "p", "candidates": [{"id": str(i), "body": f"b{i}"} for i in range(20)]},
            "annotations": [{"id": 1, "result": [{"value": {"ranker": {"rank": [str(i) for i in range(20)]}}}]}]}
    (tmp_path / "ls.json").write_text(json.dumps([task]))
    summary = ingest([tmp_path / "in.jsonl", tmp_path / "ls.json"], tmp_path / "out", max_reject_share=1.0)
    assert rejects(tmp_path / "out") == [(2, "too many responses: 60 (max_responses=16)"),
                                         (1, "too many responses: 20 (max_responses=16)")]
    assert summary.accepted == 2 and summary.pairs == 3 + 16 * 15 // 2
    assert (tmp_path / "out" / "pairs.jsonl").stat().st_size < 100_000
    summary = ingest([tmp_path / "in.jsonl"], tmp_path / "o2", max_responses=60)
    assert summary.rejected == 0 and summary.pairs == 3 + 120 + 60 * 59 // 2
    assert PreferencesConfig().max_responses == 16


# ---- 3. record size --------------------------------------------------------------------------------------------

def test_an_overlong_line_is_rejected_without_reading_it_whole(tmp_path):
    path = tmp_path / "in.jsonl"
    long_value = "x" * (20 << 20)                                  # a 20 MB line
    with path.open("w") as f:
        f.write(good(1) + "\n" + json.dumps({**GOOD, "prompt": long_value}) + "\n" + good(2) + "\n")
    length = len(json.dumps({**GOOD, "prompt": long_value}))
    tracemalloc.start()
    try:
        summary = ingest([path], tmp_path / "out", max_reject_share=1.0, max_record_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes: the long line was read whole"
    assert summary.accepted == 2
    [(line, reason)] = rejects(tmp_path / "out")
    assert (line, reason) == (2, f"line too long: line 2 has {length} bytes (max_record_bytes=1048576)")
    array = tmp_path / "in.json"                                   # a JSON array element over the bound
    array.write_text("[" + good(3) + ",\n" + json.dumps({**GOOD, "prompt": "y" * 5000}) + ",\n" + good(4) + "]")
    summary = ingest([array], tmp_path / "o2", max_reject_share=1.0, max_record_bytes=2000)
    assert summary.accepted == 2
    [(line, reason)] = rejects(tmp_path / "o2")
    assert line == 2 and reason.startswith("record too large: ") and "max_record_bytes=2000" in reason


# ---- 4. non-finite numbers -------------------------------------------------------------------------------------

def test_non_finite_numbers_are_rejected_and_outputs_are_standard_json(tmp_path):
    rows = [good(1)] + [json.dumps({**GOOD, "prompt": f"n{i}"})[:-1] + f', "x": {v}}}'
                        for i, v in enumerate(["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])]
    rows.append('{"prompt": "r", "responses": ["a", "b"], "ratings": [1e999, 2]}')
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    summary = ingest([tmp_path / "in.jsonl"], tmp_path / "out", max_reject_share=1.0, format="auto")
    assert summary.accepted == 1 and summary.rejected == 6
    got = rejects(tmp_path / "out")
    assert [line for line, _ in got] == [2, 3, 4, 5, 6, 7]
    assert got[0][1] == "number out of range: 1e999 is not a finite number"
    assert got[1][1] == "number out of range: -1e999 is not a finite number"
    assert all("NaN" in r or "Infinity" in r for _, r in got[2:5])
    for name in ("rankings.jsonl", "pairs.jsonl", "elo.jsonl"):
        strict_lines(tmp_path / "out" / name)
    from tests.unit.test_sources import write_parquet                 # a NaN in a float column of a table
    table = write_parquet(tmp_path / "t.parquet", [{**GOOD, "x": 1.0}, {**GOOD, "prompt": "q", "x": float("nan")}])
    summary = ingest([table], tmp_path / "o2", max_reject_share=1.0)
    assert summary.accepted == 1 and rejects(tmp_path / "o2") == [(2, "number out of range: nan in 'x'")]
    strict_lines(tmp_path / "o2" / "rankings.jsonl")


# ---- 5. file references ------------------------------------------------------------------------------------------

def _ref_task(tid: int, prompt: str) -> dict:
    return {"id": tid, "data": {"prompt": prompt, "candidates": [{"id": "a", "body": "alpha"},
                                                                  {"id": "b", "body": "beta"}]},
            "annotations": [{"id": tid, "result": [{"value": {"ranker": {"rank": ["b", "a"]}}}]}]}


def test_file_references_are_off_by_default_and_confined_to_refs_dir(tmp_path, capsys):
    export = tmp_path / "export"
    (export / ".dvc").mkdir(parents=True)
    (export / ".dvc" / "config.local").write_text("SECRET-CREDENTIAL")
    (export / ".env").write_text("SECRET-CREDENTIAL")
    (export / "texts").mkdir()
    (export / "texts" / "p.txt").write_text("a prompt from a file")
    os.symlink(export / ".dvc" / "config.local", export / "texts" / "link.txt")
    refs = tmp_path / "refs"
    (refs / "texts").mkdir(parents=True)
    (refs / "texts" / "p.txt").write_text("the configured folder's prompt")
    tasks = [_ref_task(1, "texts/p.txt"), _ref_task(2, ".dvc/config.local"), _ref_task(3, "./.env"),
             _ref_task(4, "texts/link.txt"), _ref_task(5, "texts/../texts/p.txt"), _ref_task(6, "Plain and/or text")]
    (export / "export.json").write_text(json.dumps(tasks, indent=1))

    summary = ingest([export / "export.json"], tmp_path / "off", max_reject_share=1.0)
    assert summary.accepted == 1                                   # only the plain text
    reasons = [r for _, r in rejects(tmp_path / "off")]
    assert all(r.startswith("file reference not allowed: 'data.prompt' = ") for r in reasons), reasons

    summary = ingest([export / "export.json"], tmp_path / "on", max_reject_share=1.0, refs_dir=str(refs))
    assert summary.accepted == 2
    prompts = {r["prompt"] for r in strict_lines(tmp_path / "on" / "rankings.jsonl")}
    assert prompts == {"the configured folder's prompt", "Plain and/or text"}   # refs_dir, not the export folder
    assert [r.split(":")[0] for _, r in rejects(tmp_path / "on")] == [
        "hidden file not read", "hidden file not read", "unreadable reference", "path escapes refs_dir"]

    summary = ingest([export / "export.json"], tmp_path / "self", max_reject_share=1.0, refs_dir=str(export))
    assert [r.split(":")[0] for _, r in rejects(tmp_path / "self")] == [
        "hidden file not read", "hidden file not read", "hidden file not read", "path escapes refs_dir"]
    for out in ("off", "on", "self"):
        for name in OUTPUTS:
            assert "SECRET-CREDENTIAL" not in (tmp_path / out / name).read_text()
    from flows.cli import main                                     # the CLI: opt in with --refs-dir, or one line
    assert main(["ingest", str(export / "export.json"), "--out", str(tmp_path / "cli"), "--max-reject-share", "1",
                 "--refs-dir", str(refs)]) == 0
    assert strict_lines(tmp_path / "cli" / "rankings.jsonl") == strict_lines(tmp_path / "on" / "rankings.jsonl")
    capsys.readouterr()
    assert main(["ingest", str(export / "export.json"), "--out", str(tmp_path / "cli2"),
                 "--refs-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"rlhf ingest: error: {tmp_path / 'nope'}: refs_dir is not a folder\n"


# ---- 6. no partial outputs ---------------------------------------------------------------------------------------

def test_a_failed_ingest_leaves_every_previous_output_as_it_was(tmp_path, monkeypatch):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([good(1), good(2), "not json"]) + "\n")
    out = tmp_path / "prefs"
    cfg = PreferencesConfig(inputs=(str(source),), out_dir=str(out), max_reject_share=0.5, val_fraction=0.4)
    run_stage(cfg)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(OUTPUTS + ("rankings_train.jsonl", "rankings_val.jsonl"))
    before = {name: (out / name).read_bytes() for name in files}
    source.write_text("\n".join([good(3), good(4), good(5)]) + "\n")  # new data whose write fails half-way

    def broken(*args, **kwargs):
        raise MemoryError("out of memory while scoring")
    monkeypatch.setattr(importlib.import_module("rlhf.preferences.ingest"), "elo_from_groups", broken)
    with pytest.raises(MemoryError):
        run_stage(cfg)
    assert {name: (out / name).read_bytes() for name in files} == before
    assert sorted(p.name for p in out.iterdir()) == files           # no temp files left
    monkeypatch.undo()
    metrics = run_stage(cfg).metrics                                # and a good run replaces them all
    assert metrics["accepted"] == 3 and metrics["items_train"] + metrics["items_val"] == 3
    assert all((out / name).read_bytes() != before[name] for name in ("rankings.jsonl", "rejects.jsonl"))
