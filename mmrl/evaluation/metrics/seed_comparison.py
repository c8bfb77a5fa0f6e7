"""Paired comparison of two evaluations over the same seeds (e.g. pretrained vs random init).

Evaluators that run several seeds report each seed's value as '<tag>/seed_<s>/<metric>' (detection,
fine-tuned classification). Seed s means the same training subset and head initialisation in
both evaluations, so the per-seed differences are paired.

- `per_seed`: {(tag, metric): {seed: value}} from those keys.
- `compare`: for every '<tag>/<metric>' with per-seed values in both metric dicts: both means,
  sample stds, the seed count, the paired t-test and its verdict (all from
  `mmrl.evaluation.metrics.statistics`, the one module that owns spread and significance), and whether
  the mean difference exceeds the larger of the two seed spreads.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from mmrl.evaluation.metrics import statistics as stats

_SEED_KEY = re.compile(r"^(?P<tag>.+)/seed_(?P<seed>\d+)/(?P<metric>[^/]+)$")


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
    test = stats.paired_t_test(va, vb)
    sa_, sb_ = stats.describe(va), stats.describe(vb)
    rows.append({"tag": key[0], "metric": key[1], "n": len(seeds),
                 "mean_a": sa_.mean, "std_a": sa_.std, "mean_b": sb_.mean, "std_b": sb_.std,
                 "mean_diff": test.mean_diff, "std_diff": test.std_diff, "t": test.t,
                 "p": test.p, "verdict": stats.verdict(test),
                 "beyond_spread": bool(test.mean_diff > np.nanmax([sa_.std, sb_.std, 0.0]))})
  return rows


__all__ = ["per_seed", "compare"]
