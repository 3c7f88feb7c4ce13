"""The benchmark report's statistics (benchmarks/tables.py): the interval on a difference of mean gains."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from tables import welch_interval  # noqa: E402

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("a, b", [
    ([0.245, 0.274, 0.273, 0.283, 0.269], [0.267, 0.263, 0.289, 0.249, 0.247]),   # overlapping: 0 inside
    ([0.30, 0.31, 0.32, 0.305], [0.20, 0.21, 0.19, 0.205, 0.22]),                  # clearly apart: 0 outside
    ([1.0, 2.0, 4.0], [0.5, 0.7, 0.6, 0.9, 0.4, 0.8]),                              # unequal sizes and spreads
])
def test_welch_interval_excludes_zero_exactly_when_welchs_test_rejects(a, b):
    d, lo, hi = welch_interval(a, b)
    assert d == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
    assert lo < d < hi and (hi - d) == pytest.approx(d - lo)
    p = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert (lo > 0 or hi < 0) == (p < 0.05)
    # The same interval as scipy's own Welch confidence interval.
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)


def test_welch_interval_wider_at_higher_level():
    a, b = [1.0, 1.2, 0.9, 1.1], [0.8, 1.0, 0.95]
    _, lo95, hi95 = welch_interval(a, b, 0.95)
    _, lo99, hi99 = welch_interval(a, b, 0.99)
    assert lo99 < lo95 and hi99 > hi95
