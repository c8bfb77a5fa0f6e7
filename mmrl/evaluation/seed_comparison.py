"""Paired comparison of two evaluations over the same seeds (e.g. pretrained vs random init).

Evaluators that run several seeds report each seed's value as '<tag>/seed_<s>/<metric>' (detection,
fine-tuned classification). Seed s means the same training subset and head initialisation in
both evaluations, so the per-seed differences are paired.

- `paired_t_test`: mean difference, its sample std (ddof=1), t and the two-sided p-value
  (Student's t with n - 1 degrees of freedom; the CDF from jax.scipy's regularised incomplete
  beta, so no scipy dependency).
- `compare`: for every '<tag>/<metric>' with per-seed values in both metric dicts: both means,
  sample stds, the seed count, the paired test, and whether the mean difference exceeds the
  larger of the two seed spreads.
To be folded into the shared statistics module (mmrl/evaluation/statistics.py) when it lands.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np

_SEED_KEY = re.compile(r"^(?P<tag>.+)/seed_(?P<seed>\d+)/(?P<metric>[^/]+)$")


def paired_t_test(a, b) -> dict[str, float]:
  """a - b over pairs: {'mean_diff', 'std_diff' (ddof=1), 't', 'p', 'n'}; t and p are NaN for
  n < 2, and t = +-inf, p = 0 when every difference is the same non-zero number."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = len(d)
  out = {"mean_diff": float(d.mean()) if n else float("nan"), "n": float(n),
         "std_diff": float("nan"), "t": float("nan"), "p": float("nan")}
  if n < 2:
    return out
  sd = float(d.std(ddof=1))
  out["std_diff"] = sd
  if sd == 0:
    out["t"] = math.copysign(math.inf, out["mean_diff"]) if out["mean_diff"] else float("nan")
    out["p"] = 0.0 if out["mean_diff"] else 1.0
    return out
  t = out["mean_diff"] / (sd / math.sqrt(n))
  df = n - 1
  from jax.scipy.special import betainc  # pylint: disable=g-import-not-at-top
  out["t"] = t
  out["p"] = float(betainc(df / 2.0, 0.5, df / (df + t * t)))
  return out


def per_seed(metrics: Mapping[str, float]) -> dict[tuple[str, str], dict[int, float]]:
  """{(tag, metric): {seed: value}} from '<tag>/seed_<s>/<metric>' keys."""
  out: dict[tuple[str, str], dict[int, float]] = {}
  for key, value in metrics.items():
    m = _SEED_KEY.match(key)
    if m and value is not None:
      out.setdefault((m["tag"], m["metric"]), {})[int(m["seed"])] = float(value)
  return out


def compare(a: Mapping[str, float], b: Mapping[str, float]) -> list[dict[str, object]]:
  """One row per (tag, metric) present in both, over the seeds both have (see module doc)."""
  sa, sb = per_seed(a), per_seed(b)
  rows = []
  for key in sorted(set(sa) & set(sb)):
    seeds = sorted(set(sa[key]) & set(sb[key]))
    va = [sa[key][s] for s in seeds]
    vb = [sb[key][s] for s in seeds]
    test = paired_t_test(va, vb)
    std_a = float(np.std(va, ddof=1)) if len(va) >= 2 else float("nan")
    std_b = float(np.std(vb, ddof=1)) if len(vb) >= 2 else float("nan")
    rows.append({"tag": key[0], "metric": key[1], "n": len(seeds),
                 "mean_a": float(np.mean(va)), "std_a": std_a,
                 "mean_b": float(np.mean(vb)), "std_b": std_b,
                 **{k: v for k, v in test.items() if k != "n"},
                 "beyond_spread": bool(test["mean_diff"] > np.nanmax([std_a, std_b, 0.0]))})
  return rows


__all__ = ["paired_t_test", "per_seed", "compare"]
