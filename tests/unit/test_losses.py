import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.losses import pairwise_loss, ppo_policy_loss, ppo_value_loss, regression_loss, sft_loss


def test_pairwise_loss_design_example():
    loss = pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]))
    assert round(loss.item(), 4) == 0.3133  # -log sigmoid(1) = log(1 + e^-1)


def test_pairwise_loss_margin_and_mean():
    loss = pairwise_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), margin=torch.tensor([1.0, 1.0]))
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2  # diffs 0 and 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    big = pairwise_loss(torch.tensor([1000.0]), torch.tensor([-1000.0]))
    assert torch.isfinite(big) and big.item() == pytest.approx(0.0, abs=1e-6)


def test_regression_loss():
    assert regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    pred = torch.tensor([[1.0, 2.0, 99.0]])
    target = torch.tensor([[0.0, 0.0, 0.0]])
    assert regression_loss(pred, target, torch.tensor([[1, 1, 0]])).item() == pytest.approx(2.5)


def _lp(ratio):
    return torch.tensor([[math.log(ratio)]])


def test_policy_loss_design_example():
    # advantage 1, ratio 1.5, cliprange 0.2: min(1.5, 1.2) = 1.2, loss = -1.2
    loss, clipfrac, approxkl = ppo_policy_loss(_lp(1.5), _lp(1.0), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert clipfrac.item() == 1.0
    assert approxkl.item() == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_policy_loss_other_cases_by_hand():
    one = torch.ones(1, 1)
    # negative advantage, ratio 0.5 -> min(-0.5, -0.8) = -0.8 (clipped, pessimistic) -> loss 0.8
    loss, clipfrac, _ = ppo_policy_loss(_lp(0.5), _lp(1.0), -one, one, 0.2)
    assert loss.item() == pytest.approx(0.8) and clipfrac.item() == 1.0
    # negative advantage, ratio 1.5 -> min(-1.5, -1.2) = -1.5 (unclipped) -> loss 1.5
    loss, clipfrac, _ = ppo_policy_loss(_lp(1.5), _lp(1.0), -one, one, 0.2)
    assert loss.item() == pytest.approx(1.5) and clipfrac.item() == 0.0
    # inside the trust region: plain -A * ratio
    loss, clipfrac, _ = ppo_policy_loss(_lp(1.1), _lp(1.0), 2 * one, one, 0.2)
    assert loss.item() == pytest.approx(-2.2) and clipfrac.item() == 0.0


def test_policy_loss_gradient_zero_when_clipped():
    logprobs = _lp(1.5).requires_grad_()
    loss, _, _ = ppo_policy_loss(logprobs, _lp(1.0), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_policy_loss_padding_invariance_and_finite_grads():
    gen = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(3, 5, generator=gen)
    old = logprobs + 0.1 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    pad = mask == 0
    clean = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    dirty_lp = torch.where(pad, torch.full_like(logprobs, 50.0), logprobs).requires_grad_()
    dirty_adv = torch.where(pad, torch.full_like(adv, float("nan")), adv)
    dirty = ppo_policy_loss(dirty_lp, torch.where(pad, -1e4, old), dirty_adv, mask, 0.2)
    for a, b in zip(clean, dirty):
        torch.testing.assert_close(a, b)
    dirty[0].backward()
    assert torch.isfinite(dirty_lp.grad).all() and (dirty_lp.grad[pad] == 0).all()


def test_value_loss_by_hand():
    one = torch.ones(1, 1)
    # old 0, new 1, return 1, c 0.2: unclipped err 0, clipped value 0.2 -> err 0.64; max = 0.64, loss 0.32
    loss, vf_clipfrac = ppo_value_loss(one, 0 * one, one, one, 0.2)
    assert loss.item() == pytest.approx(0.32) and vf_clipfrac.item() == 1.0
    # old 0, new 1, return 2: unclipped 1, clipped (0.2 - 2)^2 = 3.24 -> 1.62
    loss, vf_clipfrac = ppo_value_loss(one, 0 * one, 2 * one, one, 0.2)
    assert loss.item() == pytest.approx(1.62) and vf_clipfrac.item() == 1.0
    # old 0, new 1, return -1: unclipped 4, clipped 1.44 -> max is unclipped, 2.0, no clip counted
    loss, vf_clipfrac = ppo_value_loss(one, 0 * one, -one, one, 0.2)
    assert loss.item() == pytest.approx(2.0) and vf_clipfrac.item() == 0.0
    # inside the clip range: plain 0.5 * (0.1 - 0.5)^2 = 0.08
    loss, vf_clipfrac = ppo_value_loss(0.1 * one, 0 * one, 0.5 * one, one, 0.2)
    assert loss.item() == pytest.approx(0.08) and vf_clipfrac.item() == 0.0


def test_value_loss_masked_mean_and_padding():
    values = torch.tensor([[1.0, 0.1, float("nan")]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 0.5, float("inf")]])
    loss, _ = ppo_value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.16) / 2)
    loss.backward()
    assert torch.isfinite(values.grad).all()


def test_sft_loss_matches_cross_entropy_on_response_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    # reference: HF-style shift, -100 on positions outside the mask, token mean
    ref_labels = torch.where(loss_mask.bool(), labels, -100)[:, 1:]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ref_labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(sft_loss(logits, labels, loss_mask), ref)
    # labels outside the mask may be -100 or garbage; logits predicting them are irrelevant
    dirty_labels = torch.where(loss_mask.bool(), labels, -100)
    dirty_logits = logits.clone()
    dirty_logits[0, 4] = 1e4  # last position predicts nothing
    dirty_logits[1, 3] = -1e4  # predicts a masked label
    torch.testing.assert_close(sft_loss(dirty_logits, dirty_labels, loss_mask), ref)


def test_sft_loss_by_hand_uniform():
    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: CE = log 4 per token
    assert sft_loss(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]])).item() == pytest.approx(math.log(4))
