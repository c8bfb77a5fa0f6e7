"""Classification metrics: ROC AUC (Mann-Whitney, ties count 1/2; pure numpy, no sklearn).

Shared by the zero-shot evaluator and the linear probe (mmrl/evaluation/evaluators).
"""
from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC (ties count 1/2); NaN when only one class is present."""
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels, bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s), np.float64)
  sorted_s = s[order]
  i = 0
  while i < len(s):  # average ranks over ties
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


__all__ = ["roc_auc"]
