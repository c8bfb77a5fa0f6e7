"""Detection: anchors, targets <-> decoding, box cleaning, NMS, the pyramid, the evaluator."""
from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import detection
from mmrl.evaluation.metrics import detection as dm
from mmrl.heads import yolo_head
from mmrl.models import multiscale
from mmrl.models.resnet import resnet


def test_kmeans_anchors_are_seeded_sorted_and_find_the_size_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[0.05, 0.05], [0.2, 0.1], [0.5, 0.6]])
  wh = np.concatenate([c * rng.uniform(0.95, 1.05, (40, 2)) for c in centres])
  a = yolo_head.kmeans_anchors(wh, 3, seed=1)
  np.testing.assert_array_equal(a, yolo_head.kmeans_anchors(wh, 3, seed=1))
  np.testing.assert_allclose(a, centres, rtol=0.05)
  nine = yolo_head.kmeans_anchors(wh[:2], 9, seed=0)  # fewer distinct sizes than anchors
  assert nine.shape == (9, 2) and (nine > 0).all()
  assert np.all(np.diff(nine[:, 0] * nine[:, 1]) >= 0)
  with pytest.raises(ValueError, match="no training box"):
    yolo_head.kmeans_anchors(np.zeros((3, 2)))


def _perfect_predictions(boxes, labels, mask, anchors, grids, k):
  """Raw head outputs that encode exactly the targets (logits of +-20)."""
  targets = jax.jit(yolo_head.encode_targets, static_argnums=(4, 5))(
      jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(mask), jnp.asarray(anchors),
      tuple(grids), k)
  preds = []
  for t in targets:
    q = np.clip(np.asarray(t["txy"]), 1e-6, 1 - 1e-6)
    obj = np.where(np.asarray(t["obj"]) > 0, 20.0, -20.0)[..., None]
    cls = np.where(np.asarray(t["cls"]) > 0, 20.0, -20.0)
    preds.append(jnp.asarray(np.concatenate([np.log(q / (1 - q)), np.asarray(t["twh"]), obj, cls],
                                            axis=-1), jnp.float32))
  return preds


def test_predictions_equal_to_the_targets_decode_to_the_boxes_and_score_map_one():
  boxes = np.array([[[0.1, 0.1, 0.3, 0.25], [0.5, 0.4, 0.95, 0.9], [0, 0, 0, 0]],
                    [[0.6, 0.05, 0.7, 0.2], [0.2, 0.5, 0.45, 0.8], [0.05, 0.7, 0.2, 0.95]]],
                   np.float32)
  labels = np.array([[0, 1, -1], [1, 0, 1]])
  mask = labels >= 0
  anchors = yolo_head.kmeans_anchors((boxes[..., 2:] - boxes[..., :2])[mask], 9, seed=0)
  grids = [(8, 8), (4, 4), (2, 2)]
  preds = _perfect_predictions(boxes, labels, mask, anchors, grids, 2)
  pb, ps = jax.jit(yolo_head.decode)(preds, jnp.asarray(anchors))
  out = detection.score_detections(np.asarray(pb), np.asarray(ps), boxes, labels, mask,
                                   names=["a", "b"], prefix="d", score_threshold=0.5,
                                   nms_iou=0.5, max_dets=100,
                                   iou_thresholds=dm.LOVT_IOU_THRESHOLDS)
  assert out["d/map"] == pytest.approx(1.0) and out["d/froc"] == 1.0
  assert out["d/num_detections"] == mask.sum()
  loss_fn = jax.jit(lambda p: yolo_head.yolo_loss(p, jnp.asarray(boxes), jnp.asarray(labels),
                                                  jnp.asarray(mask), jnp.asarray(anchors)))
  _, metrics = loss_fn(preds)
  assert float(metrics["yolo/num_assigned"]) == mask.sum()
  for part in ("wh", "obj", "cls"):  # zero at their own targets
    assert float(metrics[f"yolo/{part}_loss"]) < 1e-3
  # The offsets' BCE against soft targets bottoms out at their entropy, weighted 2 - w * h.
  t = (boxes[..., :2] + boxes[..., 2:]) / 2
  wh = boxes[..., 2:] - boxes[..., :2]
  entropy = 0.0
  for target in jax.jit(yolo_head.encode_targets, static_argnums=(4, 5))(
      jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(mask), jnp.asarray(anchors),
      tuple(grids), 2):
    q = np.clip(np.asarray(target["txy"]), 1e-6, 1 - 1e-6)
    h = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    entropy += np.sum(h * np.asarray(target["weight"] * target["obj"])[..., None])
  del t, wh
  assert float(metrics["yolo/xy_loss"]) == pytest.approx(entropy / 2, rel=1e-3)


def test_clean_boxes_clips_drops_zero_area_and_other_classes_and_counts_them():
  boxes = np.array([[[-0.1, 0.2, 0.5, 1.3], [0.3, 0.3, 0.3, 0.6], [0.1, 0.1, 0.2, 0.2],
                     [0.4, 0.4, 0.6, 0.6]]], np.float32)
  labels = np.array([[3, 3, 5, 3]])
  mask = np.array([[True, True, True, False]])
  b, lab, m, counts = detection.clean_boxes(boxes, labels, mask, {3: 0})
  assert counts == {"clipped": 1, "dropped_zero_area": 1, "dropped_other_class": 1}
  assert m.tolist() == [[True, False, False, False]]
  np.testing.assert_allclose(b[0, 0], [0.0, 0.2, 0.5, 1.0])
  assert lab.tolist() == [[0, -1, -1, -1]]


def test_nms_keeps_the_best_of_overlapping_boxes_and_all_separate_ones():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]])
  keep = detection.nms(boxes, np.array([0.5, 0.9, 0.8, 0.1]), 0.5)
  assert keep.tolist() == [1, 2]


class _Model(nn.Module):
  """Stand-in for the two-tower model: an `image_tower` and `encode_image`."""

  def setup(self):
    self.image_tower = resnet("resnet_tiny", dtype=jnp.float32)

  def encode_image(self, images, *, train):
    return self.image_tower(images, train=train)

  def __call__(self, images, train=False):
    return self.encode_image(images, train=train)


@functools.lru_cache(maxsize=None)
def _state(image_size=64):
  model = _Model()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)))
  return types.SimpleNamespace(apply_fn=model.apply, variables=lambda: dict(variables))


def test_resnet_pyramid_has_strides_8_16_32_and_leaves_the_tower_output_unchanged():
  state = _state()
  c = base_config()
  c.model.image.name = "resnet_tiny"
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 1)), jnp.float32)
  fn = multiscale.pyramid_fn(c.model)
  pyr, plain = jax.jit(lambda v, x: (fn(state.apply_fn, v, x), state.apply_fn(
      v, x, method="encode_image", train=False)))(state.variables(), images)
  assert [p.shape[1:3] for p in pyr] == [(8, 8), (4, 4), (2, 2)]
  np.testing.assert_allclose(pyr[-1].reshape(2, 4, -1), plain.local, rtol=1e-6)


def test_three_stage_resnet_pyramid_is_its_three_stages_at_strides_4_8_16():
  model = _S16Model()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
  c = base_config()
  c.model.image.name = "resnet_small_s16"
  assert multiscale.pyramid_stages("resnet_small_s16") == (1, 2, 3)
  images = jnp.zeros((2, 64, 64, 1), jnp.float32)
  pyr = jax.jit(lambda v, x: multiscale.pyramid_fn(c.model)(model.apply, v, x))(variables, images)
  assert [p.shape[1:3] for p in pyr] == [(16, 16), (8, 8), (4, 4)]
  head = yolo_head.YoloHead(num_classes=2, width=8)
  preds = head.apply(head.init(jax.random.key(1), pyr), pyr)
  assert [p.shape[1:3] for p in preds] == [(16, 16), (8, 8), (4, 4)]


class _S16Model(_Model):
  def setup(self):
    self.image_tower = resnet("resnet_small_s16", dtype=jnp.float32)


def test_vit_pyramid_is_the_last_grid_upsampled_itself_and_pooled():
  from mmrl.models.vit import vit  # pylint: disable=g-import-not-at-top
  tower = vit("vit_tiny", dtype=jnp.float32)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 1)), jnp.float32)
  variables = jax.jit(lambda k, x: tower.init(k, x, train=False))(jax.random.key(0), images)
  apply_fn = lambda v, x, train, method: tower.apply(v, x, train=train)
  c = base_config()
  c.model.image.name = "vit_tiny"
  pyr = jax.jit(lambda v, x: multiscale.pyramid_fn(c.model)(apply_fn, v, x))(variables, images)
  grid = 32 // tower.patch
  assert [p.shape[1:3] for p in pyr] == [(2 * grid, 2 * grid), (grid, grid), (grid // 2,) * 2]
  np.testing.assert_allclose(pyr[2][0, 0, 0], pyr[1][0, :2, :2].mean(axis=(0, 1)), rtol=1e-5)


def _toy_detection_set(n, size=64, seed=0):
  """Bright squares (class 1 of the label vocabulary) and dark-ringed squares (class 2)."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 0.1, (n, size, size, 1)).astype(np.float32)
  boxes = np.zeros((n, 2, 4), np.float32)
  labels = np.full((n, 2), -1, np.int32)
  for i in range(n):
    w = rng.uniform(0.2, 0.4)
    x0, y0 = rng.uniform(0, 1 - w, 2)
    cls = 1 + i % 2
    boxes[i, 0] = [x0, y0, x0 + w, y0 + w]
    labels[i, 0] = cls
    a, b = int(y0 * size), int((y0 + w) * size)
    c, d = int(x0 * size), int((x0 + w) * size)
    images[i, a:b, c:d] += 2.0 if cls == 1 else -2.0
  boxes[0, 1] = [0.9, 0.9, 1.2, 1.1]  # partly outside: clipped and counted
  labels[0, 1] = 1
  return images, boxes, labels, labels >= 0


def test_detection_evaluator_runs_frozen_and_finetuned_with_seeds_and_counts():
  images, boxes, labels, mask = _toy_detection_set(24)
  c = base_config()
  c.model.image.name = "resnet_tiny"
  c.eval.batch_size = 8
  d = c.eval.detection
  d.mode, d.fractions, d.seeds, d.steps, d.batch_size, d.width = "both", (0.5, 1.0), 2, 4, 8, 8
  ev = detection.DetectionEvaluator(c, ("A", "B", "C"))
  split = lambda name, n, images=False: {  # train = first 16, test = last 8
      k: v[:16] if name == c.data.train_split else v[16:]
      for k, v in {"image": images_, "boxes": boxes, "box_labels": labels,
                   "box_mask": mask}.items()}
  images_ = images
  out, pictures = ev(_state(), split)
  assert pictures == {}
  assert out["detection/num_classes_without_train_boxes"] == 1  # 'A' has no box
  assert out["detection/train_boxes_clipped"] == 1
  for mode in ("frozen", "finetune"):
    for pct in ("50pct", "100pct"):
      tag = f"detection/{mode}/{pct}"
      assert out[f"{tag}/num_seeds"] == 2
      for key in ("map", "map@0.5", "map@0.75", "froc"):
        assert 0 <= out[f"{tag}/{key}"] <= 1 and f"{tag}/{key}_std" in out
      seeds = [out[f"{tag}/seed_{s}/map"] for s in (c.seed, c.seed + 1)]
      assert out[f"{tag}/map"] == pytest.approx(np.mean(seeds))
      assert out[f"{tag}/map_std"] == pytest.approx(np.std(seeds, ddof=1))
  assert out["detection/frozen/50pct/num_train"] < out["detection/frozen/100pct/num_train"] == 16
  crc = lambda mode, s: out[f"detection/{mode}/50pct/seed_{s}/subset_crc32"]
  assert crc("frozen", c.seed) == crc("finetune", c.seed) != crc("frozen", c.seed + 1)
  assert not any(np.isnan(v) for v in out.values())


def test_unknown_detection_mode_names_the_config_key():
  c = base_config()
  c.eval.detection.mode = "linear"
  with pytest.raises(ValueError, match="config.eval.detection.mode"):
    detection.DetectionEvaluator(c, ("A",))
