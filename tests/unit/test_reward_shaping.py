import pytest
import torch

from rlhf.kl import kl_k3
from rlhf.reward_shaping import apply_missing_eos_penalty, last_token_index, shape_rewards

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # ragged, one empty row


def test_score_lands_on_last_valid_token_of_each_row():
    zeros = torch.zeros(4, 4)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rewards, non_score, kl = shape_rewards(scores, zeros, zeros, MASK, kl_coef=0.1, estimator="k1")
    expected = torch.tensor([[0, 0, 0, 1.0], [0, 2.0, 0, 0], [0, 0, 0, 0], [4.0, 0, 0, 0]])
    torch.testing.assert_close(rewards, expected)  # the empty row gets nothing and does not crash
    assert (non_score == 0).all() and (kl == 0).all()


def test_kl_penalty_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    rewards, non_score, kl = shape_rewards(torch.tensor([10.0]), logprobs, ref_logprobs, mask, 0.2, "k1")
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.1, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 10.0, 0.0]]))


def test_estimator_is_used_and_padding_ignored():
    gen = torch.Generator().manual_seed(0)
    logprobs, ref_logprobs = -torch.rand(4, 4, generator=gen), -torch.rand(4, 4, generator=gen)
    _, _, kl = shape_rewards(torch.zeros(4), logprobs, ref_logprobs, MASK, 0.1, "k3")
    valid = MASK.bool()
    torch.testing.assert_close(kl[valid], kl_k3(logprobs, ref_logprobs)[valid])
    dirty = torch.where(valid, logprobs, torch.full_like(logprobs, float("-inf")))
    out_clean = shape_rewards(torch.ones(4), logprobs, ref_logprobs, MASK, 0.1, "k3")
    out_dirty = shape_rewards(torch.ones(4), dirty, ref_logprobs, MASK, 0.1, "k3")
    for a, b in zip(out_clean, out_dirty):
        torch.testing.assert_close(a, b)
        assert (a[~valid] == 0).all()


def test_last_token_index():
    index, has = last_token_index(MASK)
    assert index.tolist() == [3, 1, 0, 0] and has.tolist() == [True, True, False, True]


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 1.0, -2.0])
    ended = torch.tensor([True, False, False])
    torch.testing.assert_close(apply_missing_eos_penalty(scores, ended, 1.5), torch.tensor([1.0, -0.5, -3.5]))
    assert apply_missing_eos_penalty(scores, ended, None) is scores
    assert scores.tolist() == [1.0, 1.0, -2.0]  # not in place

