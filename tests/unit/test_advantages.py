import pytest
import torch

from rlhf.advantages import gae, whiten_advantages
from rlhf.masking import masked_mean, masked_var


def test_gae_design_example():
    # DESIGN.md: values 0, gamma 1, lam 0.5, rewards [0, 0, 1] -> [0.25, 0.5, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.zeros(1, 3)
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.5, 1.0]]))
    torch.testing.assert_close(ret, adv)  # returns = advantages + values, values 0


def test_gae_with_values_by_hand():
    # gamma 0.9, lam 0.5, r = [1, 2], V = [0.5, 1.0], V after the end = 0
    # delta_1 = 2 - 1 = 1, A_1 = 1
    # delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4, A_0 = 1.4 + 0.45 * 1 = 1.85
    adv, ret = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.85, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.35, 2.0]]))


def _loop_gae(rewards, values, mask, gamma, lam):
    """Reference: plain Python per row, over the valid prefix only, V after the last valid token is 0."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


def _ragged(B, T, gen):
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T  # one full row
    return (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()  # (B, T) prefix mask


def test_gae_vectorised_matches_loop_float64():
    gen = torch.Generator().manual_seed(0)
    B, T = 7, 11
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = _ragged(B, T, gen)
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    ref_adv, ref_ret = _loop_gae(rewards, values, mask, 0.97, 0.9)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)


def test_gae_padding_invariance():
    gen = torch.Generator().manual_seed(1)
    B, T = 5, 9
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = _ragged(B, T, gen)
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    pad = mask == 0
    dirty_r = torch.where(pad, torch.full_like(rewards, 1e6), rewards)
    dirty_v = torch.where(pad, torch.full_like(values, float("nan")), values)
    adv2, ret2 = gae(dirty_r, dirty_v, mask, 1.0, 0.95)
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)
    assert (adv2[pad] == 0).all() and (ret2[pad] == 0).all()


def test_whiten_advantages_zero_on_padding_and_normalised():
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = _ragged(4, 6, gen)
    out = whiten_advantages(adv, mask)
    assert (out[mask == 0] == 0).all()
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(out, mask).item() == pytest.approx(1.0, rel=1e-6)
