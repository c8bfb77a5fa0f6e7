"""Heat-map overlays, sentence sheets and PNG files."""
from __future__ import annotations

import numpy as np
from PIL import Image

from mmrl.viz import heatmaps


def test_overlay_is_uint8_rgb_of_the_image_size_and_hottest_at_the_peak():
  image = np.full((32, 48), 0.5, np.float32)
  m = np.zeros((4, 6), np.float32)
  m[0, 0] = 1.0  # peak in the top-left cell
  out = heatmaps.overlay(image, m)
  assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
  top_left, bottom_right = out[0, 0].astype(int), out[-1, -1].astype(int)
  assert top_left[0] > top_left[2]          # red over blue at the peak
  assert bottom_right[2] > bottom_right[0]  # blue over red far from it


def test_jet_runs_from_blue_to_red():
  np.testing.assert_allclose(heatmaps.jet(np.array([0.0, 1.0])),
                             [[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]])


def test_sentence_sheet_has_one_panel_per_valid_sentence():
  image = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
  maps = np.random.default_rng(0).normal(size=(3, 3, 3))
  one = heatmaps.sentence_sheet(image, maps[:1], ["a"], np.array([True]))
  two = heatmaps.sentence_sheet(image, maps, ["a", "padding", "There is a nodule."],
                                np.array([True, False, True]),
                                boxes=[np.ones((24, 24), bool)] * 3)
  assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
  assert two.shape[0] == one.shape[0] and two.shape[1] == 2 * one.shape[1] + 4


def test_write_heatmap_pngs_writes_readable_files(tmp_path):
  sheet = np.zeros((10, 20, 3), np.uint8)
  sheet[:, :10, 0] = 255
  paths = heatmaps.write_heatmap_pngs(tmp_path / "h", {"heatmaps/synthetic_0": sheet,
                                                       "heatmaps/nih templated_1": sheet})
  assert [p.name for p in paths] == ["heatmaps_synthetic_0.png", "heatmaps_nih_templated_1.png"]
  back = np.asarray(Image.open(paths[0]))
  np.testing.assert_array_equal(back, sheet)


def test_sentence_sheet_carries_a_colour_key_above_the_panels():
  image = np.zeros((24, 24), np.float32)
  sheet = heatmaps.sentence_sheet(image, np.zeros((1, 4, 4)), ["a"], np.array([True]))
  band = sheet[:heatmaps.LEGEND_H]
  low, high = (heatmaps.jet(np.array([0.0, 1.0])) * 255).round().astype(np.uint8)  # ramp ends
  assert (np.abs(band.astype(int) - low).sum(-1) <= 3).any()
  assert (np.abs(band.astype(int) - high).sum(-1) <= 3).any()
