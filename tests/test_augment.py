"""Tests of the image views: determinism, boxes following the geometry, decoding, id hashing."""
from __future__ import annotations

import copy
import io

import numpy as np
from PIL import Image
import pytest

from data_pipeline import augment
from data_pipeline import errors
from data_pipeline import transforms
from experiments.configs import base

NO_AFFINE = dict(enabled=True, crop_scale=(0.5, 0.9), crop_ratio=(0.75, 1.333), rotation_deg=0.0,
                 translate=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, hflip=False)


def _bright_rect_image(h=48, w=64, box=(0.25, 0.3, 0.6, 0.7)) -> Image.Image:
  arr = np.zeros((h, w), np.uint8)
  x0, y0, x1, y1 = box
  arr[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)] = 255
  return Image.fromarray(arr)


def _bright_extent(x: np.ndarray, thr=0.5):
  ys, xs = np.nonzero(x > thr)
  n = x.shape[0]
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / n


def _png(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def test_train_view_is_a_function_of_the_seed():
  img = _bright_rect_image()
  aug = base.base_config().data.augment
  box = np.array([[0.25, 0.3, 0.6, 0.7]])
  a = augment.train_view(img, box, np.random.default_rng(7), 32, aug)
  b = augment.train_view(img, box, np.random.default_rng(7), 32, aug)
  c = augment.train_view(img, box, np.random.default_rng(8), 32, aug)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_boxes_follow_the_random_resized_crop():
  box = (0.25, 0.3, 0.6, 0.7)
  img = _bright_rect_image(box=box)
  x, boxes, keep = augment.train_view(img, np.array([box]), np.random.default_rng(1), 64,
                                      NO_AFFINE)
  assert keep[0]
  np.testing.assert_allclose(boxes[0], _bright_extent(x), atol=2 / 64)


def test_boxes_follow_rotation_and_translation_as_a_hull():
  box = (0.3, 0.3, 0.6, 0.6)
  img = _bright_rect_image(64, 64, box)
  aug = dict(NO_AFFINE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=10.0,
             translate=0.05, scale=(0.95, 1.05))
  x, boxes, _ = augment.train_view(img, np.array([box]), np.random.default_rng(3), 64, aug)
  extent = _bright_extent(x)
  tol = 2 / 64
  assert boxes[0, 0] <= extent[0] + tol and boxes[0, 1] <= extent[1] + tol
  assert boxes[0, 2] >= extent[2] - tol and boxes[0, 3] >= extent[3] - tol


def test_boxes_that_leave_the_crop_are_dropped_and_others_clipped():
  img = _bright_rect_image()
  aug = dict(NO_AFFINE, crop_scale=(0.3, 0.3), crop_ratio=(1.0, 1.0))
  rng = np.random.default_rng(5)
  x0, y0, cw, ch = augment.random_resized_crop_box(copy.deepcopy(rng), 48, 64, (0.3, 0.3),
                                                   (1.0, 1.0))
  w, h = 64, 48
  outside = [0.0, 0.0, 0.9 * x0 / w, 0.9 * y0 / h] if x0 > 2 and y0 > 2 else \
      [(x0 + cw) / w + 0.01, (y0 + ch) / h + 0.01, 1.0, 1.0]
  straddling = [0.0, 0.0, (x0 + cw / 2) / w, (y0 + ch / 2) / h]
  _, boxes, keep = augment.train_view(img, np.array([outside, straddling]), rng, 32, aug)
  assert keep.tolist() == [False, True]
  np.testing.assert_allclose(boxes[1], [0.0, 0.0, 0.5, 0.5], atol=1e-5)


def test_eval_view_pads_to_square_and_boxes_follow():
  box = (0.25, 0.3, 0.6, 0.7)
  img = _bright_rect_image(32, 64, box)  # Wide: padded above and below.
  x, boxes, keep = augment.eval_view(img, np.array([box]), 64)
  assert x.shape == (64, 64) and keep[0]
  assert not x[:16].any() and not x[48:].any()
  np.testing.assert_allclose(boxes[0], _bright_extent(x), atol=1 / 64)


def test_intensity_augmentation_stays_in_unit_range():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))
  aug = dict(NO_AFFINE, brightness=0.9, contrast=0.9)
  for seed in range(5):
    x, _, _ = augment.train_view(img, np.zeros([0, 4]), np.random.default_rng(seed), 32, aug)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_16_bit_png_decodes_to_unit_range_floats():
  arr = np.array([[0, 65535], [32768, 1000]], np.uint16)
  img = augment.decode_png(_png(arr))
  np.testing.assert_allclose(augment.to_float01(img), arr / 65535.0, atol=1e-6)


def test_garbage_png_bytes_raise_bad_image_naming_the_item():
  with pytest.raises(errors.BadImageError, match="img42"):
    augment.decode_png(b"\x89PNG not really", item="img42")


def test_id_hash_is_stable_and_31_bit():
  assert transforms.stable_id_hash("50414267") == transforms.stable_id_hash("50414267")
  assert transforms.stable_id_hash("s1") != transforms.stable_id_hash("s2")
  assert transforms.stable_id_hash("p10000032") == 973715296  # zlib.crc32 & 0x7FFFFFFF.
