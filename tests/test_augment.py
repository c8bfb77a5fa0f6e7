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


# ---- paper augmentations: Gaussian blur, pad-and-crop, presets (METHODS.md §2.4, §3.3, §4.3)


def _reference_blur(x, k, sigma):
  """Direct 2-D convolution with the outer-product kernel on a reflect-padded image (float64)."""
  t = np.arange(k) - (k - 1) / 2
  g = np.exp(-t ** 2 / (2 * sigma ** 2))
  kern = np.outer(g, g) / g.sum() ** 2
  r = k // 2
  p = np.pad(np.asarray(x, np.float64), r, mode="reflect")
  out = np.zeros(x.shape)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      out[i, j] = np.sum(p[i:i + k, j:j + k] * kern)
  return out


def test_gaussian_blur_equals_a_direct_2d_convolution_with_reflect_padding():
  x = np.random.default_rng(0).random((7, 9)).astype(np.float32)
  np.testing.assert_allclose(augment.gaussian_blur(x, 5, 1.3), _reference_blur(x, 5, 1.3),
                             rtol=1e-5, atol=1e-6)


def test_gaussian_blur_keeps_a_constant_image_and_spreads_an_impulse_by_sigma():
  const = np.full((12, 12), 0.3, np.float32)
  np.testing.assert_allclose(augment.gaussian_blur(const, 7, 2.0), const, atol=1e-6)
  impulse = np.zeros((41, 41), np.float32)
  impulse[20, 20] = 1.0
  y = augment.gaussian_blur(impulse, 31, 2.0)
  t = np.arange(41) - 20
  assert y.sum() == pytest.approx(1.0, abs=1e-5)
  assert np.sum(y.sum(0) * t ** 2) == pytest.approx(4.0, rel=1e-3)  # variance sigma^2


def test_blur_kernel_side_is_lovts_tenth_of_the_image_made_odd():
  assert [augment.gaussian_kernel_size(s, 0.1) for s in (224, 256, 64, 32)] == [23, 25, 7, 3]


def test_pad_crop_is_a_fixed_window_of_the_resized_padded_square_at_integer_offsets():
  rng = np.random.default_rng(0)
  # 48 x 64 source (H x W): square side 64, padded 8 rows above; resized to round(32/0.875)=37.
  for _ in range(20):
    x0, y0, w, h = augment.pad_crop_box(rng, 48, 64, 32, 0.875)
    scale = 64 / 37
    assert w == pytest.approx(32 * scale) and h == pytest.approx(32 * scale)
    j, i = x0 / scale, (y0 + 8) / scale
    assert abs(j - round(j)) < 1e-9 and abs(i - round(i)) < 1e-9 and 0 <= j <= 5 and 0 <= i <= 5
  with pytest.raises(ValueError, match="crop_fraction=1.5"):
    augment.pad_crop_box(rng, 48, 64, 32, 1.5)


def test_boxes_follow_the_pad_crop():
  box = (0.25, 0.3, 0.6, 0.7)
  img = _bright_rect_image(48, 64, box)
  aug = dict(NO_AFFINE, crop="pad_crop", crop_fraction=0.875)
  for seed in range(3):
    x, boxes, keep = augment.train_view(img, np.array([box]), np.random.default_rng(seed), 64,
                                        aug)
    assert keep[0]
    np.testing.assert_allclose(boxes[0], _bright_extent(x), atol=2 / 64)


def test_paper_presets_are_deterministic_under_a_seed_and_boxes_still_track():
  box = (0.3, 0.3, 0.6, 0.6)
  img = _bright_rect_image(64, 64, box)
  for preset in (base.convirt_augmentation, base.crop_only_augmentation):
    aug = preset(base.base_config()).data.augment
    a = augment.train_view(img, np.array([box]), np.random.default_rng(4), 64, aug)
    b = augment.train_view(img, np.array([box]), np.random.default_rng(4), 64, aug)
    c = augment.train_view(img, np.array([box]), np.random.default_rng(5), 64, aug)
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.float32 and 0.0 <= a[0].min() and a[0].max() <= 1.0
  # Blur alone (no geometry beyond the crop): the half-maximum extent is still the box.
  aug = dict(NO_AFFINE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), blur_sigma=(2.0, 3.0))
  x, boxes, _ = augment.train_view(img, np.array([box]), np.random.default_rng(1), 64, aug)
  np.testing.assert_allclose(boxes[0], _bright_extent(x), atol=2 / 64)


def test_blur_is_applied_with_blur_prob():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))
  plain = augment.train_view(img, np.zeros([0, 4]), np.random.default_rng(2), 32, NO_AFFINE)[0]
  never = augment.train_view(img, np.zeros([0, 4]), np.random.default_rng(2), 32,
                             dict(NO_AFFINE, blur_sigma=(0.1, 3.0), blur_prob=0.0))[0]
  always = augment.train_view(img, np.zeros([0, 4]), np.random.default_rng(2), 32,
                              dict(NO_AFFINE, blur_sigma=(0.1, 3.0), blur_prob=1.0))[0]
  np.testing.assert_array_equal(never, plain)
  assert always.std() < plain.std()  # noise is smoothed


def test_convirt_brightness_and_contrast_factors_span_0_6_to_1_4():
  aug = dict(NO_AFFINE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
             brightness=base.convirt_augmentation(base.base_config()).data.augment.brightness)
  flat = Image.fromarray(np.full((32, 32), 100, np.uint8))
  factors = [float(augment.train_view(flat, np.zeros([0, 4]), np.random.default_rng(s), 32,
                                      aug)[0].mean()) / (100 / 255) for s in range(60)]
  assert 0.6 <= min(factors) < 0.7 and 1.3 < max(factors) <= 1.4
  # Contrast scales the deviations from the image mean by a factor in the same range.
  two = np.full((32, 32), 60, np.uint8)
  two[:, 16:] = 140
  aug = dict(NO_AFFINE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), contrast=0.4)
  spread = [float(np.ptp(augment.train_view(Image.fromarray(two), np.zeros([0, 4]),
                                            np.random.default_rng(s), 32, aug)[0][:, 2:30]))
            / (80 / 255) for s in range(60)]
  assert 0.6 <= min(spread) < 0.7 and 1.3 < max(spread) <= 1.4 + 1e-5
