"""Phrase-grounding metrics: CNR by hand, mIoU and CNR against loop references, nearest
upsampling against torch, degenerate pairs counted (never NaN), wrong sizes named."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmrl.evaluation.metrics import grounding as gm


def _ref_cnr(m, g):
  inside, outside = m[g], m[~g]
  return abs(inside.mean() - outside.mean()) / math.sqrt(inside.var() + outside.var())


def _ref_miou(m, g, thresholds=gm.MIOU_THRESHOLDS):
  lo, hi = m.min(), m.max()
  norm = (m - lo) / (hi - lo) if hi > lo else np.ones_like(m)
  ious = []
  for t in thresholds:
    p = norm >= t
    union = (p | g).sum()
    ious.append((p & g).sum() / union if union else 0.0)
  return float(np.mean(ious))


def test_cnr_of_a_small_map_equals_the_value_computed_by_hand():
  m = np.array([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])
  g = np.array([[[True, True, False], [True, False, False]]])
  # inside {1, 2, 3}: mean 2, variance 2/3; outside {0, 0, 0}: mean 0, variance 0
  value, defined = gm.cnr(m, g)
  assert defined.tolist() == [True]
  np.testing.assert_allclose(value, [2 / math.sqrt(2 / 3)])  # = sqrt(6)


def test_cnr_matches_a_loop_reference_and_ignores_affine_rescaling():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(5, 8, 9))
  g = rng.random((5, 8, 9)) < 0.3
  value, defined = gm.cnr(m, g)
  assert defined.all()
  np.testing.assert_allclose(value, [_ref_cnr(a, b) for a, b in zip(m, g)], rtol=1e-12)
  np.testing.assert_allclose(gm.cnr(-3.0 * m + 7.0, g)[0], value, rtol=1e-9)


def test_map_equal_to_the_box_gives_miou_one_and_a_shifted_map_the_reference_value():
  g = np.zeros((1, 10, 10), bool)
  g[0, 2:5, 3:7] = True
  assert gm.miou(g.astype(float), g).tolist() == [1.0]
  shifted = np.roll(g.astype(float), 2, axis=2)   # same box, two columns to the right
  np.testing.assert_allclose(gm.miou(shifted, g), [_ref_miou(shifted[0], g[0])])
  assert gm.miou(shifted, g)[0] == pytest.approx(6 / 18)  # overlap 3x2, union 3x4 + 3x4 - 6


def test_miou_matches_a_loop_reference_on_random_maps():
  rng = np.random.default_rng(1)
  m = rng.random((6, 7, 7))
  m[0] = 0.25  # a constant map predicts the whole image
  g = rng.random((6, 7, 7)) < 0.4
  np.testing.assert_allclose(gm.miou(m, g), [_ref_miou(a, b) for a, b in zip(m, g)])


def test_nearest_upsampling_takes_torchs_source_index_floor_of_i_times_g_over_out():
  m = np.arange(15, dtype=float).reshape(1, 3, 5)
  up = gm.upsample_nearest(m, 7, 4)
  rows = [0, 0, 0, 1, 1, 2, 2]        # floor(i * 3 / 7) (torch.nn.functional.interpolate 'nearest')
  cols = [0, 1, 2, 3]                 # floor(j * 5 / 4)
  np.testing.assert_array_equal(up[0], m[0][np.ix_(rows, cols)])


def test_swapped_maps_score_lower_and_match_the_reference():
  g = np.zeros((2, 8, 8), bool)
  g[0, :4, :4] = True
  g[1, 4:, 4:] = True
  grid = np.zeros((2, 2, 2))
  grid[0, 0, 0] = grid[1, 1, 1] = 1.0  # each sentence's map points at its own box
  right = gm.grounding_metrics(grid, g, prefix="g")
  wrong = gm.grounding_metrics(grid[::-1], g, prefix="g")
  assert right["g/pointing"] == 1.0 and wrong["g/pointing"] == 0.0
  assert right["g/miou"] == 1.0 and wrong["g/miou"] == 0.0
  up = gm.upsample_nearest(grid[::-1], 8, 8)
  assert wrong["g/cnr"] == pytest.approx(np.mean([_ref_cnr(a, b) for a, b in zip(up, g)]))
  assert wrong["g/cnr_signed"] == pytest.approx(-wrong["g/cnr"])  # both maps are low on the box
  # the right maps are two-valued and exactly the boxes: CNR = x / 0, counted, not averaged
  assert right["g/pairs"] == 2 and right["g/skipped_gt"] == 0 and right["g/cnr_unbounded"] == 2
  assert "g/cnr" not in right
  smooth = gm.grounding_metrics(grid, g, prefix="g", interpolation="bilinear")
  assert smooth["g/cnr"] > wrong["g/cnr"] and smooth["g/cnr_unbounded"] == 0


def test_degenerate_pairs_are_counted_and_no_metric_is_nan():
  g = np.zeros((3, 4, 4), bool)  # pair 0: an empty box (no inside)
  g[1] = True                   # box covers the whole image: no outside
  g[2, :2] = True
  grid = np.zeros((3, 2, 2))    # pair 2: a flat map, CNR undefined
  out = gm.grounding_metrics(grid, g, prefix="g")
  assert out["g/skipped_gt"] == 2 and out["g/skipped_flat"] == 1 and out["g/pairs"] == 1
  assert "g/cnr" not in out
  assert all(np.isfinite(v) for v in out.values())
  empty = gm.grounding_metrics(np.zeros((0, 2, 2)), np.zeros((0, 4, 4), bool), prefix="g")
  assert empty == {"g/skipped_gt": 0.0, "g/skipped_flat": 0.0, "g/cnr_unbounded": 0.0,
                   "g/pairs": 0.0}


def test_maps_and_masks_of_different_sizes_raise_an_error_naming_both_shapes():
  with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(1, 5, 5\)"):
    gm.cnr(np.zeros((1, 4, 4)), np.zeros((1, 5, 5), bool))
  with pytest.raises(ValueError, match="interpolation"):
    gm.to_image_size(np.zeros((1, 2, 2)), 4, 4, interpolation="cubic")
