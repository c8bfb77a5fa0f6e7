"""check_image, resize_short_side, PNG encode/decode and image_io.load_image (PNG, JPEG, RGB, DICOM)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline import errors
from data_pipeline import image_codec
from data_pipeline import image_io


def _ramp(h=37, w=53, seed=0):
  return np.random.default_rng(seed).random((h, w)).astype(np.float32)


def _first_row(shared_data, part):
  with open(shared_data / part / "test.jsonl") as f:
    return json.loads(f.readline())


def test_8_bit_png_round_trip_is_exact_to_quantisation():
  image = _ramp()
  out = image_codec.decode_png(image_codec.encode_png(image, 8))
  assert out.dtype == np.uint8 and out.shape == image.shape
  np.testing.assert_array_equal(out, np.rint(image * 255).astype(np.uint8))


def test_16_bit_png_round_trip_is_exact_to_quantisation():
  image = _ramp()
  out = image_codec.decode_png(image_codec.encode_png(image, 16))
  assert out.dtype == np.uint16 and out.shape == image.shape
  np.testing.assert_array_equal(out, np.rint(image * 65535).astype(np.uint16))


def test_16_bit_png_is_a_single_channel_16_bit_png_file():
  data = image_codec.encode_png(_ramp(), 16)
  assert data[24] == 16 and data[25] == 0  # IHDR bit depth 16, colour type 0 (grey)


def test_encode_png_clips_values_outside_the_unit_range():
  image = np.array([[-0.5, 0.25], [1.0, 7.0]], dtype=np.float32)
  np.testing.assert_array_equal(image_codec.decode_png(image_codec.encode_png(image)),
                                [[0, 64], [255, 255]])


def test_encode_png_rejects_other_bit_depths():
  with pytest.raises(ValueError, match="bit_depth"):
    image_codec.encode_png(_ramp(), 12)


def test_resize_short_side_keeps_the_aspect_ratio_of_a_wide_image():
  out = image_codec.resize_short_side(_ramp(100, 300), 50)
  assert out.shape == (50, 150) and out.dtype == np.float32


def test_resize_short_side_keeps_the_aspect_ratio_of_a_tall_image():
  assert image_codec.resize_short_side(_ramp(977, 920), 256).shape == (272, 256)


def test_resize_short_side_is_a_no_op_at_the_target_size():
  image = _ramp(256, 300)
  np.testing.assert_array_equal(image_codec.resize_short_side(image, 256), image)


def test_resize_short_side_never_upsamples_unless_allowed():
  image = _ramp(64, 80)
  assert image_codec.resize_short_side(image, 128).shape == (64, 80)
  assert image_codec.resize_short_side(image, 128, allow_upsample=True).shape == (128, 160)


def test_resize_short_side_antialiases_a_fine_checkerboard_to_grey():
  board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
  out = image_codec.resize_short_side(board, 16)
  assert np.all(np.abs(out - 0.5) < 0.05)


def test_check_image_accepts_a_normal_image():
  image_codec.check_image(_ramp(), "ok")


def test_check_image_rejects_a_zero_size_image():
  with pytest.raises(errors.BadImageError, match="empty") as info:
    image_codec.check_image(np.zeros((0, 5), np.float32), "img-1")
  assert info.value.item == "img-1"


def test_check_image_rejects_a_constant_image():
  with pytest.raises(errors.BadImageError, match="constant"):
    image_codec.check_image(np.full((4, 4), 0.3, np.float32), "img-2")


def test_check_image_rejects_a_nan_image():
  image = _ramp()
  image[3, 4] = np.nan
  with pytest.raises(errors.BadImageError, match="1 of 1961 pixels are NaN"):
    image_codec.check_image(image, "img-3")


def test_load_image_reads_an_nih_png_as_float_in_unit_range(shared_data):
  row = _first_row(shared_data, "nih_cxr14")
  image = image_io.load_image(shared_data / "nih_cxr14" / row["image"])
  assert image.dtype == np.float32 and image.shape == (row["height"], row["width"])
  assert 0.0 <= image.min() < image.max() <= 1.0


def test_load_image_reads_a_covid_png_with_its_manifest_size(shared_data):
  row = _first_row(shared_data, "covid_cxr")
  image = image_io.load_image(shared_data / "covid_cxr" / row["image"])
  assert image.shape == (row["height"], row["width"])
  assert 0.0 <= image.min() < image.max() <= 1.0


def test_load_image_reads_a_16_bit_png_at_full_precision(tmp_path):
  image = _ramp()
  path = tmp_path / "x16.png"
  path.write_bytes(image_codec.encode_png(image, 16))
  np.testing.assert_allclose(image_io.load_image(path), image, atol=0.5 / 65535 + 1e-7)


def test_load_image_converts_rgb_jpeg_to_grey(tmp_path):
  grey = (np.indices((40, 60)).sum(axis=0) * 2 % 256).astype(np.uint8)
  path = tmp_path / "x.jpg"
  Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").save(path, quality=95)
  image = image_io.load_image(path)
  assert image.shape == (40, 60)
  assert np.corrcoef(image.ravel(), grey.ravel())[0, 1] > 0.95


def test_load_image_detects_dicom_by_magic_without_extension(shared_data, tmp_path):
  path = tmp_path / "no_extension"
  path.write_bytes((shared_data / "dicom" / "CT_small.dcm").read_bytes())
  image = image_io.load_image(path)
  assert image.shape == (128, 128) and image.dtype == np.float32


def test_load_image_reads_dicom_by_extension(shared_data):
  image = image_io.load_image(shared_data / "dicom" / "MR_small_RLE.dcm")
  assert image.shape == (64, 64)


def test_load_image_of_a_missing_path_raises_missing_file_error(tmp_path):
  with pytest.raises(errors.MissingFileError):
    image_io.load_image(tmp_path / "none.png")


def test_load_image_of_a_corrupt_png_raises_bad_image_error(tmp_path):
  path = tmp_path / "broken.png"
  path.write_bytes(image_codec.encode_png(_ramp())[:40])
  with pytest.raises(errors.BadImageError, match="broken.png"):
    image_io.load_image(path)
