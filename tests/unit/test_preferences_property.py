"""Property-based: malformed and random inputs never crash the ingest and never lose a record."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.preferences import IngestError, ingest

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=6)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
texts = st.sampled_from(["", "  ", "a", "b", "c", "yes", "\n\nHuman: hi\n\nAssistant: yo", "x" * 40]) \
    | st.text(max_size=10)
messages = st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", 3]),
                                                        "content": texts}), max_size=3)
indices = st.lists(st.integers(-1, 4), max_size=5)
rankings = indices | st.lists(st.lists(st.integers(0, 4), max_size=3), max_size=4) | json_values
annotators = st.none() | st.sampled_from(["a1", "a2", 7]) | json_values

record = st.fixed_dictionaries({}, optional={
    "prompt": texts | messages | json_values,
    "responses": st.lists(texts, max_size=5) | json_values,
    "ranking": rankings,
    "ranks": indices,
    "ratings": st.lists(st.integers(-1, 9) | st.floats(-1, 9), max_size=5),
    "chosen": texts | messages,
    "rejected": texts | messages,
    "annotator": annotators,
    "id": st.integers(0, 3) | st.text(max_size=3),
})
valid = st.one_of(  # well-formed records of each format, so that merging and agreement are exercised too
    st.builds(lambda p, perm, a: {"prompt": p, "responses": ["r0", "r1", "r2"], "ranking": perm, "annotator": a},
              st.sampled_from(["p1", "p2"]), st.permutations([0, 1, 2]), st.sampled_from(["a1", "a2", "a3"])),
    st.builds(lambda p, r, a: {"prompt": p, "responses": ["r0", "r1", "r2"], "ratings": r, "annotator": a},
              st.sampled_from(["p1", "p2"]), st.lists(st.integers(1, 7), min_size=3, max_size=3),
              st.sampled_from(["a1", "a2"])),
    st.builds(lambda p, c: {"prompt": p, "chosen": c[0], "rejected": c[1]},
              st.sampled_from(["p1", "p2"]), st.permutations(["yes", "no"])),
    st.builds(lambda c: {"chosen": "\n\nHuman: q\n\nAssistant: " + c[0], "rejected": "\n\nHuman: q\n\nAssistant: " + c[1]},
              st.permutations(["yes", "no"])),
)
garbage = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20)
line = st.one_of(
    valid.map(json.dumps), valid.map(json.dumps), record.map(json.dumps), json_values.map(json.dumps), garbage,
    st.just('{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}'),   # valid, and repeated: duplicates
    st.just('{"prompt": "\\ud800", "responses": ["a", "b"], "ranking": [0]}'),
    st.just('{"broken": '), st.just("NaN"),
).map(lambda s: s.encode("utf-8")) | st.just(b"\xff\xfe bad bytes")


def _check_outputs(out: Path, summary, expected_read: int | None) -> None:
    assert summary.read == summary.accepted + summary.rejected
    if expected_read is not None:
        assert summary.read == expected_read
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == summary.rejected
    assert all(isinstance(r["reason"], str) and r["reason"].strip() for r in rejects)
    assert all(isinstance(r["line"], int) and r["line"] >= 1 and len(r["record"]) <= 2000 for r in rejects)
    assert sum(summary.rejected_by_reason.values()) == summary.rejected
    merged = [json.loads(x) for x in (out / "rankings.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(r["n_annotators"] for r in merged) == summary.accepted
    for path in ("pairs.jsonl", "elo.jsonl"):
        for row in (out / path).read_text(encoding="utf-8").splitlines():
            json.loads(row)
    json.loads((out / "summary.json").read_text())


@SETTINGS
@given(st.lists(line, min_size=1, max_size=12), st.booleans())
def test_random_jsonl_never_crashes_and_loses_nothing(lines, blank_lines):
    body = (b"\n\n" if blank_lines else b"\n").join(lines) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out"
        src.write_bytes(body)
        summary = ingest([src], out, max_reject_share=1.0)  # may only raise IngestError (never here: lines)
        # each non-blank line is one record, except a Label Studio task with several annotations
        first = summary.per_file[0]["format"]
        expected = None if first == "labelstudio" else sum(1 for x in lines if x.strip())
        _check_outputs(out, summary, expected)
        rejected_lines = {json.loads(x)["line"] for x in (out / "rejects.jsonl").read_text().splitlines()}
        merged = [json.loads(x) for x in (out / "rankings.jsonl").read_text().splitlines()]
        accepted_lines = {a["line"] for r in merged for a in r["meta"]["annotations"]}
        step = 2 if blank_lines else 1
        nonblank = {1 + step * i for i, x in enumerate(lines) if x.strip()}
        assert rejected_lines | accepted_lines == nonblank  # every line accounted for


ids = st.sampled_from(["r1", "r2", "r3", "r4"]) | st.integers(0, 2)
candidates = st.lists(st.fixed_dictionaries({}, optional={"id": ids, "body": texts, "title": st.text(max_size=3)}),
                      max_size=4)
value = st.fixed_dictionaries({}, optional={
    "ranker": st.fixed_dictionaries({}, optional={"rank": st.lists(ids, max_size=4), "_": st.lists(ids)})
    | json_values,
    "choices": st.lists(st.sampled_from(["answer1", "answer2", "answer3"]), max_size=2),
    "selected": st.sampled_from(["left", "right", "up"]),
})
result_item = st.fixed_dictionaries({"type": st.sampled_from(["ranker", "choices", "pairwise", "textarea"]),
                                     "value": value | json_values})
annotation = st.fixed_dictionaries({}, optional={
    "id": st.integers(1, 99), "completed_by": annotators, "was_cancelled": st.booleans(),
    "result": st.lists(result_item | json_values, max_size=2) | json_values,
})
data = st.fixed_dictionaries({}, optional={
    "prompt": texts | json_values | st.sampled_from(["http://x.org/a", "../secret.txt", "texts/a.txt"]),
    "candidates": candidates | json_values, "answer1": texts, "answer2": texts,
})
valid_annotation = st.builds(
    lambda i, user, cancelled, perm: {"id": i, "completed_by": user, "was_cancelled": cancelled, "result": [
        {"id": "x", "type": "ranker", "from_name": "rank", "to_name": "candidates",
         "value": {"ranker": {"rank": perm}}}]},
    st.integers(1, 99), st.integers(1, 3), st.booleans(), st.permutations(["r1", "r2", "r3"]))
valid_task = st.builds(
    lambda i, p, anns: {"id": i, "data": {"prompt": p, "candidates": [
        {"id": "r1", "title": "Response 1", "body": "alpha"}, {"id": "r2", "title": "Response 2", "body": "beta"},
        {"id": "r3", "title": "Response 3", "body": "gamma"}]}, "annotations": anns, "predictions": [], "meta": {}},
    st.integers(1, 5), st.sampled_from(["p1", "p2"]), st.lists(valid_annotation | annotation, max_size=3))
task = st.fixed_dictionaries({"id": st.integers(1, 5)}, optional={
    "data": data | json_values, "annotations": st.lists(annotation | json_values, max_size=3) | json_values,
    "predictions": st.just([]), "meta": json_values,
})


def _records_in(export: list) -> int:
    return sum(len(t["annotations"]) if isinstance(t, dict) and isinstance(t.get("annotations"), list)
               and t["annotations"] else 1 for t in export)


@SETTINGS
@given(st.lists(valid_task | valid_task | task | json_values, max_size=6), st.sampled_from([None, 2]), st.none() | st.floats(0, 1))
def test_random_label_studio_export_never_crashes_and_loses_nothing(export, indent, cut):
    text = json.dumps(export, indent=indent)
    if cut is not None:
        text = text[: int(len(text) * cut)]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "export.json", Path(tmp) / "out"
        src.write_text(text, encoding="utf-8")
        try:
            summary = ingest([src], out, format="labelstudio", max_reject_share=1.0)
        except IngestError as exc:
            assert str(exc).startswith(str(src)) and (not export or cut is not None)
            return
        _check_outputs(out, summary, _records_in(export) if cut is None else None)
