"""Localisation metrics: pointing game and IoU of sentence maps against ground-truth masks.

Pure numpy, masked, vectorised; used by the localisation and grounding evaluators
(mmrl/evaluation/evaluators) and by the oracle calibration of experiments/.

Metrics, for N (map, ground truth) pairs, each map f[gh,gw] upsampled bilinearly (half-pixel
centres, edges clamped; `mmrl.ops.resize.upsample_bilinear`) to the image's H x W:
  pointing game  1 when the maximum pixel of the upsampled map lies inside the ground truth
                 (the centre of a tied maximum, `tie_centre`: a flat peak is pointed at in its
                 middle, a constant map at the image centre).
  IoU            the map min-max normalised to [0, 1] and thresholded at a fixed value
                 (`IOU_THRESHOLD` = 0.5), against the ground truth; a constant map predicts the
                 whole image (it carries no location), scoring IoU = the ground-truth area.
  gt_area        the mean ground-truth area fraction: the chance level of the pointing game (a
                 uniformly random point) and the IoU of predicting the whole image.
A box (normalised xmin, ymin, xmax, ymax) covers the pixels whose centres lie inside it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mmrl.ops.resize import upsample_bilinear

IOU_THRESHOLD = 0.5


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Union of normalised boxes f[K,4] (xmin, ymin, xmax, ymax) as bool[height, width]: the
  pixels whose centres lie inside a box."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  ys = (np.arange(height) + 0.5) / height
  xs = (np.arange(width) + 0.5) / width
  inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])    # [K,H]
  inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])    # [K,W]
  return np.any(inside_y[:, :, None] & inside_x[:, None, :], axis=0)


def tie_centre(values: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
  """int64[N]: for values f[N, H, W], the flat index of the pixel at the maximum that lies
  nearest the centroid of all pixels within rtol * (max - min) of the maximum (a flat peak is
  pointed at in its middle, a constant map at the image centre)."""
  n, h, w = values.shape
  v = values.reshape(n, h * w)
  hi, lo = v.max(axis=1, keepdims=True), v.min(axis=1, keepdims=True)
  tied = v >= hi - rtol * np.maximum(hi - lo, 1e-300)
  rows, cols = np.divmod(np.arange(h * w), w)
  count = tied.sum(axis=1)
  cy = (tied * rows).sum(axis=1) / count
  cx = (tied * cols).sum(axis=1) / count
  d2 = (rows[None] - cy[:, None]) ** 2 + (cols[None] - cx[:, None]) ** 2
  return np.argmin(np.where(tied, d2, np.inf), axis=1)


def pointed_pixels(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """int64[N]: the flat pixel each map f[N, gh, gw] points at once upsampled to height x width
  (the centre of a tied maximum, `tie_centre`)."""
  maps = np.asarray(maps, np.float64)
  return tie_centre(upsample_bilinear(maps, height, width).reshape(-1, height, width))


def pointing_game(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """f64[N]: 1 where the maximum of map i upsampled to gt's H x W lies inside gt[i] (the
  centre of a tied maximum: a flat peak is not read at its first pixel).

  Args:
    maps: f[N, gh, gw] alignment maps.
    gt: bool[N, H, W] ground-truth masks.
  """
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  idx = pointed_pixels(maps, h, w)
  return gt.reshape(n, h * w)[np.arange(n), idx].astype(np.float64)


def cell_ranges(n_cells: int, n_pixels: int) -> list[tuple[int, int]]:
  """[start, stop) pixel range of each of n_cells equal cells along an axis of n_pixels."""
  edges = np.floor(np.arange(n_cells + 1) * n_pixels / n_cells).astype(int)
  return [(int(edges[i]), int(edges[i + 1])) for i in range(n_cells)]


def cell_coverage(gt: np.ndarray, gh: int, gw: int) -> np.ndarray:
  """f64[N, gh, gw]: the fraction of each feature-grid cell's pixels inside gt (bool[N,H,W])."""
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  out = np.zeros((n, gh, gw))
  for i, (r0, r1) in enumerate(cell_ranges(gh, h)):
    for j, (c0, c1) in enumerate(cell_ranges(gw, w)):
      out[:, i, j] = gt[:, r0:r1, c0:c1].mean(axis=(1, 2)) if r1 > r0 and c1 > c0 else 0.0
  return out


def cell_pointing(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """f64[N]: 1 where the feature-grid cell holding map i's maximum (centre of a tie, on the
  grid itself, no upsampling) contains any ground-truth pixel."""
  maps = np.asarray(maps, np.float64)
  n, gh, gw = maps.shape
  cov = cell_coverage(gt, gh, gw).reshape(n, gh * gw)
  return (cov[np.arange(n), tie_centre(maps)] > 0).astype(np.float64)


def grid_oracle_maps(gt: np.ndarray, gh: int, gw: int) -> np.ndarray:
  """The best map a gh x gw feature grid can hold: each cell scored by its overlap with gt."""
  return cell_coverage(gt, gh, gw)


def baseline_pointing(gt: np.ndarray, gh: int, gw: int) -> dict[str, float]:
  """Model-free pointing baselines of a gh x gw grid on gt (bool[N,H,W]), exact expectations:
    random_map       a map of i.i.d. random cells (its maximum is in each cell with probability
                     1/(gh*gw)): mean over cells of the pointing of a one-hot map;
    best_fixed_cell  always the same cell, the one best on these very pairs (an upper bound of
                     any location prior that ignores image and sentence);
  each as pixel pointing ('.../pointing') and cell pointing ('.../pointing_cell'); and
    grid_oracle      the pointing of `grid_oracle_maps` (what the grid can show at best)."""
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  c = gh * gw
  one_hot = np.eye(c).reshape(c, gh, gw)
  pix = pointed_pixels(one_hot, h, w)                          # [C]
  hits = gt.reshape(n, h * w)[:, pix].astype(np.float64)       # [N, C]
  cells = (cell_coverage(gt, gh, gw).reshape(n, c) > 0).astype(np.float64)
  return {"random_map/pointing": float(hits.mean()),
          "random_map/pointing_cell": float(cells.mean()),
          "best_fixed_cell/pointing": float(hits.mean(axis=0).max()),
          "best_fixed_cell/pointing_cell": float(cells.mean(axis=0).max()),
          "grid_oracle/pointing": float(np.mean(pointing_game(grid_oracle_maps(gt, gh, gw), gt)))}


def threshold_maps(maps: np.ndarray, height: int, width: int,
                   threshold: float = IOU_THRESHOLD) -> np.ndarray:
  """bool[N, H, W]: each upsampled map, min-max normalised, >= threshold (constant: all True)."""
  up = upsample_bilinear(maps, height, width)
  lo = up.min(axis=(-2, -1), keepdims=True)
  span = up.max(axis=(-2, -1), keepdims=True) - lo
  norm = np.where(span > 1e-12, (up - lo) / np.maximum(span, 1e-12), 1.0)
  return norm >= threshold


def map_iou(maps: np.ndarray, gt: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
  """f64[N]: IoU of the thresholded map i (see `threshold_maps`) with gt[i] (bool[N,H,W])."""
  gt = np.asarray(gt, bool)
  pred = threshold_maps(maps, gt.shape[1], gt.shape[2], threshold)
  inter = np.sum(pred & gt, axis=(1, 2))
  union = np.sum(pred | gt, axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def localisation_metrics(maps: np.ndarray, gt: np.ndarray, *, prefix: str,
                         valid: Optional[np.ndarray] = None,
                         threshold: float = IOU_THRESHOLD) -> dict[str, float]:
  """Over the pairs where `valid` (default all) is True: '<prefix>/pointing' (pixel pointing
  game), '<prefix>/pointing_cell' (`cell_pointing`), '<prefix>/iou', '<prefix>/gt_area', the
  model-free baselines of `baseline_pointing` for the maps' grid ('<prefix>/random_map/...',
  '<prefix>/best_fixed_cell/...', '<prefix>/grid_oracle/pointing') and '<prefix>/pairs';
  NaN without pairs."""
  maps = np.asarray(maps, np.float64)
  gt = np.asarray(gt, bool)
  if valid is not None:
    keep = np.asarray(valid, bool)
    maps, gt = maps[keep], gt[keep]
  n = int(gt.shape[0])
  keys = ("pointing", "pointing_cell", "iou", "gt_area", "random_map/pointing",
          "random_map/pointing_cell", "best_fixed_cell/pointing", "best_fixed_cell/pointing_cell",
          "grid_oracle/pointing")
  if n == 0:
    return {f"{prefix}/pairs": 0.0, **{f"{prefix}/{k}": float("nan") for k in keys}}
  out = {f"{prefix}/pairs": float(n),
         f"{prefix}/pointing": float(np.mean(pointing_game(maps, gt))),
         f"{prefix}/pointing_cell": float(np.mean(cell_pointing(maps, gt))),
         f"{prefix}/iou": float(np.mean(map_iou(maps, gt, threshold))),
         f"{prefix}/gt_area": float(np.mean(gt.reshape(n, -1).mean(axis=1)))}
  out.update({f"{prefix}/{k}": v
              for k, v in baseline_pointing(gt, maps.shape[1], maps.shape[2]).items()})
  return out


__all__ = ["boxes_to_mask", "pointing_game", "map_iou", "threshold_maps", "pointed_pixels",
           "tie_centre", "cell_pointing", "cell_coverage", "cell_ranges", "grid_oracle_maps",
           "baseline_pointing", "localisation_metrics", "IOU_THRESHOLD"]
