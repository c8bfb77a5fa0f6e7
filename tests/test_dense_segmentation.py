"""Dense segmentation: stage features, U-Net / SETR decoder shapes, nested stratified subsets, a
U-Net that learns a visible mask, mean +- std over seeds, reported skips and wrong mask sizes."""
from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import dense_segmentation as dense
from mmrl.evaluation.evaluators import segmentation as seg
from mmrl.heads.setr_decoder import SETRPUPDecoder
from mmrl.heads.unet_decoder import UNetDecoder
from mmrl.models import stage_features
from mmrl.models.resnet import resnet


class _TwoTower(nn.Module):
  """The part of TwoTowerModel the dense protocol reads: `encode_image` on `image_tower`."""
  image_tower: nn.Module

  def __call__(self, images, *, train: bool):
    return self.image_tower(images, train=train)

  def encode_image(self, images, *, train: bool):
    return self.image_tower(images, train=train)


@functools.lru_cache(maxsize=None)
def _state(size=32):
  model = _TwoTower(resnet("resnet_tiny", norm="batch", dtype=np.float32))
  variables = model.init(jax.random.key(0), np.zeros((1, size, size, 1), np.float32), train=False)
  return types.SimpleNamespace(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables["batch_stats"])


def _model_cfg(name="resnet_tiny"):
  return ml_collections.ConfigDict({"image": {"name": name}})


def _blobs(n=24, size=32, seed=0):
  """Images with a bright square (the mask) on noise; every 4th image has no square."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 0.3, (n, size, size, 1)).astype(np.float32)
  masks = np.zeros((n, size, size), bool)
  for i in range(n):
    if i % 4 == 3:
      continue
    r, c = rng.integers(0, size - 12, 2)
    masks[i, r:r + 12, c:c + 12] = True
  images[masks] += 2.0
  return images, masks


def test_resnet_stage_features_are_conv2_to_conv5_at_strides_4_to_32():
  state = _state()
  fn = stage_features.stage_features_fn(_model_cfg())
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
  feats = fn(state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats}, images)
  assert [f.shape[1] for f in feats] == [8, 4, 2, 1]
  assert [f.shape[-1] for f in feats] == [8, 16, 32, 32]
  final = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                         train=False)  # the tower's own output is the conv5 stage, unchanged
  np.testing.assert_allclose(feats[-1].reshape(2, 1, 32), final.local, rtol=1e-6)


def test_unet_and_setr_decoders_return_one_logit_per_pixel():
  feats = [np.zeros((2, 48 // s, 48 // s, 4), np.float32) for s in (4, 8, 16, 32)]
  unet = UNetDecoder(channels=(8, 8, 8, 4, 4))
  out = unet.apply(unet.init(jax.random.key(0), feats, (48, 48)), feats, (48, 48))
  assert out.shape == (2, 48, 48, 1)
  setr = SETRPUPDecoder(channels=(8, 4))
  grid = np.zeros((2, 3, 3, 6), np.float32)
  out = setr.apply(setr.init(jax.random.key(0), grid, (48, 48)), grid, (48, 48))
  assert out.shape == (2, 48, 48, 1)


def test_subsets_are_nested_stratified_and_seeded():
  nonempty = np.arange(200) % 5 != 0   # 40 empty, 160 non-empty
  small = seg.subset_rows(nonempty, 0.1, 3)
  large = seg.subset_rows(nonempty, 0.5, 3)
  assert set(small) <= set(large)
  assert (~nonempty[small]).sum() == 4 and nonempty[small].sum() == 16
  np.testing.assert_array_equal(small, seg.subset_rows(nonempty, 0.1, 3))
  assert not np.array_equal(small, seg.subset_rows(nonempty, 0.1, 4))
  assert len(seg.subset_rows(nonempty, 1.0, 3)) == 200


def test_unet_learns_a_visible_mask_from_a_frozen_encoder():
  images, masks = _blobs()
  state = _state()
  encode, params = dense.make_encoder(_model_cfg(), state, "unet")
  decoder = UNetDecoder(channels=(16, 16, 8, 8, 8))
  (prob,) = dense.fit_predict_dense(encode, params, decoder, "unet", images[:16], masks[:16],
                                    images[16:], [(np.arange(16), 0)], steps=50, batch_size=8,
                                    lr=1e-2)
  assert prob.shape == masks[16:].shape
  assert seg.dice(prob >= 0.5, masks[16:]).mean() > 0.7


def _features_fn(images, masks, n_train):
  f = {"image": images, "image_local": np.zeros((len(images), 1, 1, 2), np.float32),
       "masks": masks[:, None].astype(np.float32),
       "mask_labels": np.zeros((len(images), 1), np.int32),
       "mask_present": np.ones((len(images), 1), bool)}
  return lambda name, n, with_masks, **kw: (
      {k: v[:n_train] for k, v in f.items()} if name == "train"
      else {k: v[n_train:] for k, v in f.items()})


def test_finetuned_evaluator_reports_mean_and_sample_std_over_seeds_for_each_fraction():
  images, masks = _blobs(n=20)
  c = base_config()
  c.model.image.name = "resnet_tiny"
  c.eval.segmentation.update(head="dense", fractions=(0.5, 1.0), num_seeds=2, dense_steps=2,
                             finetune=True,
                             batch_size=4, unet_channels=(8, 8, 8, 4, 4), require_mask=False,
                             num_sheet_examples=0)
  ev = seg.SegmentationEvaluator(c, ("A",))
  assert ev.head == "unet"
  out, _ = ev(_state(), _features_fn(images, masks, 14))
  for tag in ("50pct", "100pct"):
    key = f"segmentation/unet_finetune/{tag}"
    vals = [out[f"{key}/dice_seed{i}"] for i in range(2)]
    assert out[f"{key}/dice"] == pytest.approx(np.mean(vals))
    assert out[f"{key}/dice_std"] == pytest.approx(np.std(vals, ddof=1))
    assert out[f"{key}/num_seeds"] == 2
    assert 0.0 <= out[f"{key}/dice_nonempty"] <= 1.0
  # 14 train rows, 3 of them empty: ceil(0.5 * 11) non-empty + ceil(0.5 * 3) empty
  assert out["segmentation/unet_finetune/50pct/num_train"] == 8
  assert out["segmentation/dice"] == out["segmentation/unet_finetune/100pct/dice"]
  assert out["segmentation/num_test_empty"] == 2  # images 15 and 19 have no square


def test_no_annotated_test_image_is_a_reported_skip_not_a_nan():
  images, masks = _blobs(n=8)
  masks[6:] = False
  c = base_config()
  ev = seg.SegmentationEvaluator(c, ("A",))   # require_mask: unannotated test images left out
  out, images_out = ev(None, _features_fn(images, masks, 6))
  assert out["segmentation/skipped"] == 1 and out["segmentation/num_test"] == 0
  assert not any(np.isnan(v) for v in out.values()) and "segmentation/dice" not in out
  assert images_out == {}


def test_masks_of_the_wrong_size_raise_an_error_naming_both_shapes():
  with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 6, 6\)"):
    seg.dice(np.zeros((2, 8, 8), bool), np.zeros((2, 6, 6), bool))
  images, masks = _blobs(n=4)
  state = _state()
  encode, params = dense.make_encoder(_model_cfg(), state, "unet")
  with pytest.raises(ValueError, match="differ in size"):
    dense.fit_predict_dense(encode, params, UNetDecoder(), "unet", images, masks[:, :16, :16],
                            images, [(np.arange(4), 0)], steps=1)


def test_unet_on_a_vit_tower_names_the_setr_alternative():
  with pytest.raises(ValueError, match="'setr' or 'dense'"):
    dense.resolve_head("unet", _model_cfg("vit_tiny"))
