"""The demo data generator: determinism, file formats, the grammar's constraints, the lexicon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlhf.demo import lexicon as lx
from rlhf.demo.generator import FOLLOW_UPS, OPENINGS, build_demo_data, generate_demo_data, is_well_formed, main
from rlhf.demo.judge import sentiment, tokenize

SMALL = dict(n_corpus=600, n_sft=150, n_prompts=200)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, seed=7, **SMALL)
    return out


@pytest.fixture(scope="module")
def data():
    return build_demo_data(seed=0, n_corpus=2500, n_sft=500, n_prompts=600)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, small_dir: Path) -> None:
    generate_demo_data(tmp_path / "again", seed=7, **SMALL)
    generate_demo_data(tmp_path / "other", seed=8, **SMALL)
    for name in ("corpus.jsonl", "sft.jsonl", "prompts.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (small_dir / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (small_dir / name).read_bytes()


def test_files_are_sorted_key_json_lines_with_the_documented_schema(small_dir: Path) -> None:
    for name, prefix, keys in (("corpus.jsonl", "c", {"id", "text"}),
                               ("sft.jsonl", "s", {"id", "prompt", "completion"}),
                               ("prompts.jsonl", "p", {"id", "prompt", "split"})):
        raw = (small_dir / name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
        lines = raw.decode("utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        assert all(json.dumps(row, sort_keys=True, ensure_ascii=False) == line for row, line in zip(rows, lines))
        assert all(set(row) == keys for row in rows)
        assert [row["id"] for row in rows] == [f"{prefix}{i:06d}" for i in range(1, len(rows) + 1)]


def test_counts_returned_match_the_files(tmp_path: Path) -> None:
    counts = generate_demo_data(tmp_path, seed=1, n_corpus=50, n_sft=20, n_prompts=30)
    assert counts == {"corpus": 50, "sft": 20, "prompts": 30}
    assert [len(read_jsonl(tmp_path / f"{stem}.jsonl")) for stem in ("corpus", "sft", "prompts")] == [50, 20, 30]


def test_distinctness_between_and_within_files(small_dir: Path) -> None:
    corpus = {row["text"] for row in read_jsonl(small_dir / "corpus.jsonl")}
    sft = read_jsonl(small_dir / "sft.jsonl")
    prompts = [row["prompt"] for row in read_jsonl(small_dir / "prompts.jsonl")]
    assert len(corpus) == SMALL["n_corpus"]
    sft_texts = {f"{row['prompt']} {row['completion']}" for row in sft}
    assert len(sft_texts) == SMALL["n_sft"] and not sft_texts & corpus
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {row["prompt"] for row in sft}


def test_prompt_splits_are_50_30_20(small_dir: Path) -> None:
    splits = Counter(row["split"] for row in read_jsonl(small_dir / "prompts.jsonl"))
    assert splits == {"annotate": 100, "ppo": 60, "eval": 40}


def test_text_format_lowercase_single_spaces_attached_punctuation(small_dir: Path) -> None:
    texts = [row["text"] for row in read_jsonl(small_dir / "corpus.jsonl")]
    for text in texts:
        assert text == text.lower() and text == " ".join(text.split())
        assert " ," not in text and " ." not in text and text.endswith(".")
        assert re.fullmatch(r"[a-z ,.]+", text), text
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", text), text      # articles agree


def test_openings_and_completions_respect_the_grammar_limits(data) -> None:
    for review in data.corpus + data.sft:
        opening, completion = review.opening.split(), review.completion.split()
        assert 3 <= len(opening) <= 7 and 6 <= len(completion) <= 20
        assert 10 <= len(opening) + len(completion) <= 28
        assert not review.opening.endswith(".") and review.completion.endswith(".")
        assert not [w for w in tokenize(review.opening) if w in lx.POLARITY]
    for opening, _ in data.prompts:
        assert 3 <= len(opening.split()) <= 7 and not [w for w in tokenize(opening) if w in lx.POLARITY]


def test_well_formedness_check_rejects_a_sentiment_word_in_the_opening(data) -> None:
    good = data.sft[0]
    assert is_well_formed(good)
    assert not is_well_formed(type(good)("the superb acting in this", good.completion, good.sentiment))
    assert not is_well_formed(type(good)(good.opening, good.completion.rstrip("."), good.sentiment))


def test_sentiment_class_shares_and_steering(data) -> None:
    shares = Counter(r.sentiment for r in data.corpus)
    n = len(data.corpus)
    assert abs(shares["positive"] / n - 0.4) < 0.04 and abs(shares["negative"] / n - 0.4) < 0.04
    assert abs(shares["mixed"] / n - 0.2) < 0.04
    for review in data.corpus:
        polarities = {lx.POLARITY[w] > 0 for w in tokenize(review.completion) if w in lx.POLARITY}
        expected = {"positive": {True}, "negative": {False}, "mixed": {True, False}}[review.sentiment]
        assert polarities == expected, review
    sft_classes = Counter(r.sentiment for r in data.sft)
    assert min(sft_classes.values()) > 0.1 * len(data.sft)   # demonstrations are honest, not all positive


def test_text_is_varied(data) -> None:
    assert len(OPENINGS) + len(FOLLOW_UPS) >= 15
    first_words = Counter(" ".join(r.opening.split()[:2]) for r in data.corpus)
    assert len(first_words) >= 15 and max(first_words.values()) < 0.15 * len(data.corpus)
    vocabulary = {w for r in data.corpus for w in tokenize(r.text) if w.isalpha()}
    assert len(vocabulary) >= 250
    assert sum(sentiment(tokenize(r.completion)) > 0 for r in data.sft if r.sentiment == "positive") > 0


def test_lexicon_polarity_is_graded_and_documented() -> None:
    assert len(lx.all_words()) >= 250
    assert all(value in (-3, -2, -1, 1, 2, 3) for value in lx.POLARITY.values())
    for word, value in (("good", 1), ("great", 2), ("brilliant", 3), ("dull", -1), ("boring", -2),
                        ("terrible", -3), ("masterpiece", 3), ("hated", -2)):
        assert lx.POLARITY[word] == value
    neutral_pools = (lx.NEUTRAL_ADJECTIVES, lx.GENRES, lx.FILM_NOUNS, lx.ROLES, lx.FIRST_NAMES, lx.LAST_NAMES,
                     lx.INTENSIFIERS, tuple(a for a, _ in lx.ASPECTS), lx.RELATIONS, lx.PLOT_EVENTS,
                     lx.TIME_PHRASES, lx.NEUTRAL_NOUNS, lx.NEUTRAL_VERBS)
    assert not {w for pool in neutral_pools for entry in pool for w in entry.split()} & set(lx.POLARITY)
    # Nor do the templates' fixed words judge: only evaluative slots carry sentiment.
    templates = [o for o, _ in OPENINGS] + [c for _, cs in OPENINGS for c in cs] + list(FOLLOW_UPS)
    assert not {w for t in templates for w in tokenize(re.sub(r"\{\w+\}", " ", t))} & set(lx.POLARITY)
    assert all(w == w.lower() and "-" not in w for w in lx.all_words())
    assert not [r for r in lx.ROLES if r[0] in "aeiou"]                      # templates write "a {role}"


def test_default_sizes_stay_small_and_the_cli_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path), "--seed", "3"])
    assert json.loads(capsys.readouterr().out) == {"corpus": 6000, "sft": 1500, "prompts": 1600}
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) < 3_000_000


def test_demo_package_imports_only_the_standard_library() -> None:
    code = ("import sys, rlhf.demo.generator, rlhf.demo.judge, rlhf.demo.annotators; "
            "print([m for m in ('torch', 'numpy', 'prefect', 'mlflow', 'dvc') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
