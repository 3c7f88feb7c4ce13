import math

import pytest
import torch

from rlhf.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3, kl_penalty


def test_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # log r = log(0.25 / 0.5) = -log 2; r = 0.5
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(logp, ref).item() == pytest.approx((0.5 - 1) + math.log(2))
    assert kl_penalty(logp, ref, "k3").item() == kl_k3(logp, ref).item()


def test_all_estimators_zero_when_equal():
    x = torch.randn(3, 4)
    for name in ("k1", "k2", "k3"):
        assert (kl_penalty(x, x, name) == 0).all()


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def test_estimators_converge_to_exact_kl_between_categoricals():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()  # KL(p || q) ~= 0.2093
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)  # samples from the policy p
    logp, logq = p.log()[x], q.log()[x]
    k1, k2, k3 = kl_k1(logp, logq), kl_k2(logp, logq), kl_k3(logp, logq)
    assert k1.mean().item() == pytest.approx(exact, abs=5e-3)  # unbiased
    assert k3.mean().item() == pytest.approx(exact, abs=5e-3)  # unbiased
    assert k2.mean().item() == pytest.approx(exact, abs=0.05)  # biased, but close for nearby distributions
    assert (k3 >= 0).all() and (k2 >= 0).all()
    assert (k1 < 0).any()  # k1 is negative on some samples
    assert k3.std() < k1.std()  # lower variance


def test_k3_expected_value_exact():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    expected_k3 = (p * kl_k3(p.log(), q.log())).sum()  # E_{x~p}[k3] computed exactly
    torch.testing.assert_close(expected_k3, exact)


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    ctl.update(10.0, 256)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_direction_and_clip():
    up = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    up.update(6.6, n_steps=1000)  # error 0.1 -> mult 1 + 0.1 * 0.1 = 1.01
    assert up.value == pytest.approx(0.101)
    down = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    down.update(5.4, n_steps=1000)  # error -0.1 -> mult 0.99
    assert down.value == pytest.approx(0.099)
    clipped = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    clipped.update(600.0, n_steps=1000)  # error 99 clipped to 0.2 -> mult 1.02
    assert clipped.value == pytest.approx(0.102)
    clipped.update(torch.tensor(0.0), n_steps=1000)  # error -1 clipped to -0.2 -> mult 0.98
    assert clipped.value == pytest.approx(0.102 * 0.98)
    steady = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    steady.update(6.0, n_steps=1000)
    assert steady.value == pytest.approx(0.1)


def test_adaptive_controller_state_roundtrip_and_validation():
    a = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    a.update(9.0, 500)
    b = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, target=0.0, horizon=10)
