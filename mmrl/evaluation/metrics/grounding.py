"""Phrase-grounding metrics of sentence -> image similarity maps against boxes (pure numpy).

BioViL (Boecking et al., ECCV 2022) scores a phrase's similarity map on MS-CXR with two numbers,
reported here next to the pointing game (`mmrl.evaluation.metrics.localisation.pointing_game`):

  CNR   contrast-to-noise ratio |mean_in - mean_out| / sqrt(var_in + var_out) of the map's values
        inside the ground truth (the union of the phrase's boxes) and outside it; population
        variances (ddof = 0). It needs no threshold and is invariant to any affine rescaling
        a * map + b (a != 0), so raw cosines, attention weights and critic scores compare.
        The absolute value also rewards a map that is *low* on the box; `cnr_signed` (ours)
        keeps the sign of mean_in - mean_out, so a map pointing away from the box scores < 0.
  mIoU  the map min-max normalised to [0, 1], thresholded (>=) at each of `MIOU_THRESHOLDS`
        (0.1, 0.2, 0.3, 0.4, 0.5), IoU with the ground truth per threshold, averaged over the
        thresholds; a constant map predicts the whole image (as in metrics.localisation.threshold_maps).

The map is brought to the image's H x W first: hi-ml's `ImageTextInferenceEngine` smooths the
patch-grid cosine map with a Gaussian (sigma = 1.5 patches, `scipy.ndimage.gaussian_filter`) and
upsamples it with torch's 'nearest' interpolation; `to_image_size` does the same ('nearest' takes
source index floor(i * g / H), torch's legacy rule) or bilinear (mmrl.ops.resize.upsample_bilinear).
Smoothing is off by default here (`smooth_sigma` = 0): our grids are 3x3-14x14 cells, where a
1.5-cell Gaussian blurs the whole map; set it to 1.5 for hi-ml's choice.

Provenance: the CNR formula and the threshold set are from the BioViL paper's MS-CXR protocol;
hi-ml's released code (microsoft/hi-ml, hi-ml-multimodal) holds the map construction above but we
did not find its CNR / mIoU functions in the stored snapshots, so ddof and the normalisation before
thresholding are our choices, stated above.

Degenerate pairs are counted, never averaged in as NaN: a ground truth covering no pixel or every
pixel has no inside or no outside (`skipped_gt`, left out of every metric); a map constant inside
and outside has var_in + var_out = 0 and is left out of the CNR mean only: `skipped_flat` when the
two constants are equal (0/0, no contrast), `cnr_unbounded` when they differ (x/0, a perfect
two-valued map; real similarity maps, smooth or bilinear, do not hit this).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mmrl.evaluation.metrics.localisation import pointing_game
from mmrl.ops.resize import upsample_bilinear

MIOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
INTERPOLATIONS = ("nearest", "bilinear")


def check_pairs(maps: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(f64[N,H,W], bool[N,H,W]) or a ValueError naming both shapes."""
  maps, gt = np.asarray(maps, np.float64), np.asarray(gt)
  if maps.ndim != 3 or gt.ndim != 3 or maps.shape != gt.shape:
    raise ValueError(f"grounding: maps {maps.shape} and ground-truth masks {gt.shape} must both be "
                     "[N, H, W] of the same size; bring the maps to the image size first "
                     "(mmrl.evaluation.metrics.grounding.to_image_size)")
  return maps, gt.astype(bool)


def upsample_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """maps f[..., gh, gw] -> f64[..., height, width]; torch 'nearest': src = floor(dst * g / out)."""
  maps = np.asarray(maps, np.float64)
  gh, gw = maps.shape[-2:]
  rows = np.minimum((np.arange(height) * gh) // height, gh - 1)
  cols = np.minimum((np.arange(width) * gw) // width, gw - 1)
  return maps[..., rows, :][..., cols]


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
  """Each [gh, gw] map smoothed like scipy.ndimage.gaussian_filter(m, sigma) (mode 'reflect')."""
  maps = np.asarray(maps, np.float64)
  if sigma <= 0:
    return maps
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  lead = maps.ndim - 2
  return ndimage.gaussian_filter(maps, sigma=(0.0,) * lead + (sigma, sigma), order=0)


def to_image_size(maps: np.ndarray, height: int, width: int, *, interpolation: str = "nearest",
                  smooth_sigma: float = 0.0) -> np.ndarray:
  """Grid maps f[N, gh, gw] -> f64[N, height, width] (optional Gaussian smoothing first)."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"config.eval.grounding.interpolation={interpolation!r}: use one of "
                     f"{INTERPOLATIONS}")
  maps = gaussian_smooth(maps, float(smooth_sigma))
  if interpolation == "nearest":
    return upsample_nearest(maps, height, width)
  return upsample_bilinear(maps, height, width)


def cnr(maps: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(cnr f64[N], defined bool[N]) of image-size maps f[N,H,W] against masks bool[N,H,W].

  cnr = |mean_in - mean_out| / sqrt(var_in + var_out); not defined (0 there) when the mask has no
  inside or no outside pixel or when var_in + var_out == 0 (`contrast` tells 0/0 from x/0).
  """
  maps, gt = check_pairs(maps, gt)
  n = maps.shape[0]
  x, g = maps.reshape(n, -1), gt.reshape(n, -1)
  n_in = g.sum(axis=1)
  n_out = g.shape[1] - n_in
  mean_in = np.where(g, x, 0).sum(axis=1) / np.maximum(n_in, 1)
  mean_out = np.where(~g, x, 0).sum(axis=1) / np.maximum(n_out, 1)
  var_in = np.where(g, (x - mean_in[:, None]) ** 2, 0).sum(axis=1) / np.maximum(n_in, 1)
  var_out = np.where(~g, (x - mean_out[:, None]) ** 2, 0).sum(axis=1) / np.maximum(n_out, 1)
  denom = np.sqrt(var_in + var_out)
  defined = (n_in > 0) & (n_out > 0) & (denom > 0)
  value = np.where(defined, np.abs(mean_in - mean_out) / np.where(defined, denom, 1.0), 0.0)
  return value, defined


def _mean_where(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
  n = len(maps)
  m, k = maps.reshape(n, -1), mask.reshape(n, -1)
  return np.where(k, m, 0).sum(axis=1) / np.maximum(k.sum(axis=1), 1)


def normalise_min_max(maps: np.ndarray) -> np.ndarray:
  """Each map of f[N,H,W] scaled to [0, 1]; a constant map becomes all ones."""
  maps = np.asarray(maps, np.float64)
  lo = maps.min(axis=(-2, -1), keepdims=True)
  span = maps.max(axis=(-2, -1), keepdims=True) - lo
  return np.where(span > 1e-12, (maps - lo) / np.maximum(span, 1e-12), 1.0)


def miou(maps: np.ndarray, gt: np.ndarray,
         thresholds: Sequence[float] = MIOU_THRESHOLDS) -> np.ndarray:
  """f64[N]: IoU of (normalised map >= t) with the mask, averaged over `thresholds`."""
  maps, gt = check_pairs(maps, gt)
  norm = normalise_min_max(maps)
  out = np.zeros(maps.shape[0])
  for t in thresholds:
    pred = norm >= float(t)
    inter = np.sum(pred & gt, axis=(1, 2))
    union = np.sum(pred | gt, axis=(1, 2))
    out += np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  return out / max(len(thresholds), 1)


def grounding_metrics(grid_maps: np.ndarray, gt: np.ndarray, *, prefix: str,
                      interpolation: str = "nearest", smooth_sigma: float = 0.0,
                      thresholds: Sequence[float] = MIOU_THRESHOLDS,
                      valid: Optional[np.ndarray] = None) -> dict[str, float]:
  """Scalars '<prefix>/{pairs, cnr, cnr_std, cnr_signed, miou, pointing, gt_area, skipped_gt,
  skipped_flat, cnr_unbounded}' (module docstring).

  Args:
    grid_maps: f[N, gh, gw] sentence maps on the feature grid.
    gt: bool[N, H, W] ground-truth masks at image size.
    prefix: key prefix, e.g. 'grounding/synthetic'.
    interpolation, smooth_sigma: how a grid map is brought to H x W (`to_image_size`).
    thresholds: the mIoU thresholds.
    valid: bool[N] pairs to score (default all).

  Without a scorable pair only '<prefix>/pairs' = 0 and the skip counts are returned (no NaN):
  a table shows the skip, not a number. The pointing game uses metrics.localisation.pointing_game
  (bilinear upsampling, as the localisation evaluator reports it). cnr_std is the sample std
  (ddof = 1) over pairs (0 for one pair).
  """
  grid_maps = np.asarray(grid_maps, np.float64)
  gt = np.asarray(gt, bool)
  if grid_maps.ndim != 3 or gt.ndim != 3 or grid_maps.shape[0] != gt.shape[0]:
    raise ValueError(f"grounding: grid maps {grid_maps.shape} must be [N, gh, gw] and masks "
                     f"{gt.shape} [N, H, W] with the same N")
  if valid is not None:
    keep = np.asarray(valid, bool)
    grid_maps, gt = grid_maps[keep], gt[keep]
  n, h, w = gt.shape
  area = gt.reshape(n, -1).mean(axis=1) if n else np.zeros(0)
  has_both = (area > 0) & (area < 1)
  out = {f"{prefix}/skipped_gt": float(np.sum(~has_both))}
  grid_maps, gt, area = grid_maps[has_both], gt[has_both], area[has_both]
  maps = to_image_size(grid_maps, h, w, interpolation=interpolation, smooth_sigma=smooth_sigma)
  if not len(gt):
    out.update({f"{prefix}/skipped_flat": 0.0, f"{prefix}/cnr_unbounded": 0.0,
                f"{prefix}/pairs": 0.0})
    return out
  c, defined = cnr(maps, gt)
  contrast = np.abs(_mean_where(maps, gt) - _mean_where(maps, ~gt)) > 0
  out[f"{prefix}/skipped_flat"] = float(np.sum(~defined & ~contrast))
  out[f"{prefix}/cnr_unbounded"] = float(np.sum(~defined & contrast))
  out[f"{prefix}/pairs"] = float(len(gt))
  if defined.any():
    out[f"{prefix}/cnr"] = float(np.mean(c[defined]))
    sign = np.sign(_mean_where(maps, gt) - _mean_where(maps, ~gt))
    out[f"{prefix}/cnr_signed"] = float(np.mean((sign * c)[defined]))
    out[f"{prefix}/cnr_std"] = float(np.std(c[defined], ddof=1)) if defined.sum() > 1 else 0.0
  out[f"{prefix}/miou"] = float(np.mean(miou(maps, gt, thresholds)))
  out[f"{prefix}/pointing"] = float(np.mean(pointing_game(grid_maps, gt)))
  out[f"{prefix}/gt_area"] = float(np.mean(area))
  return out


__all__ = ["cnr", "miou", "grounding_metrics", "to_image_size", "upsample_nearest",
           "gaussian_smooth", "normalise_min_max", "check_pairs", "MIOU_THRESHOLDS",
           "INTERPOLATIONS"]
