import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.masking import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])  # valid: 1, 2, 4


def test_masked_sum_and_mean_by_hand():
    assert masked_sum(X, M).item() == 7.0
    assert masked_mean(X, M).item() == pytest.approx(7.0 / 3)
    torch.testing.assert_close(masked_sum(X, M, dim=1), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_var_by_hand():
    # values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(42 / 27)
    assert masked_var(X, M).item() == pytest.approx(42 / 18)


def test_bool_and_float_masks_agree():
    assert masked_mean(X, M.bool()).item() == masked_mean(X, M.float()).item()


def test_nan_and_inf_at_padding_do_not_leak():
    dirty = X.clone()
    dirty[0, 2], dirty[1, 1] = float("nan"), float("inf")
    assert masked_mean(dirty, M).item() == pytest.approx(7.0 / 3)
    assert masked_var(dirty, M).item() == pytest.approx(42 / 18)
    assert torch.isfinite(masked_whiten(dirty, M)[M.bool()]).all()


def test_empty_mask_mean_is_zero_and_var_raises():
    empty = torch.zeros_like(M)
    assert masked_mean(X, empty).item() == 0.0
    with pytest.raises(ValueError):
        masked_var(X, empty)
    with pytest.raises(ValueError):
        masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_whiten_shift_mean_false_keeps_mean():
    out = masked_whiten(X, M, shift_mean=False)
    assert masked_mean(out, M).item() == pytest.approx(7.0 / 3, abs=1e-5)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=12, max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_whiten_property_mean0_var1(values, mask_bits):
    x = torch.tensor(values, dtype=torch.float64).reshape(3, 4)  # (12,) -> (B=3, T=4)
    mask = torch.tensor(mask_bits).reshape(3, 4)  # (12,) -> (3, 4)
    mask[0, :2] = True  # at least two valid entries
    if masked_var(x, mask).item() < 1e-3:  # (near-)constant input: eps dominates, variance is not 1
        return
    out = masked_whiten(x, mask)
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(out, mask).item() == pytest.approx(1.0, rel=1e-4)
