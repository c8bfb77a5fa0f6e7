"""Tests of the synthetic data set: phantoms, reports + labels, and the MIMIC-layout DICOM tree."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import re

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFilter
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_pipeline.record_spec import CHEXPERT_LABELS
from data_pipeline.synthetic import mimic_tree, phantom, report_writer
from data_pipeline.synthetic.phantom import Finding

_DICOM_ID = r"[0-9a-f]{8}(-[0-9a-f]{8}){4}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("mimic")
  mimic_tree.write_mimic_tree(out, num_patients=8, seed=3, image_size=192, lateral_fraction=0.3)
  return out


def _csv(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as fh:
    return list(csv.DictReader(fh))


def _annotations(root: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (root / mimic_tree.ANNOTATIONS_JSONL).read_text().splitlines()]


def _display(ds: pydicom.Dataset) -> np.ndarray:
  """Independent reference: modality LUT, VOI window, MONOCHROME1 inverted -> [0, 1]."""
  img = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
  img = (img - img.min()) / (img.max() - img.min())
  return 1.0 - img if ds.PhotometricInterpretation == "MONOCHROME1" else img


def _tree_digest(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _render(findings, seed=0, size=(512, 448)) -> phantom.Phantom:
  return phantom.render_frontal(np.random.default_rng(seed), *size, findings,
                                pixel_spacing_mm=0.8)


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
  img = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(size))
  return np.asarray(img) > 0


def test_every_metadata_row_has_its_dicom_and_report_in_the_mimic_layout(tree):
  rows = _csv(tree / mimic_tree.METADATA_CSV)
  assert rows and list(rows[0]) == list(mimic_tree.METADATA_COLUMNS)
  for r in rows:
    assert re.fullmatch(_DICOM_ID, r["dicom_id"])
    subject, study = r["subject_id"], r["study_id"]
    assert len(subject) == 8 and len(study) == 8
    dcm = tree / f"files/p{subject[:2]}/p{subject}/s{study}/{r['dicom_id']}.dcm"
    assert dcm.is_file()
    assert (tree / f"files/p{subject[:2]}/p{subject}/s{study}.txt").is_file()
  on_disk = {p.stem for p in tree.rglob("*.dcm")}
  assert on_disk == {r["dicom_id"] for r in rows}


def test_csvs_agree_on_ids_and_the_split_is_by_patient(tree):
  meta = _csv(tree / mimic_tree.METADATA_CSV)
  split = _csv(tree / mimic_tree.SPLIT_CSV)
  chex = _csv(tree / mimic_tree.CHEXPERT_CSV)
  assert {(r["dicom_id"], r["study_id"], r["subject_id"]) for r in meta} == {
      (r["dicom_id"], r["study_id"], r["subject_id"]) for r in split}
  assert {(r["subject_id"], r["study_id"]) for r in meta} == {
      (r["subject_id"], r["study_id"]) for r in chex}
  assert list(chex[0]) == ["subject_id", "study_id", *CHEXPERT_LABELS]
  splits_of_subject: dict[str, set] = {}
  for r in split:
    assert r["split"] in ("train", "validate", "test")
    splits_of_subject.setdefault(r["subject_id"], set()).add(r["split"])
  assert all(len(s) == 1 for s in splits_of_subject.values())
  assert {r["dicom_id"] for r in meta} == {a["dicom_id"] for a in _annotations(tree)}


def test_every_dicom_decodes_with_pydicom_and_matches_its_metadata(tree):
  meta = {r["dicom_id"]: r for r in _csv(tree / mimic_tree.METADATA_CSV)}
  for path in tree.rglob("*.dcm"):
    ds = pydicom.dcmread(path)
    r = meta[path.stem]
    assert ds.pixel_array.shape == (int(r["Rows"]), int(r["Columns"]))
    assert ds.PatientID == r["subject_id"] and ds.StudyID == r["study_id"]
    assert ds.ViewPosition == r["ViewPosition"]
    assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
    assert ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
    assert int(ds.pixel_array.max()) < (1 << ds.BitsStored)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("rle", [False, True])
@pytest.mark.parametrize("rescale", [None, (2.0, 0.0), (1.0, -1024.0)])
def test_stored_pixels_decode_back_to_the_same_display_image(photometric, rle, rescale):
  display = _render([], seed=5, size=(160, 128)).image
  slope, intercept = rescale or (1.0, 0.0)
  stored, wc, ww = mimic_tree.encode_pixels(display, bits_stored=14, photometric=photometric,
                                            slope=slope, intercept=intercept)
  ds = mimic_tree.build_dataset(
      stored, seed=0, subject_id=10000032, study_id=50414267, dicom_id="0" * 8 + "-1" * 4,
      view="PA", photometric=photometric, bits_stored=14, pixel_spacing_mm=0.8,
      window=(wc, ww), rescale=rescale, modality="CR", rle=rle, study_date="21800506",
      study_time="120000.000", procedure="CHEST (PA)", sex="F", instance_number=1)
  back = pydicom.dcmread(io.BytesIO(mimic_tree.dicom_bytes(ds)))
  expected_ts = pydicom.uid.RLELossless if rle else pydicom.uid.ExplicitVRLittleEndian
  assert back.file_meta.TransferSyntaxUID == expected_ts
  np.testing.assert_array_equal(back.pixel_array, stored)
  shown = _display(back)
  ref = (display - display.min()) / (display.max() - display.min())
  inside = (display > np.percentile(display, 2)) & (display < np.percentile(display, 98))
  assert np.corrcoef(shown[inside], ref[inside])[0, 1] > 0.99


def test_boxes_are_the_tight_bounding_boxes_of_the_masks(tree):
  checked = 0
  for a in _annotations(tree):
    for f in a["findings"]:
      mask = np.asarray(Image.open(tree / f["mask"]))
      assert mask.shape == (a["rows"], a["columns"]) and set(np.unique(mask)) <= {0, 255}
      ys, xs = np.nonzero(mask)
      assert f["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      checked += 1
  assert checked > 0


def test_laterals_have_no_annotated_findings(tree):
  laterals = [a for a in _annotations(tree) if a["view"] == "LATERAL"]
  assert laterals and all(a["findings"] == [] for a in laterals)


@pytest.mark.parametrize("finding", [
    Finding("nodule", "right", "upper", 16.0),
    Finding("consolidation", "left", "middle", 60.0),
])
def test_nodule_and_consolidation_are_brighter_than_the_lung_around_them(finding):
  ph = _render([finding], seed=1)
  (rf,) = ph.findings
  ring = _dilate(rf.mask, 21) & ~_dilate(rf.mask, 5) & ph.lungs
  assert ph.image[rf.mask].mean() - ph.image[ring].mean() > 0.08


@pytest.mark.parametrize("finding,sign", [
    (Finding("nodule", "left", "lower", 14.0), 1),
    (Finding("consolidation", "right", "lower", 50.0), 1),
    (Finding("pleural_effusion", "left", "lower", 50.0), 1),
    (Finding("atelectasis", "right", "middle", 45.0), 1),
    (Finding("support_device", None, "upper", 0.0, device="et_tube"), 1),
    (Finding("pneumothorax", "right", "upper", 30.0), -1),
])
def test_a_finding_changes_the_image_inside_its_mask(finding, sign):
  with_it = _render([finding], seed=2)
  without = _render([], seed=2)
  (rf,) = with_it.findings
  change = with_it.image[rf.mask].mean() - without.image[rf.mask].mean()
  assert sign * change > 0.04, f"{finding.name}: mean change {change:+.3f} in its mask"


def test_pneumothorax_lies_on_the_patients_side_which_is_image_left_for_right():
  ph = _render([Finding("pneumothorax", "right", "upper", 25.0)], seed=4)
  xmin, _, xmax, _ = ph.findings[0].box
  assert xmax <= ph.image.shape[1] // 2 + 5


def test_cardiomegaly_has_a_cardiothoracic_ratio_above_one_half_and_boxes_the_heart():
  ph = _render([Finding("cardiomegaly", None, None, 0.0)], seed=6)
  normal = _render([], seed=6)
  assert ph.cardiothoracic_ratio > 0.5 > normal.cardiothoracic_ratio
  xmin, _, xmax, _ = ph.findings[0].box
  assert abs((xmax - xmin) * 0.8 - ph.findings[0].finding.size_mm) < 3.0


def test_reports_name_each_findings_side_and_a_synonym_of_it(tree):
  studies = {}
  for a in _annotations(tree):
    studies.setdefault((a["subject_id"], a["study_id"]), []).extend(a["findings"])
  mentioned = 0
  for (subject, study), findings in studies.items():
    text = (tree / mimic_tree.report_relpath(subject, study)).read_text().lower()
    for f in findings:
      assert any(w in text for w in report_writer.FINDING_SYNONYMS[f["name"]]), (f, text)
      if f["side"]:
        assert f["side"] in text, (f, text)
      mentioned += 1
  assert mentioned > 0


def test_labels_agree_with_the_annotated_findings(tree):
  labels = {(int(r["subject_id"]), int(r["study_id"])): r
            for r in _csv(tree / mimic_tree.CHEXPERT_CSV)}
  for a in _annotations(tree):
    row = labels[(a["subject_id"], a["study_id"])]
    for f in a["findings"]:
      expected = "1.0" if f["certainty"] == "present" else "-1.0"
      assert row[f["chexpert_label"]] in ("1.0", expected) and row[f["chexpert_label"]] != ""
    if a["view"] != "LATERAL" and not [f for f in a["findings"] if f["name"] != "support_device"]:
      assert row["No Finding"] == "1.0"


def test_present_uncertain_and_negated_findings_get_one_minus_one_and_zero():
  findings = [Finding("nodule", "right", "upper", 12.0),
              Finding("pleural_effusion", "left", "lower", 25.0, uncertain=True)]
  for seed in range(20):
    report = report_writer.write_report(findings, np.random.default_rng(seed))
    assert report.labels["Lung Lesion"] == 1.0
    assert report.labels["Pleural Effusion"] == -1.0
    assert report.labels["No Finding"] is None
    assert "12 mm" in report.text and "possible" in report.text.lower()
    negated = [k for k, v in report.labels.items() if v == 0.0]
    assert negated
    for label in negated:
      assert any(text in report.findings for text, targets in report_writer.NEGATIONS
                 if label in targets)


def test_a_normal_study_has_no_finding_one_and_no_positive_label():
  for seed in range(10):
    report = report_writer.write_report([], np.random.default_rng(seed))
    assert report.labels["No Finding"] == 1.0
    assert all(v in (None, 0.0) for k, v in report.labels.items() if k != "No Finding")
    for section in ("FINAL REPORT", "EXAMINATION:", "INDICATION:", "___", "COMPARISON:",
                    "FINDINGS:", "IMPRESSION:"):
      assert section in report.text


def test_about_a_quarter_of_studies_are_normal():
  counts = [len(phantom.sample_findings(np.random.default_rng(i))) for i in range(1000)]
  assert 0.22 < counts.count(0) / len(counts) < 0.34
  assert max(counts) == 3


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
  kwargs = dict(num_patients=2, studies_per_patient=(1, 2), image_size=96)
  mimic_tree.write_mimic_tree(tmp_path / "a", seed=11, **kwargs)
  mimic_tree.write_mimic_tree(tmp_path / "b", seed=11, **kwargs)
  mimic_tree.write_mimic_tree(tmp_path / "c", seed=12, **kwargs)
  a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
  assert a == b
  assert set(a) != set(c)


def test_worker_processes_write_the_same_tree_as_one_process(tmp_path):
  kwargs = dict(num_patients=3, studies_per_patient=(1, 1), image_size=96, seed=2)
  mimic_tree.write_mimic_tree(tmp_path / "one", workers=1, **kwargs)
  mimic_tree.write_mimic_tree(tmp_path / "two", workers=2, **kwargs)
  assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_patients=0), "num_patients=0"),
    (dict(num_patients=1, studies_per_patient=(2, 1)), "studies_per_patient=(2, 1)"),
    (dict(num_patients=1, image_size=16), "image_size=16"),
    (dict(num_patients=1, lateral_fraction=1.5), "lateral_fraction=1.5"),
])
def test_bad_arguments_are_named_with_the_fix(tmp_path, kwargs, needle):
  with pytest.raises(ValueError, match=re.escape(needle)):
    mimic_tree.write_mimic_tree(tmp_path, **kwargs)


def test_writing_over_an_existing_tree_is_refused(tmp_path):
  mimic_tree.write_mimic_tree(tmp_path, num_patients=1, studies_per_patient=(1, 1), image_size=96)
  with pytest.raises(ValueError, match="already holds a tree"):
    mimic_tree.write_mimic_tree(tmp_path, num_patients=1, image_size=96, seed=1)
