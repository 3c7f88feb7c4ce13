"""Pairs, Elo and merging, against numbers computed by hand."""
from __future__ import annotations

import math
import random

import pytest

from rlhf.preferences import Pair, Ranking, elo_scores, item_key, merge_annotations, ranking_to_pairs
from rlhf.preferences.elo import expected_score


def rk(responses, ranks, annotator=None, prompt="p", line=1) -> Ranking:
    return Ranking(prompt, tuple(responses), tuple(ranks), annotator, "item", "test", line, {})


# ---- pairs --------------------------------------------------------------------------------------------

def test_pairs_of_a_three_ranking_by_hand():
    pairs = ranking_to_pairs(rk("abc", (1, 0, 2)))  # b > a > c
    assert pairs == [Pair("p", "b", "a", 1, "item"), Pair("p", "a", "c", 1, "item"), Pair("p", "b", "c", 2, "item")]


def test_all_k_choose_2_pairs_and_ties_give_none():
    assert len(ranking_to_pairs(rk("abcde", (0, 1, 2, 3, 4)))) == 10
    pairs = ranking_to_pairs(rk("abcd", (0, 1, 1, 2)))  # b and c tie: 6 - 1 pairs
    assert len(pairs) == 5
    assert ("b", "c") not in {(p.chosen, p.rejected) for p in pairs}
    assert ranking_to_pairs(rk("ab", (0, 0))) == []
    assert Pair("p", "a", "b", 2, "g").to_dict() == {"group": "g", "prompt": "p", "chosen": "a", "rejected": "b",
                                                      "margin": 2}


def test_item_key_ignores_response_order():
    assert item_key("p", ["a", "b"]) == item_key("p", ["b", "a"]) != item_key("q", ["a", "b"])


# ---- Elo ----------------------------------------------------------------------------------------------

def _elo(rankings, **kw) -> dict[str, float]:
    return {s.response: s.elo for s in elo_scores(rankings, **kw)}


def test_elo_one_round_by_hand():
    # A > B > C, every response at 1000, all expected scores 0.5, K = 32:
    # A: 32 * ((1 - .5) + (1 - .5)) = +32; B: 32 * ((0 - .5) + (1 - .5)) = 0; C: -32.
    scores = elo_scores([rk("ABC", (0, 1, 2))], k_factor=32, initial=1000)
    assert [(s.response, s.elo, s.score) for s in scores] == [("A", 1032.0, 0.08), ("B", 1000.0, 0.0),
                                                              ("C", 968.0, -0.08)]


def test_elo_two_rounds_by_hand():
    # round 2 from (1032, 1000, 968): E(A, B) = 1 / (1 + 10**(-32/400)) = 1 / 1.8317638 = 0.5459219,
    # E(A, C) = 1 / (1 + 10**(-64/400)) = 1 / 1.6918310 = 0.5910756.
    # A: 1032 + 32 * (0.4540781 + 0.4089244) = 1059.61608; B: 1000 + 32 * (-0.5459219 + 0.5459219) = 1000;
    # C: 968 - 32 * (0.5910756 + 0.4540781) = 940.38392.
    elo = _elo([rk("ABC", (0, 1, 2))], n_rounds=2)
    assert elo["A"] == pytest.approx(1059.61608, abs=1e-4)
    assert elo["B"] == pytest.approx(1000.0, abs=1e-9)
    assert elo["C"] == pytest.approx(940.38392, abs=1e-4)
    assert expected_score(1032, 1000) == pytest.approx(0.5459219, abs=1e-7)


def test_elo_ties_score_half_each():
    elo = _elo([rk("AB", (0, 0))])
    assert elo == {"A": 1000.0, "B": 1000.0}
    elo = _elo([rk("ABC", (0, 0, 1))], k_factor=10, initial=1500)  # A: .5-.5 + 1-.5 = .5 -> +5
    assert elo == {"A": 1505.0, "B": 1505.0, "C": 1490.0}


def test_elo_is_independent_of_input_order():
    rng = random.Random(7)
    prompts = [f"prompt {i}" for i in range(6)]
    rankings = []
    for i in range(60):
        prompt = prompts[i % 6]
        resp = [f"{prompt} answer {j}" for j in range(4)]
        ranks = [rng.randrange(3) for _ in resp]
        rankings.append(rk(resp, ranks, annotator=f"a{i % 5}", prompt=prompt, line=i))

    def table(rs):
        return {(s.group, s.response): (s.elo, s.score) for s in elo_scores(rs, n_rounds=5)}

    reference = table(rankings)
    for seed in range(5):
        shuffled = rankings[:]
        random.Random(seed).shuffle(shuffled)
        # also present each record's responses in another order
        shuffled = [rk(*zip(*random.Random(seed + 100 + i).sample(list(zip(r.responses, r.ranks)), 4)),
                       annotator=r.annotator, prompt=r.prompt) for i, r in enumerate(shuffled)]
        assert table(shuffled) == reference  # bit-identical, not just close


def test_elo_sequential_pass_would_depend_on_order():
    """Why the batch update: the textbook one-game-at-a-time pass gives different numbers per order."""
    def sequential(games):
        r = {"A": 1000.0, "B": 1000.0, "C": 1000.0}
        for a, b, s in games:
            e = expected_score(r[a], r[b])
            r[a], r[b] = r[a] + 32 * (s - e), r[b] + 32 * ((1 - s) - (1 - e))
        return r
    games = [("A", "B", 1.0), ("B", "C", 1.0), ("A", "C", 1.0)]
    assert sequential(games) != sequential(games[::-1])
    batch = _elo([rk("ABC", (0, 1, 2))])
    assert sum(batch.values()) == pytest.approx(3000)


# ---- merge and agreement ------------------------------------------------------------------------------

def test_two_annotators_agree_on_5_of_6_pairs():
    a = rk("abcd", (0, 1, 2, 3), annotator="ann1")
    b = rk("abcd", (0, 1, 3, 2), annotator="ann2")  # swaps c and d
    merged, agreement = merge_annotations([a, b])
    assert agreement.pairwise == pytest.approx(5 / 6)
    assert agreement.kendall_tau == pytest.approx((5 - 1) / 6)
    assert (agreement.items, agreement.annotator_pairs, agreement.comparisons) == (1, 1, 6)
    (m,) = merged
    assert m.meta["mean_rank"] == [0.0, 1.0, 2.5, 2.5]
    assert m.ranks == (0, 1, 2, 2)  # c and d tie after merging
    assert m.item_id == item_key("p", "abcd")
    assert m.meta["annotators"] == ["ann1", "ann2"] and len(m.meta["annotations"]) == 2


def test_merge_by_mean_rank_with_ties_and_response_order():
    a = rk("abc", (0, 0, 1), annotator="x")         # a = b > c
    b = rk("cab", (2, 0, 1), annotator="y")         # a > b > c, other response order
    c = rk("abc", (1, 0, 2), annotator="z")         # b > a > c
    merged, agreement = merge_annotations([a, b, c])
    (m,) = merged
    assert m.responses == ("a", "b", "c")
    # fractional ranks: x (.5, .5, 2), y (0, 1, 2), z (1, 0, 2) -> mean (.5, .5, 2)
    assert m.meta["mean_rank"] == [0.5, 0.5, 2.0] and m.ranks == (0, 0, 1)
    assert m.meta["annotations"][1]["ranks"] == [0, 1, 2]
    # x-y: (a,b) tie vs a>b disagree, 2/3; x-z: 2/3; y-z: (a,b) disagree, 2/3 -> 6/9
    assert agreement.pairwise == pytest.approx(6 / 9)
    # tau-b: x-y = 2/sqrt(2*3); x-z = 2/sqrt(6); y-z = (2 - 1)/3
    assert agreement.kendall_tau == pytest.approx((2 / math.sqrt(6) * 2 + 1 / 3) / 3)


def test_single_annotator_items_and_self_pairs_are_excluded_from_agreement():
    merged, agreement = merge_annotations([rk("ab", (0, 1), "u"), rk("cd", (0, 1), "u", prompt="q"),
                                           rk("cd", (1, 0), "u", prompt="q")])
    assert len(merged) == 2
    assert merged[0].ranks == (0, 1) and merged[0].annotator == "u"
    assert agreement.pairwise is None and agreement.kendall_tau is None and agreement.items == 0


def test_all_tie_rankings_agree_but_have_no_tau():
    _, agreement = merge_annotations([rk("ab", (0, 0), "u"), rk("ab", (0, 0), "v")])
    assert agreement.pairwise == 1.0 and agreement.kendall_tau is None
