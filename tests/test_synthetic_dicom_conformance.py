"""The synthetic DICOMs conform to their IODs (dciodvfy) and still cover the decoder's odd cases."""
from __future__ import annotations

import collections
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_pipeline import dicom_decode
from data_pipeline.synthetic import mimic_tree, phantom

DCIODVFY = shutil.which("dciodvfy")
# The only warnings dciodvfy may give; each is justified in mimic_tree's module docstring.
ALLOWED_WARNINGS = (
    re.compile(r"ProcedureCodeSequence.*CodingSchemeDesignator.*Unrecognized defined term = "
               r"<99MMRL>"),
    re.compile(r"ViewPosition.*Unrecognized defined term = <LATERAL>"),
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("conformance")
  mimic_tree.write_mimic_tree(out, num_patients=14, seed=1, image_size=96, lateral_fraction=0.3)
  return out


@pytest.fixture(scope="module")
def datasets(tree) -> dict[pathlib.Path, pydicom.Dataset]:
  return {p: pydicom.dcmread(p) for p in sorted(tree.rglob("*.dcm"))}


def _case(ds: pydicom.Dataset) -> tuple[str, ...]:
  rescaled = float(ds.get("RescaleSlope", 1)) != 1 or float(ds.get("RescaleIntercept", 0)) != 0
  return (ds.Modality, ds.PhotometricInterpretation, "rescale" if rescaled else "",
          "voi_lut" if "VOILUTSequence" in ds else "",
          "rle" if ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless else "")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools;"
                    " .ci/install installs it when run as root)")
def test_every_synthetic_dicom_passes_dciodvfy_with_no_error_and_only_the_listed_warnings(tree):
  files = sorted(tree.rglob("*.dcm"))
  assert len(files) > 10
  for path in files:
    run = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True,
                         timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    assert not errors, f"{path.name}: {errors}"
    unexplained = [l for l in lines if l.startswith("Warning")
                   and not any(p.search(l) for p in ALLOWED_WARNINGS)]
    assert not unexplained, f"{path.name}: {unexplained}"


def test_the_generated_set_covers_every_odd_but_valid_case_in_an_iod_that_allows_it(datasets):
  cases = collections.Counter(_case(ds) for ds in datasets.values())
  have = lambda pred: sum(n for c, n in cases.items() if pred(c))  # noqa: E731
  assert have(lambda c: c[:2] == ("CR", "MONOCHROME1"))
  assert have(lambda c: c[:2] == ("DX", "MONOCHROME1"))
  assert have(lambda c: c[0] == "CR" and c[2] == "rescale")
  assert have(lambda c: c[0] == "CR" and c[3] == "voi_lut")
  assert have(lambda c: c[0] == "DX" and c[3] == "voi_lut")
  assert have(lambda c: c[4] == "rle")
  assert not have(lambda c: c[0] == "DX" and c[2] == "rescale"), cases
  for ds in datasets.values():
    assert "WindowCenter" in ds and "WindowWidth" in ds
    if ds.Modality == "DX":
      assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, 0)
      assert ds.PresentationLUTShape == (
          "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY")


def test_the_decoder_matches_an_independent_reference_on_every_synthetic_file(datasets):
  for path, ds in datasets.items():
    values = apply_modality_lut(ds.pixel_array, ds)
    if np.array_equal(values, np.rint(values)):
      values = values.astype(np.int64)  # a VOI LUT is indexed by integers
    ref = apply_voi_lut(values, ds).astype(np.float64)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
      ref = 1.0 - ref
    image = dicom_decode.decode_dicom(path).image
    assert np.corrcoef(image.ravel(), ref.ravel())[0, 1] > 0.999, (path.name, _case(ds))


def test_a_voi_lut_file_decodes_through_the_lut_not_the_window():
  display = phantom.render_frontal(np.random.default_rng(0), 128, 112, [],
                                   pixel_spacing_mm=0.8).image
  stored, wc, ww = mimic_tree.encode_pixels(display, bits_stored=12, photometric="MONOCHROME2")
  kwargs = dict(seed=0, subject_id=10000032, study_id=50414267, dicom_id="0" * 8 + "-1" * 4,
                view="PA", photometric="MONOCHROME2", bits_stored=12, pixel_spacing_mm=0.8,
                window=(wc, ww), rescale=None, modality="DX", rle=False,
                study_date="21800506", study_time="120000.000", procedure="CHEST (PA)", sex="F",
                instance_number=1)
  with_lut = mimic_tree.dicom_bytes(mimic_tree.build_dataset(stored, voi_lut=True, **kwargs))
  window_only = mimic_tree.dicom_bytes(mimic_tree.build_dataset(stored, **kwargs))
  lut_image = dicom_decode.decode_dicom(with_lut).image
  window_image = dicom_decode.decode_dicom(window_only).image
  sigmoid = 1.0 / (1.0 + np.exp(-4.0 * (stored.astype(np.float64) - wc) / ww))
  np.testing.assert_allclose(lut_image, sigmoid, atol=1e-4)
  assert np.max(np.abs(lut_image - window_image)) > 0.05


def test_a_dx_file_with_a_rescale_is_refused_with_the_rule():
  stored = np.zeros((8, 8), np.uint16)
  with pytest.raises(ValueError, match="DX Image module allows only RescaleSlope 1"):
    mimic_tree.build_dataset(
        stored, seed=0, subject_id=1, study_id=2, dicom_id="x", view="PA",
        photometric="MONOCHROME2", bits_stored=12, pixel_spacing_mm=0.8, window=(2048, 4096),
        rescale=(2.0, 0.0), modality="DX", rle=False, study_date="21800506",
        study_time="120000.000", procedure="CHEST (PA)", sex="F", instance_number=1)
