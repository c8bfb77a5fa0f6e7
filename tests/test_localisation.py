"""Localisation metrics on tiny inputs with known answers, and sentence <-> box matching."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.record_spec import CHEXPERT_LABELS
from mmrl.evaluation.maps import sentences
from mmrl.evaluation.metrics import localisation as loc
from mmrl.ops.resize import upsample_bilinear


def _box_mask(h, w, r0, r1, c0, c1):
  m = np.zeros((h, w), bool)
  m[r0:r1, c0:c1] = True
  return m


def test_map_equal_to_mask_gives_iou_1_and_pointing_1():
  gt = _box_mask(8, 8, 2, 5, 1, 4)[None]
  maps = gt.astype(np.float32)
  assert loc.map_iou(maps, gt)[0] == pytest.approx(1.0)
  assert loc.pointing_game(maps, gt)[0] == 1.0


def test_peak_outside_the_box_gives_pointing_0():
  gt = _box_mask(16, 16, 0, 8, 0, 8)[None]
  m = np.zeros((1, 4, 4), np.float32)
  m[0, 3, 3] = 1.0  # bottom-right cell; the box is the top-left quarter
  assert loc.pointing_game(m, gt)[0] == 0.0
  m2 = np.zeros((1, 4, 4), np.float32)
  m2[0, 0, 1] = 1.0
  assert loc.pointing_game(m2, gt)[0] == 1.0


def test_upsampling_matches_jax_image_resize():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(3, 3, 5)).astype(np.float32)
  ours = upsample_bilinear(maps, 12, 20)
  ref = np.asarray(jax.image.resize(jnp.asarray(maps), (3, 12, 20), "bilinear"))
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_iou_matches_a_loop_reference():
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(4, 3, 3))
  gt = np.stack([_box_mask(12, 12, a, c, b, d) for a, b, c, d in
                 rng.integers([0, 0, 6, 6], [6, 6, 12, 12], size=(4, 4))])
  up = np.asarray(jax.image.resize(jnp.asarray(maps), (4, 12, 12), "bilinear"), np.float64)
  expected = []
  for i in range(4):
    lo, hi = up[i].min(), up[i].max()
    pred = (up[i] - lo) / (hi - lo) >= 0.5
    inter = sum(pred[r, c] and gt[i, r, c] for r in range(12) for c in range(12))
    union = sum(pred[r, c] or gt[i, r, c] for r in range(12) for c in range(12))
    expected.append(inter / union)
  np.testing.assert_allclose(loc.map_iou(maps, gt), expected, atol=1e-6)


def test_constant_map_predicts_the_whole_image():
  gt = _box_mask(10, 10, 0, 5, 0, 2)[None]  # 10 of 100 pixels
  assert loc.map_iou(np.full((1, 2, 2), 3.0), gt)[0] == pytest.approx(0.1)


def test_boxes_cover_pixels_whose_centres_are_inside():
  m = loc.boxes_to_mask(np.array([[0.25, 0.5, 0.75, 1.0]]), 4, 4)
  np.testing.assert_array_equal(m, _box_mask(4, 4, 2, 4, 1, 3))
  both = loc.boxes_to_mask(np.array([[0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.0, 1.0]]), 4, 4)
  assert both.sum() == 2 and both[0, 0] and both[3, 3]


def test_metrics_leave_out_invalid_pairs_and_report_the_chance_level():
  gt = np.stack([_box_mask(4, 4, 0, 2, 0, 2), _box_mask(4, 4, 2, 4, 2, 4)])
  maps = np.stack([gt[0], gt[0]]).astype(np.float32)  # the second map points at the wrong box
  all_pairs = loc.localisation_metrics(maps, gt, prefix="x")
  assert all_pairs["x/pointing"] == 0.5 and all_pairs["x/pairs"] == 2.0
  assert all_pairs["x/gt_area"] == pytest.approx(0.25)
  first = loc.localisation_metrics(maps, gt, prefix="x", valid=np.array([True, False]))
  assert first["x/pointing"] == 1.0 and first["x/iou"] == pytest.approx(1.0)
  empty = loc.localisation_metrics(maps, gt, prefix="x", valid=np.array([False, False]))
  assert empty["x/pairs"] == 0.0 and np.isnan(empty["x/pointing"])


def test_templated_sentences_name_label_side_and_zone():
  assert (sentences.templated_sentence("Nodule", [0.1, 0.1, 0.2, 0.2])
          == "There is a nodule in the right upper zone.")
  assert (sentences.templated_sentence("Effusion", [0.6, 0.7, 0.9, 0.95])
          == "There is a pleural effusion in the left lower zone.")
  assert sentences.templated_sentence("Cardiomegaly", [0.3, 0.4, 0.7, 0.8]) == "There is cardiomegaly."


def test_report_sentences_match_the_boxes_of_the_findings_they_name():
  patterns = sentences.finding_patterns(CHEXPERT_LABELS)
  lesion = CHEXPERT_LABELS.index("Lung Lesion")
  ptx = CHEXPERT_LABELS.index("Pneumothorax")
  dev = CHEXPERT_LABELS.index("Support Devices")
  labels = [lesion, ptx, dev]
  assert sentences.match_sentence("There is a 12 mm nodule in the left apex.", labels, patterns) == [0]
  assert sentences.match_sentence("no pneumothorax.", labels, patterns) == []
  assert sentences.match_sentence("small right apical pneumothorax is present with a visible "
                            "pleural line.", labels, patterns) == [1]
  assert sentences.match_sentence("endotracheal tube tip is 4 cm above the carina.", labels,
                            patterns) == [2]
  assert sentences.match_sentence("the lungs are clear.", labels, patterns) == []


def test_a_flat_maximum_is_read_at_its_centre_not_its_first_pixel():
  # A peak in grid cell (0, 0) upsamples to a flat top-left plateau; its centre is in the cell.
  m = np.zeros((1, 3, 3))
  m[0, 0, 0] = 1.0
  gt = _box_mask(30, 30, 0, 10, 0, 10)[None]
  corner_pixel_only = np.zeros((1, 30, 30), bool)
  corner_pixel_only[0, 0, 0] = True
  assert loc.pointing_game(m, gt)[0] == 1.0
  assert loc.pointing_game(m, corner_pixel_only)[0] == 0.0
  # A constant map points at the image centre.
  centre = _box_mask(30, 30, 14, 16, 14, 16)[None]
  assert loc.pointing_game(np.ones((1, 3, 3)), centre)[0] == 1.0


def test_cell_pointing_hits_when_the_maximum_cell_holds_any_box_pixel():
  gt = _box_mask(12, 12, 3, 5, 3, 5)[None]   # inside cell (0, 0) and (1, 1) of a 3x3 grid
  m = np.zeros((1, 3, 3))
  m[0, 1, 1] = 1.0
  assert loc.cell_pointing(m, gt)[0] == 1.0
  m2 = np.zeros((1, 3, 3))
  m2[0, 2, 2] = 1.0
  assert loc.cell_pointing(m2, gt)[0] == 0.0


def test_random_map_and_best_fixed_cell_baselines_match_a_monte_carlo_reference():
  rng = np.random.default_rng(0)
  gt = np.stack([_box_mask(24, 24, a, a + 6, b, b + 8) for a, b in rng.integers(0, 16, (20, 2))])
  got = loc.baseline_pointing(gt, 4, 4)
  draws = rng.random((400, 20, 4, 4))
  mc = np.mean([loc.pointing_game(d, gt).mean() for d in draws])
  assert got["random_map/pointing"] == pytest.approx(mc, abs=0.02)
  fixed = []
  for c in range(16):
    one = np.zeros((20, 4, 4))
    one[:, c // 4, c % 4] = 1.0
    fixed.append(loc.pointing_game(one, gt).mean())
  assert got["best_fixed_cell/pointing"] == pytest.approx(max(fixed))


def test_grid_oracle_is_perfect_for_cell_aligned_boxes_and_misses_subcell_boxes():
  aligned = _box_mask(12, 12, 4, 8, 0, 4)[None]       # exactly cell (1, 0) of a 3x3 grid
  assert loc.baseline_pointing(aligned, 3, 3)["grid_oracle/pointing"] == 1.0
  tiny = _box_mask(12, 12, 0, 1, 3, 4)[None]          # one pixel at a cell's edge
  assert loc.baseline_pointing(tiny, 3, 3)["grid_oracle/pointing"] == 0.0


def test_location_free_swapped_and_midline_templates():
  box = [0.1, 0.1, 0.2, 0.2]
  assert sentences.templated_sentence("Nodule", box, location=False) == "There is a nodule."
  assert (sentences.templated_sentence("Nodule", box, swap_sides=True)
          == "There is a nodule in the left upper zone.")
  tube = [0.47, 0.05, 0.53, 0.30]
  assert sentences.templated_sentence("Support Devices", tube) == (
      "There is a support device in the upper zone.")
  assert not sentences.has_side("Support Devices", tube) and sentences.has_side("Nodule", box)
