"""The localisation benchmark keeps its promise: on a reduced calibrated synthetic set the grid
oracle reaches >= 0.8 pointing (and the realistic sizes stay the harder set), and LoVT trained on
it points better than a random map (docs/localisation.md)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipeline.synthetic import phantom
from experiments.comparison import budget as budget_lib
from experiments.comparison import run as comparison_run
from experiments.comparison import method_configs
from mmrl.evaluation.metrics import localisation as loc

# The reduced calibrated set: the localisation preset at 60 patients.
REDUCED = dataclasses.replace(budget_lib.PRESETS["localisation"], patients=60,
                              synthetic_image_size=160, eval_examples=64, nih_splits=())


def _eval_boxes(budget, dataset_dir):
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  c = method_configs.method_config("lovt", budget, seed=0, dataset_dir=dataset_dir)
  size = int(c.data.image_size)
  gts = []
  for split in ("train", "validate", "test"):
    for b in pipeline.make_eval_batches(c.data, split=split, batch_size=16):
      for i in np.flatnonzero(np.asarray(b["valid"], bool)):
        for j in np.flatnonzero(np.asarray(b["box_mask"][i], bool)):
          gts.append(loc.boxes_to_mask(np.asarray(b["boxes"][i, j]), size, size))
  return np.stack(gts)


@pytest.mark.slow
def test_the_calibrated_set_lets_a_grid_oracle_point_at_least_0_8(synthetic_cache):
  ds = comparison_run.prepare_synthetic(REDUCED, synthetic_cache)
  gt = _eval_boxes(REDUCED, ds)
  grid = REDUCED.image_size // 16  # resnet_small_s16: stride 16
  ref = loc.baseline_pointing(gt, grid, grid)
  assert len(gt) >= 40
  assert ref["grid_oracle/pointing"] >= 0.8, ref
  # The oracle is far above the model-free chance levels, so the benchmark can show localisation.
  assert ref["grid_oracle/pointing"] > ref["best_fixed_cell/pointing"] + 0.3, ref


def test_the_realistic_variant_keeps_todays_sizes_and_the_calibrated_one_is_larger():
  sizes = {}
  for variant in phantom.VARIANTS:
    nodules = [f.size_mm for i in range(400)
               for f in phantom.sample_findings(np.random.default_rng(i), variant=variant)
               if f.name == "nodule"]
    sizes[variant] = (min(nodules), max(nodules))
  assert 8 <= sizes["realistic"][0] and sizes["realistic"][1] <= 30
  assert sizes["calibrated"][0] >= 28
  with pytest.raises(ValueError, match="not known"):
    phantom.sample_findings(np.random.default_rng(0), variant="huge")


# LoVT on the reduced calibrated set. The margin: across the 3 seeds of the localisation
# comparison (results/localisation/preset_300steps/comparison.md) cell pointing varies by a sample std of up to
# ~0.1 per method, and the random-init baseline's cell pointing sits within ~0.02 of the random
# map's, so a model localises only when it beats the random map by more than 0.1 in cell
# pointing. Today no method does at CPU budgets, LoVT included (docs/localisation.md, sections
# 2b and 3): the test is a strict xfail, so CI fails as soon as it starts to pass and the
# marker must be removed then.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="LoVT does not localise at CPU budgets yet "
                   "(docs/localisation.md sections 2b, 3); remove this marker when it does")
def test_lovt_trained_on_the_reduced_calibrated_set_points_above_a_random_map(
    tmp_path, synthetic_cache):
  budget = dataclasses.replace(REDUCED, steps=30, warmup_steps=3, eval_examples=32)
  ds = comparison_run.prepare_synthetic(budget, synthetic_cache)
  r = comparison_run.run_one("lovt", 0, budget, dataset_dir=ds, nih_dir="",
                         workdir=tmp_path / "lovt", heatmap_dir=None)
  m = r["metrics"]
  assert m["loc/synthetic/grid_oracle/pointing"] >= 0.8
  assert m["loc/synthetic/pointing_cell"] > m["loc/synthetic/random_map/pointing_cell"] + 0.1, m
