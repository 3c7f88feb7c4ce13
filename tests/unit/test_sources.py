"""rlhf/sources.py: every kind of source gives the same plain records; wrong keys fail fast in one line naming them;
the hub is never touched offline. The data sets are written here (nothing is downloaded)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlhf.config import ConfigError, DataSource, load_params
from rlhf.sources import Keys, SourceError, iter_records, load_records, parse_json_cells

KEYS = Keys.of("prepare.sft")
ROWS = [
    {"prompt": "the plot", "completion": "was thin.", "id": "a"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello.", "name": "bot"}], "id": "b"},
    {"prompt": "[not json", "completion": "[1, 2]", "id": "c"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def table(rows: list[dict]) -> dict[str, list]:
    """Columns of ``rows`` (None where a row lacks the key), in first-seen order."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {n: [r.get(n) for r in rows] for n in names}


def write_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd
    cols = table(rows)
    frame = pd.DataFrame({n: [json.dumps(v) if isinstance(v, list) else v for v in vals] for n, vals in cols.items()})
    frame.to_csv(path, index=False)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pydict(table(rows)), path)
    return path


def write_arrow_folder(path: Path, rows: list[dict], split: str | None = None) -> Path:
    import datasets
    ds = datasets.Dataset.from_dict(table(rows))
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    return path


def values(source: DataSource) -> list:
    return [r.value for r in iter_records(source, KEYS)]


def test_every_format_gives_the_same_plain_records(tmp_path):
    """JSONL, JSON array, CSV, Parquet, a save_to_disk folder and a DatasetDict split: equal values, messages as
    lists of plain dicts without the null fields Arrow adds (``name`` of the messages that had none)."""
    (tmp_path / "a.json").write_text(json.dumps(ROWS), encoding="utf-8")
    sources = {
        "jsonl": write_jsonl(tmp_path / "a.jsonl", ROWS), "json": tmp_path / "a.json",
        "csv": write_csv(tmp_path / "a.csv", ROWS), "parquet": write_parquet(tmp_path / "a.parquet", ROWS),
        "arrow": write_arrow_folder(tmp_path / "arrow", ROWS),
    }
    got = {k: values(DataSource(path=str(p))) for k, p in sources.items()}
    got["dict"] = values(DataSource(path=str(write_arrow_folder(tmp_path / "dd", ROWS, "test")), split="test"))
    for kind, vals in got.items():
        assert vals == ROWS, kind
    msgs = got["parquet"][1]["messages"]
    assert type(msgs) is list and all(type(m) is dict for m in msgs) and "name" not in msgs[0]


def test_rows_are_numbered_from_one_and_bad_json_lines_are_error_records(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n\n{broken\n{"prompt": "b"}\n', encoding="utf-8")
    records = list(iter_records(DataSource(path=str(path)), KEYS))
    assert [(r.line, r.error) for r in records] == [
        (1, None), (3, "invalid JSON: Expecting property name enclosed in double quotes"), (4, None)]
    parquet = list(iter_records(DataSource(path=str(write_parquet(tmp_path / "x.parquet", ROWS))), KEYS))
    assert [r.line for r in parquet] == [1, 2, 3] and json.loads(parquet[0].text)["prompt"] == "the plot"


def test_csv_parses_json_arrays_only_where_a_list_or_a_conversation_belongs():
    row = {"prompt": "[1, 2]", "completion": '[{"role": "assistant", "content": "x"}]', "messages": "[oops",
           "ranking": "[2, 0, 1]", "note": "[3]"}
    assert parse_json_cells(row) == {"prompt": "[1, 2]", "completion": [{"role": "assistant", "content": "x"}],
                                     "messages": "[oops", "ranking": [2, 0, 1], "note": "[3]"}


def test_columns_rename_theirs_to_ours(tmp_path):
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    mapping = {"question": "prompt", "answer": "completion"}
    for path in (write_jsonl(tmp_path / "m.jsonl", rows), write_parquet(tmp_path / "m.parquet", rows)):
        assert values(DataSource(path=str(path), columns=mapping)) == [
            {"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]
    clash = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "prompt": "p"}])
    [record] = iter_records(DataSource(path=str(clash), columns={"question": "prompt"}), KEYS)
    assert record.error.startswith("column clash: 'prompt'")


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet, write_csv], ids=["jsonl", "parquet", "csv"])
def test_a_missing_mapped_column_fails_fast_naming_the_key_and_the_columns(tmp_path, writer):
    path = writer(tmp_path / f"s.{writer.__name__.split('_')[1]}", [{"prompt": "p", "completion": "c"}])
    start = time.perf_counter()
    with pytest.raises(SourceError) as err:
        load_records(DataSource(path=str(path), columns={"instruction": "prompt"}), "prepare.sft")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and message.startswith("prepare.sft.columns: column 'instruction'")
    assert "completion, prompt" in message or "prompt, completion" in message


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_a_hub_name_offline_fails_at_once_naming_the_key(monkeypatch, var):
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "1")
    start = time.perf_counter()
    with pytest.raises(SourceError) as err:
        load_records(DataSource(name="org/chat-prefs", config="en"), "prepare.sft")
    assert time.perf_counter() - start < 2
    assert str(err.value) == (
        f"prepare.sft.name: dataset 'org/chat-prefs' needs the Hugging Face hub, which is offline ({var}=1); "
        "download it on a machine with access (datasets.load_dataset(...).save_to_disk(DIR)) and point "
        "prepare.sft.path at the saved folder, or allow the hub with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 (the rlhf "
        "CLI sets both to 1)")


def test_an_unreachable_hub_fails_without_trying_to_download(monkeypatch):
    import rlhf.sources as sources
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    monkeypatch.setattr(sources, "_hub_dataset", lambda *a: pytest.fail("tried the hub"))
    with pytest.raises(SourceError, match=r"^prepare\.sft\.name: dataset 'org/x' needs the Hugging Face hub, "
                                          r"which cannot be reached \(no connection\)"):
        load_records(DataSource(name="org/x"), "prepare.sft")


def test_wrong_paths_are_one_line_naming_the_key_and_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    dd = write_arrow_folder(tmp_path / "dd", ROWS, "train")
    cases = [(DataSource(path=str(tmp_path / "nope.parquet")), f"prepare.sft.path: {tmp_path / 'nope.parquet'}: "
                                                               "no such file or folder"),
             (DataSource(path=str(tmp_path / "notes.txt")), "prepare.sft.path: ") ,
             (DataSource(path=str(tmp_path / "plain")), "prepare.sft.path: "),
             (DataSource(path=str(dd), split="validation"), f"prepare.sft.split: no split 'validation' in {dd} "
                                                            "(its splits: train)")]
    for source, start in cases:
        with pytest.raises(SourceError) as err:
            load_records(source, "prepare.sft")
        assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"^prepare\.sft\.path: .*broken\.parquet: cannot read it"):
        load_records(DataSource(path=str(broken)), "prepare.sft")


def test_a_cell_that_is_not_json_data_is_an_error_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"prompt": ["p"], "blob": [b"\x00\x01"]}), tmp_path / "b.parquet")
    [record] = iter_records(DataSource(path=str(tmp_path / "b.parquet")), KEYS)
    assert record.value is None and record.error == "unsupported value in column 'blob': bytes is not JSON data"


def test_data_source_config_is_checked(tmp_path):
    for kwargs, message in [({"path": "a", "name": "b"}, "not both"), ({"config": "en"}, "set name too"),
                            ({"columns": {"a": "prompt", "b": "prompt"}}, "renamed to 'prompt'")]:
        with pytest.raises(ConfigError, match=message):
            DataSource(**kwargs)
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {sft: {path: data/sft.parquet, columns: {question: prompt}}}\n")
    assert load_params(params).prepare.sft == DataSource(path="data/sft.parquet", columns={"question": "prompt"})
    for text, message in [("prepare: {sft: {columns: [a]}}\n", "prepare.sft.columns: expected a mapping"),
                          ("prepare: {sft: {columns: {a: 1}}}\n", "prepare.sft.columns.a: expected a string"),
                          ("prepare: {sft: {path: x, name: y}}\n", "prepare.sft: give path"),
                          ("prepare: {use_corpus: false, corpus: {path: c.csv}}\n", "use_corpus is false")]:
        params.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_params(params)


def test_a_reachable_hub_is_read_with_name_config_and_split(monkeypatch):
    """The hub path without a network: load_dataset is replaced, so only our side of the call is checked."""
    import datasets

    import rlhf.sources as sources
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    calls = []

    def fake_load(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        if config == "missing":
            raise ValueError("BuilderConfig 'missing' not found.\nAvailable: ['en']")
        if config == "net":
            raise OSError("fetch failed") from ConnectionError("Max retries exceeded")
        return datasets.Dataset.from_dict({"question": ["q?"], "answer": ["a."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = DataSource(name="org/qa", config="en", split="test", columns={"question": "prompt"})
    assert [(r.value, r.line) for r in iter_records(source, KEYS)] == [({"prompt": "q?", "answer": "a."}, 1)]
    assert calls == [("org/qa", "en", "test")]
    with pytest.raises(SourceError, match=r"^prepare\.sft\.name: dataset 'org/qa' \(config missing, split 'train'\): "
                                          r"ValueError: BuilderConfig 'missing' not found\.$"):
        load_records(DataSource(name="org/qa", config="missing"), "prepare.sft")
    with pytest.raises(SourceError, match=r"^prepare\.sft\.name: dataset 'org/qa' needs the Hugging Face hub, which "
                                          r"cannot be reached \(OSError: fetch failed\)"):
        load_records(DataSource(name="org/qa", config="net"), "prepare.sft")
