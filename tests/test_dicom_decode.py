"""decode_dicom on every real DICOM file of shared/data/dicom, and on broken/edge-case input."""
from __future__ import annotations

import csv
import io

import numpy as np
import pydicom
import pytest

from data_pipeline import dicom_decode
from data_pipeline import errors
from data_pipeline import image_codec


def _inventory(shared_data):
  with open(shared_data / "dicom" / "inventory.csv", newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dicom_dir(shared_data):
  return shared_data / "dicom"


@pytest.fixture(scope="module")
def decoded(shared_data):
  """Every inventory file decoded once: file name -> (inventory row, DecodedDicom)."""
  out = {}
  for row in _inventory(shared_data):
    out[row["file"]] = (row, dicom_decode.decode_dicom(shared_data / "dicom" / row["file"]))
  return out


def _to_bytes(ds: pydicom.Dataset) -> bytes:
  buf = io.BytesIO()
  ds.save_as(buf)
  return buf.getvalue()


def test_every_inventory_file_decodes_to_the_inventory_shape(decoded):
  assert len(decoded) == 12
  for name, (row, result) in decoded.items():
    assert result.image.shape == (int(row["rows"]), int(row["columns"])), name


def test_every_file_decodes_to_finite_non_constant_float32_in_unit_range(decoded):
  for name, (_, result) in decoded.items():
    image = result.image
    assert image.dtype == np.float32, name
    assert np.all(np.isfinite(image)), name
    assert image.min() >= 0.0 and image.max() <= 1.0, name
    assert image.max() - image.min() > 0.1, name


def test_header_fields_match_the_inventory(decoded):
  for name, (row, result) in decoded.items():
    assert result.photometric == row["photometric"], name
    assert result.bits_stored == int(row["bits_stored"]), name
    assert result.transfer_syntax == row["transfer_syntax_uid"], name


def test_view_position_is_read_upper_case_and_empty_when_absent(decoded):
  assert decoded["RG1_J2KI.dcm"][1].view == "PA"
  assert decoded["CT_small.dcm"][1].view == ""


def test_zero_pixel_spacing_is_reported_as_unknown_and_real_spacing_is_kept(decoded):
  assert decoded["RG1_half_MONO1_UNC.dcm"][1].pixel_spacing is None  # header says 0.0\0.0
  assert decoded["CT_small.dcm"][1].pixel_spacing == pytest.approx((0.661468, 0.661468))


def test_mono1_uncompressed_rle_and_mono2_copies_decode_to_the_same_display_image(decoded):
  mono1 = decoded["RG1_half_MONO1_UNC.dcm"][1].image
  rle = decoded["RG1_half_MONO1_RLE.dcm"][1].image
  mono2 = decoded["RG1_half_MONO2_UNC.dcm"][1].image
  np.testing.assert_array_equal(mono1, rle)
  # The MONOCHROME2 file stores 32767 - v with the window centre mirrored; the linear window's
  # half-step offset leaves a difference of 1/(width - 1).
  assert np.max(np.abs(mono1 - mono2)) < 1e-4


def test_lossy_jpeg2000_full_size_matches_the_half_size_decimated_copy(decoded):
  full = decoded["RG1_J2KI.dcm"][1].image
  half = decoded["RG1_half_MONO2_UNC.dcm"][1].image
  h, w = half.shape
  small = full[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
  assert np.corrcoef(small.ravel(), half.ravel())[0, 1] > 0.95
  resized = image_codec.resize_short_side(full, min(h, w))
  crop = resized[:h, :w]
  assert np.corrcoef(crop.ravel(), half[:crop.shape[0], :crop.shape[1]].ravel())[0, 1] > 0.95


def test_chest_radiograph_is_bright_where_dense(decoded):
  # MONOCHROME1 source: after inversion the spine/mediastinum column is brighter than the lungs.
  image = decoded["RG1_half_MONO1_UNC.dcm"][1].image
  h, w = image.shape
  rows = slice(h // 4, 3 * h // 4)
  centre = image[rows, int(0.45 * w):int(0.55 * w)].mean()
  lungs = np.mean([image[rows, int(0.15 * w):int(0.35 * w)].mean(),
                   image[rows, int(0.65 * w):int(0.85 * w)].mean()])
  assert centre > lungs + 0.1


def test_multiframe_file_decodes_the_requested_frame(dicom_dir):
  path = dicom_dir / "emri_small_jpeg_ls_lossless.dcm"
  first = dicom_decode.decode_dicom(path, frame=0).image
  last = dicom_decode.decode_dicom(path, frame=9).image
  assert first.shape == last.shape == (64, 64)
  assert not np.array_equal(first, last)


def test_frame_beyond_the_last_raises_dicom_decode_error(dicom_dir):
  with pytest.raises(errors.DicomDecodeError, match="frame 10 requested but the file has 10"):
    dicom_decode.decode_dicom(dicom_dir / "emri_small_jpeg_ls_lossless.dcm", frame=10)


def test_bytes_input_decodes_like_the_path(dicom_dir):
  path = dicom_dir / "MR_small_RLE.dcm"
  from_bytes = dicom_decode.decode_dicom(path.read_bytes(), item_id="mr")
  np.testing.assert_array_equal(from_bytes.image, dicom_decode.decode_dicom(path).image)


def test_multi_valued_window_uses_the_first_window(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.WindowCenter, ds.WindowWidth = 40, 400
  single = dicom_decode.decode_dicom(_to_bytes(ds)).image
  ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
  multi = dicom_decode.decode_dicom(_to_bytes(ds)).image
  np.testing.assert_array_equal(single, multi)


def test_window_maps_values_linearly_per_the_dicom_formula(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.WindowCenter, ds.WindowWidth = 40, 400
  image = dicom_decode.decode_dicom(_to_bytes(ds)).image
  hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  expected = np.clip((hu - 39.5) / 399.0 + 0.5, 0.0, 1.0)
  np.testing.assert_allclose(image, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied_in_preference_to_the_window(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  hu = ds.pixel_array.astype(np.int64) + int(ds.RescaleIntercept)
  lo, n = int(hu.min()), int(hu.max() - hu.min()) + 1
  item = pydicom.Dataset()
  item.LUTDescriptor = [n, lo, 16]
  item.LUTData = np.linspace(65535, 0, n).astype("<u2").tobytes()  # a decreasing LUT (OW)
  ds.VOILUTSequence = pydicom.Sequence([item])
  ds.WindowCenter, ds.WindowWidth = 40, 400
  image = dicom_decode.decode_dicom(_to_bytes(ds)).image
  assert np.corrcoef(image.ravel(), hu.ravel())[0, 1] < -0.99


def test_modality_lut_sequence_file_uses_the_lut(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "mlut_18.dcm")
  mapped = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
  image = dicom_decode.decode_dicom(dicom_dir / "mlut_18.dcm").image
  assert np.corrcoef(image.ravel(), mapped.ravel())[0, 1] > 0.95


def test_truncated_dicom_raises_dicom_decode_error(dicom_dir):
  raw = (dicom_dir / "RG1_half_MONO1_UNC.dcm").read_bytes()
  with pytest.raises(errors.DicomDecodeError) as info:
    dicom_decode.decode_dicom(raw[:len(raw) // 2], item_id="half.dcm")
  assert info.value.item == "half.dcm"
  assert not isinstance(info.value, errors.NoPixelDataError)


def test_truncated_compressed_dicom_raises_dicom_decode_error(dicom_dir):
  raw = (dicom_dir / "RG1_half_MONO1_RLE.dcm").read_bytes()
  with pytest.raises(errors.DicomDecodeError, match="truncated"):
    dicom_decode.decode_dicom(raw[:len(raw) // 2], item_id="half_rle.dcm")


def test_dicom_cut_inside_the_header_is_truncated_not_missing_pixel_data(dicom_dir):
  raw = (dicom_dir / "RG1_half_MONO1_UNC.dcm").read_bytes()
  with pytest.raises(errors.DicomDecodeError, match="truncated") as info:
    dicom_decode.decode_dicom(raw[:1000])
  assert not isinstance(info.value, errors.NoPixelDataError)


def test_bytes_that_are_not_dicom_raise_dicom_decode_error():
  with pytest.raises(errors.DicomDecodeError, match="not a DICOM"):
    dicom_decode.decode_dicom(b"\x89PNG" + bytes(300), item_id="x.png")


def test_missing_file_raises_missing_file_error(tmp_path):
  with pytest.raises(errors.MissingFileError):
    dicom_decode.decode_dicom(tmp_path / "nope.dcm")


def test_dicom_without_pixel_data_raises_no_pixel_data_error(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  del ds.PixelData
  with pytest.raises(errors.NoPixelDataError, match="no \\(7FE0,0010\\) Pixel Data") as info:
    dicom_decode.decode_dicom(_to_bytes(ds), item_id="sr.dcm")
  assert info.value.item == "sr.dcm"


def test_private_transfer_syntax_raises_unsupported_transfer_syntax_error(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"
  with pytest.raises(errors.UnsupportedTransferSyntaxError,
                     match="1.2.826.0.1.3680043.9.9999.1 .*gdcmconv"):
    dicom_decode.decode_dicom(_to_bytes(ds), item_id="private.dcm")


def test_zero_size_dicom_raises_bad_image_error(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.Rows = 0
  ds.PixelData = b""
  with pytest.raises(errors.BadImageError, match="empty"):
    dicom_decode.decode_dicom(_to_bytes(ds))


def test_constant_dicom_raises_bad_image_error(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.PixelData = np.full((ds.Rows, ds.Columns), 7, dtype=ds.pixel_array.dtype).tobytes()
  with pytest.raises(errors.BadImageError, match="constant"):
    dicom_decode.decode_dicom(_to_bytes(ds))


def test_window_outside_the_data_falls_back_to_the_percentile_window(dicom_dir):
  ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
  ds.WindowCenter, ds.WindowWidth = 1e6, 10
  image = dicom_decode.decode_dicom(_to_bytes(ds)).image
  assert image.max() - image.min() > 0.5
