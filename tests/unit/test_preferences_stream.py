"""The incremental JSON-array parser and the JSONL reader (rlhf/preferences/jsonstream.py)."""
from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from rlhf.preferences import jsonstream
from rlhf.preferences.jsonstream import TRUNCATED, Limits, iter_json_array, iter_jsonl

CHUNKS = (1, 2, 3, 7, 64, 1 << 16)


def _parse(text: str, chunk: int) -> list:
    return [(r.value, r.line, r.error) for r in iter_json_array(io.StringIO(text), chunk_chars=chunk)]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_valid_array_matches_json_load_for_every_chunk_size(chunk):
    data = [1, -2.5e3, "s,]\"{", {"a": [1, {"b": "x\\y"}], "é": None}, [], {}, True, "\u2603 snow"]
    text = json.dumps(data, indent=2, ensure_ascii=False)
    got = _parse(text, chunk)
    assert [v for v, _, _ in got] == data
    assert all(e is None for _, _, e in got)


def test_line_numbers_are_where_each_element_starts():
    text = '[\n  {"a": 1},\n\n  {"b":\n 2},\n  3\n]\n'
    assert [line for _, line, _ in _parse(text, 4)] == [2, 4, 6]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_bad_element_is_one_error_and_reading_goes_on(chunk):
    text = '[\n {"a": 1},\n {"b": tru},\n {"c": [1, 2}\n, {"d": 4}, NaN, 5]'
    got = _parse(text, chunk)
    assert [v for v, _, _ in got] == [{"a": 1}, None, None, {"d": 4}, None, 5]
    errors = [e for _, _, e in got if e]
    assert len(errors) == 3 and all(e.startswith("invalid JSON: ") for e in errors)
    assert "NaN" in errors[2]
    assert [line for _, line, _ in got][:3] == [2, 3, 4]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_truncated_array_gives_one_reject_for_the_broken_tail(chunk):
    got = _parse('[{"a": 1}, {"b": 2}, {"c": "unfinished', chunk)
    assert [v for v, _, _ in got[:2]] == [{"a": 1}, {"b": 2}]
    assert got[2][2] == TRUNCATED and len(got) == 3


@pytest.mark.parametrize("text, error", [
    ('[{"a": 1}', "invalid JSON: unexpected end of file (array not closed)"),
    ('[{"a": 1},', "invalid JSON: unexpected end of file (array not closed)"),
    ('[{"a": 1}] trailing', "invalid JSON: extra data after the closing ']'"),
])
def test_structural_problems_at_the_end(text, error):
    got = _parse(text, 3)
    assert got[0][0] == {"a": 1}
    assert got[-1][2] == error and len(got) == 2


def test_empty_array_yields_nothing_and_non_array_is_refused():
    assert _parse("  [ ]  ", 2) == []
    with pytest.raises(ValueError):
        list(iter_json_array(io.StringIO('{"a": 1}')))


def test_record_text_is_kept_and_truncated():
    big = "x" * 5000
    (rec,) = list(iter_json_array(io.StringIO(json.dumps([{"t": big}]))))
    assert rec.value == {"t": big}
    assert len(rec.text) == jsonstream.MAX_RECORD_TEXT and rec.text.startswith('{"t": "xxx')


def test_element_larger_than_the_cap_is_rejected_without_keeping_it():
    text = json.dumps([{"a": 1}, {"big": "y" * 5000}, {"c": 3}])
    for chunk in (64, 1 << 16):                                   # scanned in head mode, or decoded then measured
        got = [(r.value, r.line, r.error) for r in iter_json_array(io.StringIO(text), chunk_chars=chunk,
                                                                   limits=Limits(max_record_bytes=1000))]
        assert got[0][0] == {"a": 1} and got[2][0] == {"c": 3}
        assert got[1][2] == "record too large: the element at line 1 has 5011 bytes (max_record_bytes=1000)"


def test_invalid_utf8_inside_an_array_rejects_only_that_element(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"a": "ok"}, {"b": "\xff\xfe"}, {"c": "ok"}]')
    got = [(r.value, r.error) for r in iter_json_array(path)]
    assert got[0] == ({"a": "ok"}, None) and got[2] == ({"c": "ok"}, None)
    assert got[1][1] == "invalid UTF-8 in record"


def test_jsonl_reader_skips_blank_lines_and_reports_bad_ones(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"b": \n\xff\n[1]\nInfinity\n')
    got = [(r.line, r.value, r.error) for r in iter_jsonl(path)]
    assert got[0] == (1, {"a": 1}, None)
    assert got[1][0] == 4 and got[1][2].startswith("invalid JSON")
    assert got[2][0] == 5 and got[2][2].startswith("invalid UTF-8")
    assert got[3] == (6, [1], None)
    assert got[4][0] == 7 and "Infinity" in got[4][2]


def _write_big_array(path: Path, target_bytes: int) -> int:
    """Write a JSON array of Label-Studio-like tasks chunk by chunk; returns the element count."""
    body = "word " * 300
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        while fh.tell() < target_bytes:
            task = {"id": n, "data": {"prompt": f"prompt {n}", "candidates": [
                {"id": "r0", "body": body}, {"id": "r1", "body": body[::-1]}]}, "annotations": []}
            fh.write(("," if n else "") + json.dumps(task, indent=1) + "\n")
            n += 1
        fh.write("]\n")
    return n


def test_streaming_memory_stays_far_below_the_file_size(tmp_path):
    path = tmp_path / "big.json"
    n = _write_big_array(path, 30 * 1024 * 1024)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = 0
        for rec in iter_json_array(path):
            assert rec.error is None
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert size > 30 * 1024 * 1024
    assert peak < 5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
