"""Bilinear upsampling of grid maps (numpy, float64): the one resize every map reader shares.

It lives in mmrl/ops, below mmrl/viz and mmrl/evaluation in the import layers (setup.cfg), because
both need the same pixels: the heat maps of mmrl/viz draw a sentence map exactly as the pointing
game of mmrl/evaluation/metrics scores it, and viz may not import evaluation.
"""
from __future__ import annotations

import numpy as np


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bilinear (half-pixel centres, clamped) source indices lo/hi and weight of hi."""
  x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  x = np.clip(x, 0.0, n_in - 1)
  lo = np.floor(x).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, x - lo


def upsample_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """maps f[..., gh, gw] -> f64[..., height, width] (bilinear, half-pixel centres, clamped)."""
  maps = np.asarray(maps, np.float64)
  gh, gw = maps.shape[-2:]
  r0, r1, rw = _axis_weights(gh, height)
  c0, c1, cw = _axis_weights(gw, width)
  rows = maps[..., r0, :] * (1 - rw)[:, None] + maps[..., r1, :] * rw[:, None]
  return rows[..., c0] * (1 - cw) + rows[..., c1] * cw


__all__ = ["upsample_bilinear"]
