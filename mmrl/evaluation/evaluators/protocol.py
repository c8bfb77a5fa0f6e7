"""The protocol every trained downstream head shares: label fractions, seeds and minibatches.

Used by the linear probe and its fine-tune, detection and segmentation (linear and dense heads),
so that the same (fraction, seed) trains on the same rows in every evaluator:
- `stratified_subset`: the seeded, per-label-stratified subset of a label fraction;
  `fraction_tag` its metric-key tag ('10pct'); `subset_digest` the CRC32 recorded for each seed's
  subset ('.../seed_<s>/subset_crc32').
- `minibatch_order`: the seeded fixed-shape minibatches of every trained downstream head.
- `mean_and_std`, `aggregate_seeds`: the over-seeds summary.
"""
from __future__ import annotations

import math
import zlib
from typing import Mapping, Optional, Sequence

import numpy as np

from mmrl.evaluation.metrics import statistics as stats


def minibatch_order(rows: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] row indices: seeded permutations of `rows` (epochs) concatenated, so
  every minibatch has a fixed shape and rows repeat when there are few. Shared by every trained
  downstream head (fine-tuning here, detection, dense segmentation)."""
  rng = np.random.default_rng(seed)
  rows = np.asarray(rows)
  reps = math.ceil(steps * batch_size / max(len(rows), 1)) + 1
  order = np.concatenate([rng.permutation(rows) for _ in range(reps)])
  return order[:steps * batch_size].reshape(steps, batch_size)


def stratified_subset(positive: np.ndarray, known: np.ndarray, fraction: float, seed: int
                      ) -> np.ndarray:
  """Sorted row indices of a seeded, per-label-stratified `fraction` of N examples.

  For each label, ceil(fraction * count) of its positives and of its negatives (at least one of
  each class present) are taken in one seeded order shared by all labels; the subset is their
  union. The same seed gives the same subset, and a smaller fraction's subset is contained in a
  larger one's. Rows with no known label are added in the same order up to fraction * N.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction {fraction} must be in (0, 1] "
                     "(config.eval.linear_probe.fractions)")
  positive, known = np.asarray(positive, bool), np.asarray(known, bool)
  n = positive.shape[0]
  if fraction >= 1:
    return np.arange(n)
  order = np.random.default_rng(seed).permutation(n)
  take = np.zeros(n, bool)
  for k in range(positive.shape[1]):
    for cls in (positive[:, k] & known[:, k], ~positive[:, k] & known[:, k]):
      members = order[cls[order]]
      take[members[:max(1, math.ceil(fraction * len(members)))] if len(members) else []] = True
  unlabelled = order[~known.any(axis=1)[order]]
  room = max(0, math.ceil(fraction * n) - int(take.sum()))
  take[unlabelled[:room]] = True
  return np.flatnonzero(take)


def subset_digest(rows: np.ndarray) -> float:
  """CRC32 of the sorted row indices (as int64 bytes), a float that records which subset a run
  used (exact in float64): equal digests = equal subsets of the same split order."""
  data = np.sort(np.asarray(rows, np.int64)).tobytes()
  return float(zlib.crc32(data))


def fraction_tag(fraction: float) -> str:
  return f"{100 * fraction:g}pct"


def mean_and_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean and sample standard deviation (ddof=1; None with fewer than two values), from
  `mmrl.evaluation.metrics.statistics.describe`."""
  s = stats.describe(values)
  return s.mean, (s.std if s.n >= 2 else None)


def aggregate_seeds(runs: Sequence[Mapping[str, float]], tag: str,
                    headline: Sequence[str]) -> dict[str, float]:
  """One run's metrics per seed -> the mean of every key all runs share, '<key>_std' (sample
  std, ddof=1, with >= 2 runs) for keys whose last '/' part is in `headline`, and
  '<tag>/num_seeds'."""
  out = {f"{tag}/num_seeds": float(len(runs))}
  if not runs:
    return out
  for key in sorted(set(runs[0]).intersection(*runs[1:])):
    mean, std = mean_and_std([r[key] for r in runs])
    out[key] = mean
    if std is not None and key.rsplit("/", 1)[-1] in headline:
      out[f"{key}_std"] = std
  return out


__all__ = ["stratified_subset", "fraction_tag", "subset_digest", "minibatch_order", "mean_and_std",
           "aggregate_seeds"]
