"""Every input format on real-looking fixture files, format detection, and every reject reason."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhf.preferences import FileReader, IngestError, Ranking, ReaderConfig, Reject, classify
from rlhf.preferences.refs import reference_kind

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "preferences"


def read(path, fmt="auto", **cfg) -> tuple[list[Ranking], list[Reject], str | None]:
    reader = FileReader(path, ReaderConfig(**cfg), fmt)
    items = list(reader)
    return ([i for i in items if isinstance(i, Ranking)], [i for i in items if isinstance(i, Reject)],
            reader.format)


def by_response(r: Ranking) -> dict[str, int]:
    return dict(zip(r.responses, r.ranks))


# ---- Label Studio full export -------------------------------------------------------------------------

def test_label_studio_ranker_export():
    ok, rejects, fmt = read(FIXTURES / "ls_ranker_export.json")
    assert fmt == "labelstudio"
    assert len(ok) == 4 and len(rejects) == 2  # 6 records: 5 annotations + 1 unlabelled task
    first = ok[0]
    assert first.prompt == "Explain in one sentence why the sky looks blue."
    assert first.ranks == (0, 2, 1, 3)  # order r1, r3, r2, r4
    assert first.annotator == "1" and first.item_id == "101" and first.line == 2
    assert first.meta["task_id"] == 101 and first.meta["annotation_id"] == 201
    assert first.meta["candidates"][0] == {"id": "r1", "title": "Response 1"}
    assert ok[1].annotator == "2" and ok[1].ranks == (0, 3, 1, 2)
    haiku = ok[2]
    assert [c["ended"] for c in haiku.meta["candidates"]] == [True, True, False]  # extra fields -> meta
    assert haiku.meta["task_meta"] == {"batch": "pilot-1"}
    assert [(r.line, r.reason) for r in rejects] == [(130, "cancelled"), (320, "no annotations")]
    assert json.loads(rejects[0].record)["annotation"]["id"] == 204


def test_label_studio_pairwise_tutorial_export():
    ok, rejects, fmt = read(FIXTURES / "ls_pairwise_export.json")
    assert fmt == "labelstudio"
    assert [r.ranks for r in ok] == [(0, 1), (1, 0)]  # selected left, right
    assert ok[1].responses[0].startswith("This post is really long")
    assert [r.reason for r in rejects] == ["empty text in 'data.answer1'"]


def test_label_studio_pairwise_choices_template():
    ok, rejects, _ = read(FIXTURES / "ls_pairwise_choices_export.json")
    assert not rejects
    assert [r.ranks for r in ok] == [(0, 1), (1, 0)]  # choices ["answer1"], ["answer2"]
    assert ok[1].responses == ("Bonne nuit.", "Bonjour.") and ok[1].annotator == "4"


def test_label_studio_json_min_export():
    ok, rejects, fmt = read(FIXTURES / "ls_ranker_export_min.json")
    assert fmt == "labelstudio_min"
    full, _, _ = read(FIXTURES / "ls_ranker_export.json")
    assert [(r.prompt, r.responses, r.ranks, r.annotator) for r in ok] == \
        [(r.prompt, r.responses, r.ranks, r.annotator) for r in full]
    assert [r.reason for r in rejects] == ["no annotations"]


def _ls_task(ranker=None, data=None, **ann):
    value = {"ranker": ranker if ranker is not None else {"rank": ["b", "a"]}}
    annotation = {"id": 1, "completed_by": 3, "was_cancelled": False,
                  "result": [{"id": "x", "type": "ranker", "from_name": "rank", "to_name": "candidates",
                              "value": value}]}
    annotation.update(ann)
    data = data if data is not None else {
        "prompt": "p", "candidates": [{"id": "a", "title": "A", "body": "alpha"}, {"id": "b", "body": "beta"}]}
    return {"id": 9, "data": data, "annotations": [annotation], "predictions": [], "meta": {}}


def _write(tmp_path: Path, obj, name="export.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_ranker_buckets_first_bucket_or_ranker_key(tmp_path):
    buckets = {"_": ["a", "b"], "best": ["b", "a"], "worst": []}
    path = _write(tmp_path, [_ls_task(ranker=buckets)])
    ok, _, _ = read(path)
    assert ok[0].ranks == (1, 0)  # first bucket other than "_"
    path = _write(tmp_path, [_ls_task(ranker={"best": ["b"], "all": ["a", "b"]})])
    ok, rejects, _ = read(path, ranker_key="all")
    assert ok[0].ranks == (0, 1)
    _, rejects, _ = read(path)  # the first bucket holds only "b": not a full order
    assert rejects[0].reason == "ranking is not a permutation: indices [0] missing"
    _, rejects, _ = read(path, ranker_key="missing")
    assert rejects[0].reason == "missing field 'annotations[0].result[0].value.ranker.missing'"


def test_json_min_pairwise_flattened_choice(tmp_path):
    rows = [{"id": 1, "prompt": "p", "answer1": "x", "answer2": "y", "selection": "answer2", "annotator": 5,
             "annotation_id": 11},
            {"id": 2, "prompt": "q", "answer1": "x", "answer2": "y", "comparison": [{"selected": "left"}],
             "annotator": 5, "annotation_id": 12}]
    ok, rejects, fmt = read(_write(tmp_path, rows))
    assert fmt == "labelstudio_min" and not rejects
    assert [r.ranks for r in ok] == [(1, 0), (0, 1)]


# ---- JSONL formats ------------------------------------------------------------------------------------

def test_trl_standard():
    ok, rejects, fmt = read(FIXTURES / "trl_standard.jsonl")
    assert fmt == "pairwise" and not rejects
    assert ok[0].prompt == "The sky is" and ok[0].ranks == (0, 1) and ok[0].item_id == "trl-0001"
    assert ok[0].annotator == "ann-07"
    assert ok[1].meta == {"score_chosen": 8.0, "score_rejected": 2.0}


def test_trl_conversational_prompt_stays_messages():
    ok, rejects, fmt = read(FIXTURES / "trl_conversational.jsonl")
    assert fmt == "pairwise" and not rejects
    assert ok[0].prompt == [{"role": "system", "content": "You are a concise assistant."},
                            {"role": "user", "content": "What colour is the sky?"}]
    assert ok[0].responses == ("Usually blue during the day.", "It is green.")


def test_trl_implicit_prompt_splits_the_common_prefix():
    ok, rejects, _ = read(FIXTURES / "trl_implicit.jsonl")
    assert not rejects
    assert ok[0].prompt == [{"role": "user", "content": "What colour is the sky?"}]
    assert ok[0].responses == ("It is blue.", "It is green.")
    assert len(ok[1].prompt) == 3 and ok[1].prompt[-1] == {"role": "user", "content": "Tell me a fact."}
    assert ok[1].responses == ("Octopuses have three hearts.", "Facts are boring.")


def test_text_prompt_beside_whole_conversations_takes_their_shared_prefix(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized: `prompt` is text and `chosen`/`rejected` are whole conversations
    [user, assistant]. The responses are the assistant turns and the prompt the conversation they share (TRL's
    maybe_extract_prompt), not HH transcripts of the whole conversations; a text prompt beside single assistant
    messages keeps the text prompt."""
    user = {"role": "user", "content": "What colour is the sky?"}
    rows = [{"prompt": "What colour is the sky?", "prompt_id": "a1", "score_chosen": 8.0, "score_rejected": 3.0,
             "chosen": [user, {"role": "assistant", "content": "Blue."}],
             "rejected": [user, {"role": "assistant", "content": "Green."}]},
            {"prompt": "Say hi.", "chosen": [{"role": "assistant", "content": "Hi!"}],
             "rejected": [{"role": "assistant", "content": "No."}]}]
    f = tmp_path / "h4.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok, rejects, fmt = read(f)
    assert fmt == "pairwise" and not rejects
    assert ok[0].prompt == [user] and ok[0].responses == ("Blue.", "Green.") and ok[0].ranks == (0, 1)
    assert ok[1].prompt == "Say hi." and ok[1].responses == ("Hi!", "No.")


def test_anthropic_hh():
    ok, rejects, fmt = read(FIXTURES / "hh_rlhf.jsonl")
    assert fmt == "hh"
    assert ok[0].prompt == "\n\nHuman: What are some cuss words in english?\n\nAssistant:"
    assert ok[0].responses[1] == " Here is a list of them."
    second = ok[1]  # multi-turn: the prompt is everything up to the last shared "\n\nAssistant:"
    assert second.prompt.endswith("\n\nHuman: For how long?\n\nAssistant:")
    assert second.responses == (" About 8 minutes for a firm yolk, then cool it in cold water.",
                                " Eggs are laid by hens.")
    assert [r.line for r in rejects] == [4] and rejects[0].reason.startswith("no shared prompt")


def test_kwise_orders_tie_groups_and_ranks():
    ok, rejects, fmt = read(FIXTURES / "kwise.jsonl")
    assert fmt == "kwise" and not rejects
    assert ok[0].ranks == (0, 3, 1, 2)
    assert by_response(ok[1]) == {"joyful": 0, "glad": 0, "sad": 1, "table": 2}  # [[0, 2], [1], [3]]
    assert ok[2].ranks == (1, 0, 1)  # ranks [2, 1, 2] made dense


def test_ratings_higher_is_better_and_equal_ties():
    ok, rejects, fmt = read(FIXTURES / "ratings.jsonl")
    assert fmt == "ratings"
    assert ok[0].ranks == (0, 1, 0) and ok[0].meta["ratings"] == [6, 1, 6]
    assert ok[1].ranks == (2, 0, 1)
    assert rejects[0].reason == "rating out of range: 9 at ratings[0] not in [1, 7]"
    ok, rejects, _ = read(FIXTURES / "ratings.jsonl", rating_scale=(0, 10))
    assert len(ok) == 3 and not rejects


@pytest.mark.parametrize("record, fmt", [
    ({"annotations": [], "data": {}}, "labelstudio"),
    ({"prompt": "p", "responses": [], "ratings": []}, "ratings"),
    ({"prompt": "p", "responses": [], "ranks": []}, "kwise"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "pairwise"),
    ({"chosen": [], "rejected": []}, "pairwise"),
    ({"chosen": "a", "rejected": "b"}, "hh"),
    ({"prompt": "p", "candidates": [], "rank": []}, "labelstudio_min"),
    ({"prompt": "p"}, None),
    ([1, 2], None),
])
def test_classify(record, fmt):
    assert classify(record) == fmt


def test_records_before_detection_get_precise_reasons(tmp_path):
    path = tmp_path / "k.jsonl"
    lines = [{"prompt": "p"}, {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ok, rejects, fmt = read(path)
    assert fmt == "kwise" and len(ok) == 1
    assert rejects[0].reason == "missing field 'responses'"


def test_nothing_recognisable_is_rejected_not_lost(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"foo": 1}\n"text"\n')
    _, rejects, fmt = read(path)
    assert fmt is None
    assert [r.reason for r in rejects] == [
        "unrecognised record: object with keys ['foo'] matches no known format",
        "unrecognised record: a JSON string matches no known format"]


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("  \n\n", "empty file"),
])
def test_unreadable_files_raise_ingest_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "e.jsonl"
    path.write_text(content)
    with pytest.raises(IngestError, match=f"^{path}: {message}"):
        read(path)
    with pytest.raises(IngestError, match=f"^{tmp_path / 'missing.json'}: cannot read"):
        read(tmp_path / "missing.json")


# ---- every reject reason ------------------------------------------------------------------------------

LONG = "x" * 101
JSONL_CASES = [
    ("kwise", '{"prompt": "p", ', "invalid JSON: "),
    ("kwise", '[1, 2]', "wrong type for 'record': expected object, got array"),
    ("kwise", {"responses": ["a", "b"], "ranking": [0, 1]}, "missing field 'prompt'"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"]}, "missing field 'ranking'"),
    ("kwise", {"prompt": 3, "responses": ["a", "b"], "ranking": [0, 1]},
     "wrong type for 'prompt': expected string, got integer"),
    ("kwise", {"prompt": "p", "responses": "ab", "ranking": [0, 1]},
     "wrong type for 'responses': expected array, got string"),
    ("kwise", {"prompt": " \t\n", "responses": ["a", "b"], "ranking": [0, 1]}, "empty text in 'prompt'"),
    ("kwise", {"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "empty text in 'responses[1]'"),
    ("kwise", {"prompt": "p", "responses": ["a"], "ranking": [0]}, "too few responses: 1 (need at least 2)"),
    ("kwise", {"prompt": "p", "responses": ["a", "a"], "ranking": [0, 1]},
     "duplicate response text: responses 0 and 1 are identical"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]},
     "ranking is not a permutation: index 0 appears twice"),
    ("kwise", {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0]},
     "ranking is not a permutation: indices [1] missing"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]},
     "ranking is not a permutation: index 2 out of range for 2 responses"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1], []]},
     "ranking is not a permutation: empty tie group in 'ranking'"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, "1"]},
     "wrong type for 'ranking': expected array of integers or array of arrays of integers"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranks": [0, -1]},
     "invalid ranks: negative rank -1 at ranks[1]"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, "invalid ranks: 1 ranks for 2 responses"),
    ("kwise", {"prompt": LONG, "responses": ["a", "b"], "ranking": [0, 1]},
     "field too long: 'prompt' has 101 chars (max_field_chars=100)"),
    ("kwise", '{"prompt": "\\ud800", "responses": ["a", "b"], "ranking": [0, 1]}',
     "invalid text in 'prompt': unpaired surrogate"),
    ("kwise", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "annotator": [1]},
     "wrong type for 'annotator': expected string or integer, got array"),
    ("ratings", {"prompt": "p", "responses": ["a", "b"], "ratings": [0, 3]},
     "rating out of range: 0 at ratings[0] not in [1, 7]"),
    ("ratings", {"prompt": "p", "responses": ["a", "b"], "ratings": [7.5, 3]},
     "rating out of range: 7.5 at ratings[0] not in [1, 7]"),
    ("ratings", {"prompt": "p", "responses": ["a", "b"], "ratings": ["5", 3]},
     "wrong type for 'ratings[0]': expected integer or number, got string"),
    ("ratings", {"prompt": "p", "responses": ["a", "b"], "ratings": [5]}, "invalid ratings: 1 ratings for 2 responses"),
    ("pairwise", {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    ("pairwise", {"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
    ("pairwise", {"prompt": "p", "chosen": "a", "rejected": 5},
     "wrong type for 'rejected': expected string or array, got integer"),
    ("pairwise", {"prompt": [{"content": "hi"}], "chosen": "a", "rejected": "b"}, "missing field 'prompt[0].role'"),
    ("pairwise", {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
     "no shared prompt: 'chosen' and 'rejected' start with different messages"),
    ("pairwise", {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "a"},
                                                                             {"role": "assistant", "content": "x"}]},
     "empty text in 'chosen': nothing after the shared prompt"),
    ("hh", {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"},
     "no shared prompt: 'chosen' and 'rejected' share no prefix ending in '\\n\\nAssistant:'"),
    ("hh", {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant:  "},
     "empty text in 'rejected': nothing after the shared prompt"),
]


@pytest.mark.parametrize("fmt, line, reason", JSONL_CASES)
def test_every_jsonl_reject_reason(tmp_path, fmt, line, reason):
    path = tmp_path / "r.jsonl"
    path.write_text((line if isinstance(line, str) else json.dumps(line)) + "\n", encoding="utf-8")
    ok, rejects, _ = read(path, fmt, max_field_chars=100)
    assert not ok and len(rejects) == 1
    assert rejects[0].reason.startswith(reason), rejects[0].reason
    assert rejects[0].line == 1 and rejects[0].source == str(path) and rejects[0].record


LS_CASES = [
    (_ls_task(was_cancelled=True), "cancelled"),
    ({"id": 1, "data": {"prompt": "p"}, "annotations": []}, "no annotations"),
    ({"id": 1, "data": {"prompt": "p"}}, "missing field 'annotations'"),
    ({"id": 1, "data": {"prompt": "p"}, "annotations": {}}, "wrong type for 'annotations'"),
    ({"id": 1, "annotations": [{}]}, "missing field 'data'"),
    (_ls_task(data={"candidates": []}), "missing field 'data.prompt'"),
    (_ls_task(data={"prompt": "p"}), "missing field 'data.candidates'"),
    (_ls_task(data={"prompt": "p", "candidates": [{"id": "a", "body": "x"}, {"id": "a", "body": "y"}]}),
     "duplicate response id: 'a'"),
    (_ls_task(data={"prompt": "p", "candidates": [{"id": "a", "body": "x"}, {"id": "b"}]}),
     "missing field 'data.candidates[1].body'"),
    (_ls_task(ranker={"rank": ["b", "zz"]}), "unknown response id in ranking: 'zz'"),
    (_ls_task(ranker={"rank": ["b"]}), "ranking is not a permutation: indices [0] missing"),
    (_ls_task(result=[{"type": "textarea", "value": {"text": ["nice"]}}]), "no ranking in annotation"),
    (_ls_task(result=None), "wrong type for 'annotations[0].result'"),
    (_ls_task(completed_by=[1]), "wrong type for 'annotations[0].completed_by'"),
    ({"id": 2, "data": {"prompt": "p", "answer1": "x", "answer2": "y"},
      "annotations": [{"result": [{"type": "choices", "value": {"choices": ["answer3"]}}]}]},
     "invalid choice: 'answer3' is not one of ['answer1', 'answer2']"),
    ({"id": 2, "data": {"prompt": "p", "answer1": "x", "answer2": "y"},
      "annotations": [{"result": [{"type": "choices", "value": {"choices": ["answer1", "answer2"]}}]}]},
     "invalid choice: expected exactly one of"),
    ({"id": 3, "data": {"prompt": "p", "candidates": []}, "annotations": ["oops"]},
     "wrong type for 'annotations[0]': expected object, got string"),
]


@pytest.mark.parametrize("task, reason", LS_CASES)
def test_every_label_studio_reject_reason(tmp_path, task, reason):
    path = _write(tmp_path, [task])
    ok, rejects, _ = read(path, "labelstudio")
    assert not ok and len(rejects) == 1
    assert rejects[0].reason.startswith(reason), rejects[0].reason


def test_json_min_rejects(tmp_path):
    rows = [{"id": 1, "prompt": "p", "candidates": [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}],
             "annotator": 2, "annotation_id": 4},
            {"id": 2, "prompt": "p", "answer1": "x", "answer2": "y", "was_cancelled": True, "annotator": 1}]
    _, rejects, _ = read(_write(tmp_path, rows), "labelstudio_min")
    assert [r.reason for r in rejects] == ["no ranking in annotation", "cancelled"]


def test_one_record_per_annotation_and_task_level_errors_repeat(tmp_path):
    task = {"id": 5, "data": {"prompt": ""}, "annotations": [{"id": 1}, {"id": 2, "was_cancelled": True}]}
    _, rejects, _ = read(_write(tmp_path, [task]), "labelstudio")
    assert [r.reason for r in rejects] == ["empty text in 'data.prompt'", "cancelled"]


# ---- hostile references -------------------------------------------------------------------------------

def test_hostile_references_are_never_fetched_or_followed():
    export = FIXTURES / "hostile_export"
    ok, rejects, _ = read(export / "export.json")                 # file references are off by default
    assert not ok and [r.reason.split(":")[0] for r in rejects] == ["remote reference not allowed"] * 3 + [
        "file reference not allowed"] * 5
    ok, rejects, _ = read(export / "export.json", refs_dir=str(export))
    reasons = [r.reason for r in rejects]
    assert reasons == [
        "remote reference not allowed: 'data.prompt' = 'http://169.254.169.254/latest/meta-data/'",
        "remote reference not allowed: 'data.candidates[0].body' = 's3://company-bucket/answers/1.txt'",
        "remote reference not allowed: 'data.prompt' = '/data/upload/7/3f2a9c1e-prompt.txt'",
        "path escapes refs_dir: 'data.candidates[0].body' = '../outside_secret.txt'",
        "path escapes refs_dir: 'data.prompt' = '/etc/passwd'",
        "unreadable reference: 'data.candidates[0].body' = 'texts/missing.txt': no such file",
        "path escapes refs_dir: 'data.candidates[0].body' = 'texts/../../outside_secret.txt'",
    ]
    (inside,) = ok  # a relative path inside refs_dir is read
    assert inside.prompt == "Which of these explains photosynthesis better?\n"
    assert inside.responses == ("Plants turn light, water and CO2 into sugar and oxygen.\n",
                                "A short plain answer, and/or more.")
    assert all("TOP SECRET" not in r.record for r in rejects)


def test_symlink_out_of_refs_dir_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    folder = tmp_path / "export"
    (folder / "texts").mkdir(parents=True)
    os.symlink(secret, folder / "texts" / "link.txt")
    task = _ls_task(data={"prompt": "texts/link.txt", "candidates": [{"id": "a", "body": "x"},
                                                                     {"id": "b", "body": "y"}]})
    _, rejects, _ = read(_write(folder, [task]), refs_dir=str(folder))
    assert rejects[0].reason == "path escapes refs_dir: 'data.prompt' = 'texts/link.txt'"


def test_urls_in_jsonl_formats_are_plain_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Link?", "chosen": "https://example.org/docs", "rejected": "no"}) + "\n")
    ok, _, _ = read(path)
    assert ok[0].responses[0] == "https://example.org/docs"


@pytest.mark.parametrize("value, kind", [
    ("http://x.org/a.txt", "remote"), ("https://x.org", "remote"), ("s3://b/k", "remote"), ("gs://b/k", "remote"),
    ("//host/share", "remote"), ("/data/upload/3/a.txt", "remote"), ("/data/local-files/?d=a.txt", "remote"),
    ("../x", "path"), ("./a.txt", "path"), ("/etc/passwd", "path"), ("texts/a.txt", "path"), ("C:\\x.txt", "path"),
    ("and/or", None), ("1/2", None), ("v1.2/v1.3", None), ("/help", None), ("391", None),
    ("see http://x.org for more", None), ("What is /etc/passwd?", None),
])
def test_reference_kind(value, kind):
    assert reference_kind(value) == kind
