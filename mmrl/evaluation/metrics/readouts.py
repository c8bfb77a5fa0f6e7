"""The scalars of one localisation read-out: the pointing metrics and CNR of a set of maps.

`readout_metrics` is what `LocalisationEvaluator` reports for each set of (map, box) pairs: the
`localisation_metrics` of each method's own maps plus their mean CNR, and, for the second read-out
(BioViL's similarity maps), the same map metrics and CNR under '<prefix>/sim/'. Pure numpy.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mmrl.evaluation.metrics import grounding as grounding_metrics
from mmrl.evaluation.metrics.localisation import (cell_pointing, localisation_metrics, map_iou,
                                                  pointing_game)
from mmrl.ops.resize import upsample_bilinear

# The map metrics a second read-out repeats under '<prefix>/sim/' (the model-free references
# gt_area, random_map, best_fixed_cell and grid_oracle depend only on the boxes and the grid).
MAP_METRICS = ("pointing", "pointing_cell", "iou", "pairs")


def mean_cnr(maps: np.ndarray, gt: np.ndarray) -> float:
  """The mean CNR (grounding_metrics.cnr) of grid maps f[N,gh,gw] upsampled bilinearly like the
  pointing game, against gt bool[N,H,W], over the pairs where it is defined (NaN without)."""
  gt = np.asarray(gt, bool)
  if not len(gt):
    return float("nan")
  up = upsample_bilinear(maps, gt.shape[1], gt.shape[2])
  value, defined = grounding_metrics.cnr(up, gt)
  return float(np.mean(value[defined])) if defined.any() else float("nan")


def readout_metrics(maps: np.ndarray, gt: np.ndarray, *, prefix: str,
                    sim_maps: Optional[np.ndarray] = None) -> dict[str, float]:
  """`localisation_metrics` of the own maps plus '<prefix>/cnr' and, given `sim_maps`, the
  MAP_METRICS and CNR of the similarity maps under '<prefix>/sim/'."""
  out = localisation_metrics(maps, gt, prefix=prefix)
  out[f"{prefix}/cnr"] = mean_cnr(maps, gt)
  if sim_maps is not None:  # the map metrics only (no model-free references recomputed)
    sim_maps, gt = np.asarray(sim_maps, np.float64), np.asarray(gt, bool)
    n = len(gt)
    nan = float("nan")
    out[f"{prefix}/sim/pairs"] = float(n)
    out[f"{prefix}/sim/pointing"] = float(np.mean(pointing_game(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/pointing_cell"] = float(np.mean(cell_pointing(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/iou"] = float(np.mean(map_iou(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/cnr"] = mean_cnr(sim_maps, gt)
  return out


__all__ = ["MAP_METRICS", "mean_cnr", "readout_metrics"]
