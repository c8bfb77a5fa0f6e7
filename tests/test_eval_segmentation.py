"""Frozen-feature segmentation: Dice against a numpy reference, a head that can reach Dice 1."""
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import segmentation as seg


def _reference_dice(p, t):
  out = []
  for a, b in zip(p, t):
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    out.append(1.0 if denom == 0 else 2.0 * (a & b).sum() / denom)
  return np.array(out)


def test_dice_matches_a_numpy_reference_and_empty_masks_score_one():
  rng = np.random.default_rng(0)
  p = rng.random((6, 5, 7)) < 0.3
  t = rng.random((6, 5, 7)) < 0.3
  p[0], t[0] = False, False      # both empty: perfect
  p[1], t[1] = True, False       # prediction on an empty target: 0
  p[2], t[2] = False, True       # missed everything: 0
  got = seg.dice(p, t)
  np.testing.assert_allclose(got, _reference_dice(p, t))
  assert got[:3].tolist() == [1.0, 0.0, 0.0]


def test_mask_targets_take_the_union_or_one_label():
  masks = np.zeros((1, 3, 2, 2), np.float32)
  masks[0, 0, 0, 0] = masks[0, 1, 1, 1] = masks[0, 2, 0, 1] = 1
  labels = np.array([[0, 1, 1]])
  present = np.array([[True, True, False]])  # the third is padding
  assert seg.mask_targets(masks, labels, present).tolist() == [[[True, False], [False, True]]]
  assert seg.mask_targets(masks, labels, present, 1).tolist() == [[[False, False], [False, True]]]


def _grid_masks(n=24, grid=4, cell=8, seed=0):
  """Masks made of whole grid cells, and grid features that encode them (plus noise channels)."""
  rng = np.random.default_rng(seed)
  cells = rng.random((n, grid, grid)) < 0.4
  cells[:, 0, 0] = True
  masks = np.kron(cells, np.ones((cell, cell))).astype(bool)
  feats = np.concatenate([np.where(cells, 1.0, -1.0)[..., None],
                          rng.normal(size=(n, grid, grid, 3))], axis=-1)
  return feats.astype(np.float32), masks


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_head_on_features_that_encode_the_mask_reaches_dice_near_one(head):
  feats, masks = _grid_masks()
  params = seg.fit_seg_head(feats[:16], masks[:16], head=head, steps=80, hidden=8)
  prob = seg.predict_seg_head(params, feats[16:], masks.shape[1:])
  assert prob.shape == masks[16:].shape
  assert seg.dice(prob >= 0.5, masks[16:]).mean() > 0.9


def test_evaluator_scores_only_annotated_images_and_draws_a_sheet():
  feats, masks = _grid_masks(n=20)
  masks[-2:] = False  # unannotated: left out of the score
  c = base_config()
  c.eval.segmentation.steps = 80
  c.eval.segmentation.num_sheet_examples = 2
  ev = seg.SegmentationEvaluator(c, ("A", "B"))
  f = {"image_local": feats, "image": np.zeros((20, 32, 32, 1), np.float32),
       "masks": masks[:, None].astype(np.float32), "mask_labels": np.zeros((20, 1), np.int32),
       "mask_present": np.ones((20, 1), bool)}
  split = lambda name, n, with_masks, **kw: ({k: v[:14] for k, v in f.items()} if name == "train"
                                       else {k: v[14:] for k, v in f.items()})
  out, images = ev(None, split)
  assert out["segmentation/num_train"] == 14 and out["segmentation/num_test"] == 4
  assert out["segmentation/dice"] > 0.9
  sheet = images["segmentation/examples"]
  assert sheet.dtype == np.uint8 and sheet.shape[2] == 3 and sheet.shape[0] > 2 * 32


def test_unknown_target_label_names_the_config_key():
  c = base_config()
  c.eval.segmentation.target = "Lungs"
  with pytest.raises(ValueError, match="config.eval.segmentation.target"):
    seg.SegmentationEvaluator(c, ("A",))
