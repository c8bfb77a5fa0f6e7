"""mmrl.evaluation.metrics.statistics against scipy.stats / numpy references."""
import math

import numpy as np
import pytest

from mmrl.evaluation.metrics import statistics as st

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy (a jax dependency) is the reference")


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30])
def test_t_cdf_and_quantile_match_scipy(df):
  for t in (-6.0, -2.1, -0.3, 0.0, 0.7, 1.9, 12.0):
    assert st.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-10)
  for q in (0.005, 0.025, 0.3, 0.5, 0.975, 0.999):
    assert st.t_ppf(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-8, abs=1e-9)


def test_describe_uses_sample_std_and_the_t_interval():
  x = [0.21, 0.35, 0.30]
  s = st.describe(x)
  assert s.mean == pytest.approx(np.mean(x))
  assert s.std == pytest.approx(np.std(x, ddof=1))
  lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
  assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_describe_drops_nans_and_has_no_spread_with_one_value():
  s = st.describe([0.4, float("nan")])
  assert s.n == 1 and s.mean == 0.4 and math.isnan(s.std) and math.isnan(s.ci_low)
  assert st.describe([]).n == 0


def test_paired_t_test_matches_scipy_ttest_rel():
  rng = np.random.default_rng(0)
  for n in (2, 3, 5, 10):
    a = rng.normal(0.5, 0.1, n)
    b = a - rng.normal(0.05, 0.08, n)
    got = st.paired_t_test(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert got.t == pytest.approx(ref.statistic, rel=1e-9)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    assert got.df == n - 1
    assert got.mean_diff == pytest.approx(np.mean(a - b))


def test_verdict_calls_a_difference_only_when_the_paired_test_says_so():
  big = st.paired_t_test([0.50, 0.52, 0.55], [0.10, 0.11, 0.12])
  assert big.p < 0.05 and st.verdict(big) == "better"
  assert st.verdict(st.paired_t_test([0.10, 0.11, 0.12], [0.50, 0.52, 0.55])) == "worse"
  noisy = st.paired_t_test([0.3, 0.1, 0.5], [0.2, 0.3, 0.2])
  assert st.verdict(noisy) == "not distinguishable with 3 seeds"
  assert st.verdict(st.paired_t_test([0.9], [0.1])) == "not distinguishable with 1 seed"


def test_lower_is_better_flips_the_verdict():
  t = st.paired_t_test([1.0, 1.1, 1.2], [2.0, 2.1, 2.25])
  assert st.verdict(t, higher_is_better=False) == "better"


def test_identical_nonzero_differences_are_significant_and_zero_differences_are_not():
  assert st.paired_t_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4]).p == 0.0
  assert st.paired_t_test([0.3, 0.4], [0.3, 0.4]).p == 1.0


def test_paired_test_refuses_unpaired_lengths():
  with pytest.raises(ValueError, match="pair them by seed"):
    st.paired_t_test([1.0, 2.0], [1.0])


def test_formatting_states_the_test_and_interval():
  text = st.format_test(st.paired_t_test([0.50, 0.52, 0.55], [0.10, 0.11, 0.12]))
  assert "paired t-test" in text and "95% CI" in text and text.endswith("better")
  assert st.format_summary(st.describe([1.0, 2.0, 3.0])).startswith("2.000 ± 1.000 [")
