"""Statistics over seeds: mean, sample std, Student-t interval and the paired t-test.

This module owns every number a comparison table states about spread or significance, so that
"better" means the same thing everywhere (the method comparison, a leaderboard, docs):

  `describe(values)`            mean, sample std (ddof = 1), n, and the two-sided (1 - alpha)
                                Student-t interval of the mean (NaN std / interval for n < 2).
  `paired_t_test(a, b)`         the paired t-test of a[i] - b[i] over seeds i (two-sided): the mean
                                difference, its sample std and t-interval, t, df = n - 1, p.
  `verdict(test, ...)`          "better" / "worse" only when p < alpha; otherwise
                                "not distinguishable with N seeds".
  `t_cdf(t, df)`, `t_ppf(q, df)` the Student-t distribution (regularised incomplete beta by a
                                continued fraction; the quantile by bisection), pure Python.

Conventions: NaN inputs are dropped before anything is computed (a run that could not score a
metric is not a zero); pairs drop a seed when either side is NaN. The test assumes the per-seed
differences are roughly normal; with 3 seeds it has little power, which is the point of saying
"not distinguishable" rather than guessing. Nothing here imports scipy (tests compare to it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Summary:
  """mean, sample std (ddof 1), n and the t-interval [ci_low, ci_high] of the mean."""
  mean: float
  std: float
  n: int
  ci_low: float
  ci_high: float
  confidence: float = 1 - ALPHA

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PairedTest:
  """Paired t-test of a - b over seeds (two-sided). `p` is NaN when n < 2 or the differences
  have zero spread with zero mean; +0 / 1 conventions below (see `paired_t_test`)."""
  mean_diff: float
  std_diff: float
  n: int
  t: float
  df: int
  p: float
  ci_low: float
  ci_high: float
  confidence: float = 1 - ALPHA
  test: str = "paired t-test over seeds (two-sided)"

  def as_dict(self) -> dict[str, float | str]:
    return dataclasses.asdict(self)


def _clean(values: Sequence[float]) -> np.ndarray:
  x = np.asarray(values, np.float64).reshape(-1)
  return x[~np.isnan(x)]


# ---------------------------------------------------------------------------------------------
# Student-t distribution
# ---------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the regularised incomplete beta (modified Lentz)."""
  tiny, eps = 1e-300, 1e-15
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 400):
    m2 = 2 * m
    aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    h *= d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    delta = d * c
    h *= delta
    if abs(delta - 1.0) < eps:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc: x={x} is outside [0, 1]")
  if x in (0.0, 1.0):
    return x
  front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                   + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return front * _betacf(a, b, x) / a
  return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with `df` > 0 degrees of freedom."""
  if df <= 0:
    raise ValueError(f"t_cdf: df={df} must be > 0")
  if math.isinf(t):
    return 1.0 if t > 0 else 0.0
  tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
  return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
  """The q-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`)."""
  if not 0.0 < q < 1.0:
    raise ValueError(f"t_ppf: q={q} must be in (0, 1)")
  if q == 0.5:
    return 0.0
  lo, hi = -1.0, 1.0
  while t_cdf(lo, df) > q:
    lo *= 2.0
  while t_cdf(hi, df) < q:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if t_cdf(mid, df) < q:
      lo = mid
    else:
      hi = mid
    if hi - lo < 1e-12 * max(1.0, abs(mid)):
      break
  return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# Summaries and tests
# ---------------------------------------------------------------------------------------------


def describe(values: Sequence[float], *, alpha: float = ALPHA) -> Summary:
  """Mean, sample std (ddof 1) and the (1 - alpha) t-interval of the mean of `values` (NaNs
  dropped). n = 0: everything NaN; n = 1: std and interval NaN."""
  x = _clean(values)
  n = int(x.size)
  nan = float("nan")
  if n == 0:
    return Summary(nan, nan, 0, nan, nan, 1 - alpha)
  mean = float(np.mean(x))
  if n < 2:
    return Summary(mean, nan, 1, nan, nan, 1 - alpha)
  std = float(np.std(x, ddof=1))
  half = t_ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n)
  return Summary(mean, std, n, mean - half, mean + half, 1 - alpha)


def paired_t_test(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA
                  ) -> PairedTest:
  """Two-sided paired t-test of a[i] - b[i] (i = seed; a pair with a NaN is dropped).

  Zero spread: identical differences d give p = 0 when their mean is non-zero (the difference
  is the same on every seed) and p = 1 when it is zero. n < 2: t and p are NaN.
  """
  a = np.asarray(a, np.float64).reshape(-1)
  b = np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_t_test: a has {a.size} values and b {b.size}; pair them by seed")
  d = (a - b)[~(np.isnan(a) | np.isnan(b))]
  s = describe(d, alpha=alpha)
  nan = float("nan")
  if s.n < 2:
    return PairedTest(s.mean, nan, s.n, nan, max(s.n - 1, 0), nan, nan, nan, 1 - alpha)
  if s.std <= 1e-15 * max(1.0, abs(s.mean)):
    t = math.copysign(math.inf, s.mean) if s.mean != 0 else 0.0
    p = 0.0 if s.mean != 0 else 1.0
  else:
    t = s.mean / (s.std / math.sqrt(s.n))
    p = 2.0 * (1.0 - t_cdf(abs(t), s.n - 1))
  return PairedTest(s.mean, s.std, s.n, float(t), s.n - 1, float(min(max(p, 0.0), 1.0)),
                    s.ci_low, s.ci_high, 1 - alpha)


def verdict(test: PairedTest, *, alpha: float = ALPHA, higher_is_better: bool = True) -> str:
  """'better' / 'worse' (a relative to b) when test.p < alpha, else
  'not distinguishable with N seeds'."""
  if test.n < 2 or math.isnan(test.p) or test.p >= alpha:
    return f"not distinguishable with {test.n} seed{'s' if test.n != 1 else ''}"
  up = test.mean_diff > 0
  return "better" if up == higher_is_better else "worse"


def format_summary(s: Summary, digits: int = 3) -> str:
  """'mean ± std [lo, hi]' (or 'mean (n=1)' / '–')."""
  if s.n == 0:
    return "–"
  if s.n < 2:
    return f"{s.mean:.{digits}f} (n=1)"
  return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def format_test(test: PairedTest, *, digits: int = 3, alpha: float = ALPHA,
                higher_is_better: bool = True, name: Optional[str] = None) -> str:
  """'+0.120 (95% CI [0.05, 0.19], paired t-test p=0.012, n=3): better'."""
  head = f"{name} " if name else ""
  if test.n < 2:
    return f"{head}{test.mean_diff:+.{digits}f} ({verdict(test, alpha=alpha)})"
  return (f"{head}{test.mean_diff:+.{digits}f} ({round(100 * test.confidence)}% CI "
          f"[{test.ci_low:+.{digits}f}, {test.ci_high:+.{digits}f}], paired t-test "
          f"p={test.p:.3g}, n={test.n}): "
          f"{verdict(test, alpha=alpha, higher_is_better=higher_is_better)}")


__all__ = ["ALPHA", "Summary", "PairedTest", "describe", "paired_t_test", "verdict", "t_cdf",
           "t_ppf", "betainc", "format_summary", "format_test"]
