"""The gold judge: the documented formula, its order of preferences, and its resistance to gaming."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.demo.generator import build_demo_data
from rlhf.demo.judge import GoldJudge, repetition, sentiment, tokenize

PROMPT = "i watched this thriller and"
FLUENT = [
    "i watched this thriller and the acting was superb, and the plot was brilliant.",
    "i watched this comedy and the acting was decent.",
    "i watched this drama and the acting was boring.",
    "i watched this western and the film was great.",
    "the story was good, and the ending was great.",
]


@pytest.fixture(scope="module")
def judge() -> GoldJudge:
    return GoldJudge.from_texts(FLUENT)


@pytest.fixture(scope="module")
def demo():
    data = build_demo_data(seed=0, n_corpus=2000, n_sft=400, n_prompts=10)
    return data, GoldJudge.from_texts(r.text for r in data.corpus)


def test_tokenize_splits_punctuation_off() -> None:
    assert tokenize("The acting was superb, and fun.") == ["the", "acting", "was", "superb", ",", "and", "fun", "."]


def test_sentiment_is_the_mean_polarity_over_three_with_intensifiers() -> None:
    assert sentiment(tokenize("the film was good.")) == pytest.approx(1 / 3)
    assert sentiment(tokenize("the film was very good.")) == pytest.approx(0.5)
    assert sentiment(tokenize("truly superb")) == pytest.approx(1.0)        # 1.5 * 3 capped at 3
    assert sentiment(tokenize("superb but dull")) == pytest.approx((3 - 1) / 2 / 3)
    assert sentiment(tokenize("quite terrible")) == pytest.approx(-1.0)
    assert sentiment(tokenize("a long quiet film")) == 0.0


def test_repetition_counts_repeated_content_words_only() -> None:
    assert repetition(tokenize("this film and this plot")) == 0.0          # "this" is a function word
    assert repetition(tokenize("great plot, great cast")) == 0.5
    assert repetition(tokenize("great great great great great")) == 1.5    # capped


def test_score_follows_the_documented_formula_by_hand(judge: GoldJudge) -> None:
    # Bigrams: (and, the) (the, acting) (acting, was) (was, decent) (decent, .) -> all five seen: fluency 1.
    assert judge.score(PROMPT, "the acting was decent.") == pytest.approx(1 / 3)
    # (and, acting) unseen, (acting, was) (was, decent) (decent, .) seen -> fluency 3/4, penalty 1.5 / 4.
    assert judge.score(PROMPT, "acting was decent.") == pytest.approx(1 / 3 - 0.375 - 0.5)   # < 4 words
    assert judge.score(PROMPT, "the acting was decent.", ended=False) == pytest.approx(1 / 3 - 1.0)
    assert judge.score(PROMPT, "the acting was decent") == pytest.approx(1 / 3 - 0.5)   # no final "."


def test_strong_positive_beats_mild_positive_beats_negative(judge: GoldJudge) -> None:
    strong = judge.score(PROMPT, "the acting was superb, and the plot was brilliant.")
    mild = judge.score(PROMPT, "the acting was decent.")
    negative = judge.score(PROMPT, "the acting was boring.")
    assert strong > mild > negative
    assert judge.rank(PROMPT, ["the acting was boring.", "the acting was superb, and the plot was brilliant.",
                               "the acting was decent."]) == [1, 2, 0]


def test_stacking_and_repeating_do_not_pay(judge: GoldJudge) -> None:
    fluent = judge.score("i watched this western and", "the film was great.")
    assert judge.score("i watched this western and", "great great great great.") < fluent - 1.0
    stacked = judge.score(PROMPT, "the acting was superb brilliant stunning outstanding.")
    assert stacked < judge.score(PROMPT, "the acting was superb, and the plot was brilliant.")
    once = judge.score(PROMPT, "the acting was superb, and the plot was brilliant.")
    twice = judge.score(PROMPT, "the acting was superb, and the acting was superb, and the plot was brilliant.")
    assert twice < once


def test_unfinished_response_scores_lower(judge: GoldJudge) -> None:
    assert judge.score(PROMPT, "the acting was superb.", ended=False) < judge.score(PROMPT, "the acting was superb.")


def test_scores_depend_only_on_inputs(judge: GoldJudge, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(FLUENT)))
    again = GoldJudge.from_corpus(corpus)
    responses = ["the acting was superb.", "plot the was.", "the film was great, and the ending was good."]
    first = judge.score_many([PROMPT] * 3, responses, [True, False, True])
    assert first == again.score_many([PROMPT] * 3, responses, [True, False, True])
    assert first[::-1] == judge.score_many([PROMPT] * 3, responses[::-1], [True, False, True])
    assert judge.score_many([PROMPT] * 3, responses) == [judge.score(PROMPT, r) for r in responses]


def test_rank_is_stable_on_ties_and_validates_lengths(judge: GoldJudge) -> None:
    assert judge.rank(PROMPT, ["the acting was good."] * 3) == [0, 1, 2]
    assert judge.rank(PROMPT, ["x", "the acting was good."], ended=[True, True]) == [1, 0]
    with pytest.raises(ValueError):
        judge.score_many([PROMPT], ["a", "b"])


def test_demo_completions_are_fluent_and_scored_by_class(demo) -> None:
    data, judge = demo
    judgements = {c: [judge.judge(r.opening, r.completion) for r in data.sft if r.sentiment == c]
                  for c in ("positive", "mixed", "negative")}
    assert statistics.mean(j.fluency for js in judgements.values() for j in js) > 0.95
    means = {c: statistics.mean(j.score for j in js) for c, js in judgements.items()}
    assert means["positive"] > means["mixed"] + 0.3 > means["negative"] + 0.6
    # Shuffling the words of a fluent completion destroys its fluency.
    review = data.sft[0]
    words = review.completion.rstrip(".").split()
    salad = " ".join(words[::-1]) + "."
    assert judge.judge(review.opening, salad).fluency < judge.judge(review.opening, review.completion).fluency


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.!", max_size=80), st.booleans())
def test_score_is_bounded_and_repeatable(text: str, ended: bool) -> None:
    judge = GoldJudge.from_texts(FLUENT)
    score = judge.score(PROMPT, text, ended)
    assert -5.5 <= score <= 1.0
    assert score == judge.score(PROMPT, text, ended)
