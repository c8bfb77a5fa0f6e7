"""Conversion: MIMIC tree / manifests / shared-data presets -> shards, errors.jsonl, info."""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from data_pipeline import convert
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline.converters import manifest
from data_pipeline.converters import mimic

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough.

 FINDINGS:
 The lungs are clear. There is no pleural effusion.

 IMPRESSION:
 No acute cardiopulmonary process.
"""


# ----------------------------------------------------------------------------- fixtures

def _write_dicom(path: pathlib.Path, *, seed: int, view: str = "PA", rows: int = 64,
                 cols: int = 56, pixels: bool = True) -> None:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed)])
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "CR"
  ds.PatientID = f"p{seed}"
  ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{seed}"])
  ds.ViewPosition = view
  if pixels:
    rng = np.random.default_rng(seed)
    img = (np.linspace(0, 4000, rows * cols).reshape(rows, cols)
           + rng.integers(0, 50, (rows, cols))).astype(np.uint16)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list], *, gz: bool) -> None:
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(header)
  w.writerows(rows)
  if gz:
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(buf.getvalue().encode(),
                                                                mtime=0))
  else:
    path.write_text(buf.getvalue())


def make_mimic_tree(root: pathlib.Path, *, bad: bool = False) -> pathlib.Path:
  """3 good patients (4 images), plus, with bad=True, one study per bad-input case."""
  # (subject, study, dicom_id, view, kind); kind picks the image/report defect.
  studies = [("10000001", "50000001", "d1a", "PA", "ok"), ("10000001", "50000001", "d1b",
                                                           "LATERAL", "ok"),
             ("10000002", "50000002", "d2a", "AP", "ok"), ("10000003", "50000003", "d3a", "PA",
                                                           "ok")]
  if bad:
    studies += [("10000004", "50000004", "d4_truncated", "PA", "truncated"),
                ("10000005", "50000005", "d5_nopixels", "PA", "nopixels"),
                ("10000006", "50000006", "d6_emptyreport", "PA", "empty_report"),
                ("10000007", "50000007", "d7_latin1", "PA", "latin1_report"),
                ("10000008", "50000008", "d8_nosection", "PA", "no_section"),
                ("10000009", "50000009", "d9_notdicom", "PA", "not_dicom")]
  meta, chex, split = [], [], []
  for n, (subj, study, dicom_id, view, kind) in enumerate(studies):
    sdir = root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}"
    dcm = sdir / f"{dicom_id}.dcm"
    _write_dicom(dcm, seed=n, view=view, pixels=kind != "nopixels")
    if kind == "truncated":
      dcm.write_bytes(dcm.read_bytes()[:400])
    elif kind == "not_dicom":
      dcm.write_bytes(b"this is not a DICOM file\n" * 40)
    report = sdir.with_suffix(".txt")
    if kind == "empty_report":
      report.write_text("   \n")
    elif kind == "latin1_report":
      report.write_bytes("FINDINGS: Opacit\u00e9 basale.\nIMPRESSION: Pneumonie.".encode("latin-1"))
    elif kind == "no_section":
      report.write_text("Heart size is normal. Lungs are clear.\n")
    else:
      report.write_text(REPORT)
    meta.append([dicom_id, subj, study, "CHEST (PA AND LAT)", view, 64, 56])
    split.append([dicom_id, study, subj, "validate" if subj == "10000003" else "train"])
  for subj, study in sorted({(s[0], s[1]) for s in studies}):
    values = ["1.0" if i == 1 else ("-1.0" if i == 2 else ("" if i > 5 else "0.0"))
              for i in range(14)]
    chex.append([subj, study] + values)
  _write_csv(root / mimic.METADATA, ["dicom_id", "subject_id", "study_id", "PerformedProcedure"
                                     "StepDescription", "ViewPosition", "Rows", "Columns"],
             meta, gz=True)
  _write_csv(root / mimic.CHEXPERT, ["subject_id", "study_id", *record_spec.CHEXPERT_LABELS],
             chex, gz=True)
  _write_csv(root / mimic.SPLIT, ["dicom_id", "study_id", "subject_id", "split"], split, gz=False)
  # Synthetic ground truth for d1a: one box and one mask in DICOM pixel coordinates (56 x 64).
  (root / "annotations" / "masks").mkdir(parents=True)
  mask = np.zeros((64, 56), np.uint8)
  mask[16:32, 8:24] = 255
  Image.fromarray(mask).save(root / "annotations" / "masks" / "d1a_0.png")
  ann = {"dicom_id": "d1a", "study_id": "50000001", "subject_id": "10000001", "view": "PA",
         "findings": [{"name": "nodule", "chexpert_label": "Lung Lesion", "side": "right",
                       "zone": "upper", "size_mm": 12, "box": [8, 16, 24, 32],
                       "mask": "annotations/masks/d1a_0.png"}]}
  (root / mimic.ANNOTATIONS).write_text(json.dumps(ann) + "\n")
  return root


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> pathlib.Path:
  return make_mimic_tree(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def bad_mimic(tmp_path_factory) -> tuple[pathlib.Path, dict, list[dict]]:
  root = make_mimic_tree(tmp_path_factory.mktemp("mimic_bad"), bad=True)
  out = root / "out"
  info = convert.convert(mimic.list_mimic(root), out, _opts(short_side=32))
  errs = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
  return out, info, errs


def _opts(**kw) -> convert.ConvertOptions:
  kw.setdefault("progress", False)
  return convert.ConvertOptions(**kw)


def read_all(out: pathlib.Path) -> dict[str, record_spec.StudyRecord]:
  info = json.loads((out / record_spec.INFO_FILE).read_text())
  recs = {}
  for split, s in info["splits"].items():
    for shard in s["shards"]:
      path = out / shard["path"]
      index = tfrecord.read_index(path)
      assert len(index) == shard["num_records"]
      with open(path, "rb") as f:
        for k, (off, ln) in enumerate(index):
          rec = records.parse_record(tfrecord.read_record_at(f, off, ln), item=f"{path}#{k}")
          assert rec.split == split
          recs[rec.image_id] = rec
  return recs


def _shard_bytes(out: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(out.iterdir())
          if p.name.endswith((".tfrecord", ".index")) or p.name == "errors.jsonl"}


# ----------------------------------------------------------------------------- MIMIC layout

def test_mimic_tree_converts_every_image_with_its_report_labels_and_split(mimic_root, tmp_path):
  info = convert.convert(mimic.list_mimic(mimic_root), tmp_path, _opts(short_side=32))
  recs = read_all(tmp_path)
  assert sorted(recs) == ["d1a", "d1b", "d2a", "d3a"]
  assert info["errors"]["count"] == 0 and info["num_records"] == 4
  r = recs["d1a"]
  assert (r.patient_id, r.study_id, r.view) == ("10000001", "50000001", "PA")
  assert r.source == "files/p10/p10000001/s50000001/d1a.dcm"
  assert (r.original_height, r.original_width) == (64, 56)
  assert min(r.height, r.width) == 32 and r.bit_depth == 8
  assert r.impression == "No acute cardiopulmonary process."
  assert r.sentence_sections == ["findings", "findings", "impression"]
  assert r.labels[1] == 1 and r.labels[2] == -1 and math.isnan(r.labels[13])
  assert recs["d3a"].split == "validate" and info["splits"]["validate"]["num_records"] == 1
  assert info["label_names"] == list(record_spec.CHEXPERT_LABELS)
  assert info["counts"]["train"]["views"] == {"AP": 1, "LATERAL": 1, "PA": 1}


def test_mimic_synthetic_boxes_are_normalised_and_masks_resized_like_the_image(mimic_root,
                                                                             tmp_path):
  convert.convert(mimic.list_mimic(mimic_root), tmp_path, _opts(short_side=32))
  r = read_all(tmp_path)["d1a"]
  (box,) = r.boxes
  assert box.label == "Lung Lesion"
  np.testing.assert_allclose([box.xmin, box.ymin, box.xmax, box.ymax],
                             [8 / 56, 16 / 64, 24 / 56, 32 / 64], rtol=1e-6)
  mask = np.asarray(Image.open(io.BytesIO(r.masks_png[0])))
  assert mask.shape == (r.height, r.width) and set(np.unique(mask)) == {0, 255}
  assert r.mask_labels == ["Lung Lesion"]


def test_view_filter_keeps_only_frontal_images(mimic_root, tmp_path):
  info = convert.convert(mimic.list_mimic(mimic_root), tmp_path,
                         _opts(short_side=32, views=("pa", "AP")))
  assert sorted(read_all(tmp_path)) == ["d1a", "d2a", "d3a"]
  assert "LATERAL" not in info["counts"]["train"]["views"]


def test_without_metadata_csv_the_tree_is_walked_and_views_come_from_dicom_headers(tmp_path):
  root = make_mimic_tree(tmp_path / "tree")
  (root / (mimic.METADATA + ".gz")).unlink()
  ds = mimic.list_mimic(root)
  assert sorted(it.item_id for it in ds.items) == ["d1a", "d1b", "d2a", "d3a"]
  assert all(it.view == "" for it in ds.items)
  info = convert.convert(ds, tmp_path / "out", _opts(short_side=32, views=("PA",)))
  assert sorted(read_all(tmp_path / "out")) == ["d1a", "d3a"]
  assert info["filtered_by_view"] == 2 and info["errors"]["count"] == 0


def test_max_items_converts_only_the_first_items_in_stable_order(mimic_root, tmp_path):
  info = convert.convert(mimic.list_mimic(mimic_root), tmp_path, _opts(short_side=32,
                                                                        max_items=2))
  assert info["num_records"] == 2 and sorted(read_all(tmp_path)) == ["d1a", "d1b"]


def test_images_are_stored_as_16_bit_png_when_asked(mimic_root, tmp_path):
  convert.convert(mimic.list_mimic(mimic_root), tmp_path, _opts(short_side=32, bit_depth=16,
                                                                max_items=1))
  r = read_all(tmp_path)["d1a"]
  assert r.bit_depth == 16
  assert np.asarray(Image.open(io.BytesIO(r.image_png))).dtype == np.uint16


def test_split_comes_from_a_patient_hash_when_the_input_has_none():
  assert convert.hash_split("10000001") == convert.hash_split("10000001")
  splits = [convert.hash_split(str(i)) for i in range(2000)]
  fractions = [splits.count(s) / len(splits) for s in record_spec.SPLITS]
  np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.03)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("item,kind", [("d4_truncated", "dicom_decode"),
                                       ("d9_notdicom", "dicom_decode"),
                                       ("d5_nopixels", "no_pixel_data"),
                                       ("d6_emptyreport", "bad_report"),
                                       ("d7_latin1", "bad_report")])
def test_bad_input_lands_in_errors_jsonl_with_its_id_and_kind(bad_mimic, item, kind):
  _, _, errs = bad_mimic
  (entry,) = [e for e in errs if e["item"] == item]
  assert entry["kind"] == kind and entry["skipped"] is True
  suffix = ".txt" if kind == "bad_report" else f"{item}.dcm"
  assert entry["reason"] and entry["path"].endswith(suffix)


def test_bad_input_does_not_stop_the_rest_converting(bad_mimic):
  out, info, _ = bad_mimic
  assert sorted(read_all(out)) == ["d1a", "d1b", "d2a", "d3a", "d8_nosection"]
  assert info["errors"]["count"] == 5
  assert info["errors"]["by_kind"] == {"bad_report": 2, "dicom_decode": 2, "no_pixel_data": 1}


def test_report_without_sections_uses_the_fallback_and_is_counted(bad_mimic):
  out, info, errs = bad_mimic
  assert info["report_fallbacks"] == 1
  (entry,) = [e for e in errs if e["item"] == "d8_nosection"]
  assert entry["kind"] == "report_fallback" and entry["skipped"] is False
  assert read_all(out)["d8_nosection"].report_text == "Heart size is normal. Lungs are clear."


def test_missing_image_named_in_a_manifest_is_logged_and_the_rest_converts(tmp_path):
  img = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
  Image.fromarray(img).save(tmp_path / "a.png")
  rows = [{"image": "a.png", "patient_id": "1", "report_text": REPORT},
          {"image": "gone.png", "patient_id": "2", "report_text": REPORT}]
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  info = convert.convert(manifest.list_manifest(tmp_path / "m.jsonl"), tmp_path / "out", _opts())
  errs = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
  assert [(e["item"], e["kind"]) for e in errs] == [("gone", "missing_file")]
  assert info["num_records"] == 1 and list(read_all(tmp_path / "out")) == ["a"]


def test_unreadable_manifest_row_is_logged_as_bad_manifest_row(tmp_path):
  (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\nnot json\n{"view": "PA"}\n')
  ds = manifest.list_manifest(tmp_path / "m.jsonl")
  assert [it.item_id for it in ds.items] == ["a"]
  assert [e["kind"] for e in ds.listing_errors] == ["bad_manifest_row", "bad_manifest_row"]


# ----------------------------------------------------------------------------- manifests

def test_csv_manifest_reads_sections_label_columns_and_xyxy_boxes(tmp_path):
  img = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1))
  Image.fromarray(img).save(tmp_path / "x.png")
  with open(tmp_path / "m.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "findings", "impression", "A", "B", "boxes", "split", "view"])
    w.writerow(["x.png", "Lungs clear.", "Normal.", "1", "", json.dumps(
        [{"label": "A", "xmin": 4, "ymin": 2, "xmax": 20, "ymax": 10}]), "val", "pa"])
  spec = manifest.ManifestSpec(label_names=("A", "B"), label_columns=True)
  convert.convert(manifest.list_manifest(tmp_path / "m.csv", spec=spec), tmp_path / "o", _opts())
  r = read_all(tmp_path / "o")["x"]
  assert (r.split, r.view, r.findings, r.impression) == ("validate", "PA", "Lungs clear.",
                                                         "Normal.")
  assert r.labels[0] == 1 and math.isnan(r.labels[1])
  np.testing.assert_allclose([r.boxes[0].xmin, r.boxes[0].ymax], [0.1, 0.5])


def test_manifest_xywh_boxes_and_mask_follow_the_image(tmp_path):
  img = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (40, 1))  # 40 x 80
  Image.fromarray(img).save(tmp_path / "a.png")
  mask = np.zeros((40, 80), np.uint8)
  mask[10:20, 20:40] = 255
  Image.fromarray(mask).save(tmp_path / "a_mask.png")
  row = {"image": "a.png", "report_text": REPORT, "mask": "a_mask.png",
         "boxes": [{"label": "Left Lung", "x": 20, "y": 10, "w": 20, "h": 10},
                   {"label": "outside", "x": 200, "y": 10, "w": 20, "h": 10}]}
  (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
  spec = manifest.ManifestSpec(mask_label="Lungs")
  info = convert.convert(manifest.list_manifest(tmp_path / "m.jsonl", spec=spec), tmp_path / "o",
                         _opts(short_side=20))
  r = read_all(tmp_path / "o")["a"]
  assert (r.height, r.width) == (20, 40)
  assert [(b.label, b.xmin, b.ymin, b.xmax, b.ymax) for b in r.boxes] == [
      ("Left Lung", 0.25, 0.25, 0.5, 0.5)]
  assert info["errors"]["warnings"] == 1  # The box outside the image is dropped with a warning.
  m = np.asarray(Image.open(io.BytesIO(r.masks_png[0])))
  assert r.mask_labels == ["Lungs"] and m.shape == (20, 40) and m[7, 15] == 255 and m[0, 0] == 0


# ----------------------------------------------------------------------------- shards, reruns

def test_rerun_skips_finished_shards(mimic_root, tmp_path):
  ds = mimic.list_mimic(mimic_root)
  convert.convert(ds, tmp_path, _opts(short_side=32, num_shards=2))
  mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tfrecord")}
  info = convert.convert(ds, tmp_path, _opts(short_side=32, num_shards=2))
  assert info["shards_reused"] == len(mtimes) == 3  # train: 2 shards, validate: 1.
  assert info["records_reused"] == info["num_records"] == 4
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tfrecord")} == mtimes


def test_rerun_with_other_options_rewrites_shards(mimic_root, tmp_path):
  ds = mimic.list_mimic(mimic_root)
  convert.convert(ds, tmp_path, _opts(short_side=32))
  info = convert.convert(ds, tmp_path, _opts(short_side=24))
  assert info["shards_reused"] == 0
  assert min(read_all(tmp_path)["d1a"].height, read_all(tmp_path)["d1a"].width) == 24


def test_shard_without_done_marker_is_converted_again(mimic_root, tmp_path):
  ds = mimic.list_mimic(mimic_root)
  convert.convert(ds, tmp_path, _opts(short_side=32))
  convert.done_path(tmp_path / "validate-00000-of-00001.tfrecord").unlink()
  info = convert.convert(ds, tmp_path, _opts(short_side=32))
  assert info["shards_reused"] == 1 and info["num_records"] == 4


def test_changing_the_shard_count_removes_the_old_shards(mimic_root, tmp_path):
  ds = mimic.list_mimic(mimic_root)
  convert.convert(ds, tmp_path, _opts(short_side=32, num_shards=2))
  convert.convert(ds, tmp_path, _opts(short_side=32, num_shards=1))
  assert sorted(p.name for p in tmp_path.glob("*.tfrecord")) == [
      "train-00000-of-00001.tfrecord", "validate-00000-of-00001.tfrecord"]


def test_two_workers_write_the_same_bytes_as_one(bad_mimic, tmp_path):
  root = bad_mimic[0].parent
  ds = mimic.list_mimic(root)
  convert.convert(ds, tmp_path / "w1", _opts(short_side=32, num_shards=3, workers=1))
  convert.convert(ds, tmp_path / "w2", _opts(short_side=32, num_shards=3, workers=2))
  one, two = _shard_bytes(tmp_path / "w1"), _shard_bytes(tmp_path / "w2")
  assert len(one) == 6 + 2 + 1 and one == two
  info1 = json.loads((tmp_path / "w1" / record_spec.INFO_FILE).read_text())
  info2 = json.loads((tmp_path / "w2" / record_spec.INFO_FILE).read_text())
  for info in (info1, info2):
    info.pop("created")
  assert info1 == info2


def test_dataset_info_lists_shards_counts_and_errors(bad_mimic):
  out, _, _ = bad_mimic
  info = json.loads((out / record_spec.INFO_FILE).read_text())
  assert info["spec_version"] == record_spec.SPEC_VERSION
  assert info["image"] == {"format": "png", "short_side": 32, "bit_depth": 8, "upsampled": False}
  assert set(info["splits"]) == set(record_spec.SPLITS)
  assert info["splits"]["train"]["shards"] == [{"path": "train-00000-of-00001.tfrecord",
                                                "num_records": 4}]
  assert info["counts"]["train"]["labels_positive"]["Cardiomegaly"] == 4
  assert info["errors"]["file"] == "errors.jsonl" and info["created"]


def test_cli_prints_a_summary_and_writes_the_shards(mimic_root, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.convert", "--layout=mimic", f"--input={mimic_root}",
       f"--output={tmp_path}", "--short_side=32", "--views=PA,AP", "--num_shards=1",
       "--subset_fractions=10,100", "--subset_seeds=0,1"],
      capture_output=True, text=True, check=True, timeout=120,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  assert "3 records" in proc.stdout and "3 converted" in proc.stdout
  assert "errors: 0" in proc.stdout
  assert (tmp_path / "train-00000-of-00001.tfrecord.index").exists()
  subsets = json.loads((tmp_path / "subsets_train.json").read_text())  # --subset_fractions
  n = subsets["num_examples"]
  assert subsets["seeds"] == [0, 1] and f'"10%": 1, "100%": {n}' in proc.stdout


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_nih_cxr14_converts_without_reports_and_boxes_stay_in_the_unit_square(shared_data,
                                                                            tmp_path):
  from data_pipeline.converters import shared_data as presets
  info = convert.convert(presets.nih_cxr14(shared_data), tmp_path,
                         _opts(short_side=256, max_items=40))
  recs = read_all(tmp_path)
  assert info["num_records"] == 40 == len(recs) and info["errors"]["count"] == 0
  boxes = [b for r in recs.values() for b in r.boxes]
  assert boxes and all(0 <= b.xmin < b.xmax <= 1 and 0 <= b.ymin < b.ymax <= 1 for b in boxes)
  assert all(r.report_text == "" and r.labels.shape == (14,) for r in recs.values())


@pytest.mark.realdata
def test_covid_cxr_converts_notes_lung_boxes_and_masks(shared_data, tmp_path):
  from data_pipeline.converters import shared_data as presets
  info = convert.convert(presets.covid_cxr(shared_data), tmp_path,
                         _opts(short_side=256, max_items=40, require_report=False))
  recs = read_all(tmp_path)
  assert info["num_records"] == 40 and info["errors"]["count"] == 0
  boxes = [b for r in recs.values() for b in r.boxes]
  assert boxes and all(0 <= b.xmin < b.xmax <= 1 and 0 <= b.ymin < b.ymax <= 1 for b in boxes)
  assert {b.label for b in boxes} <= {"Right Lung", "Left Lung"}
  assert any(r.sentences for r in recs.values())
  with_mask = [r for r in recs.values() if r.masks_png]
  assert with_mask
  m = np.asarray(Image.open(io.BytesIO(with_mask[0].masks_png[0])))
  assert m.shape == (with_mask[0].height, with_mask[0].width)


def test_generated_synthetic_mimic_tree_converts_with_its_boxes_and_masks(tmp_path):
  mimic_tree = pytest.importorskip("data_pipeline.synthetic.mimic_tree")
  summary = mimic_tree.write_mimic_tree(tmp_path / "tree", num_patients=6, seed=1,
                                        image_size=128)
  info = convert.convert(mimic.list_mimic(tmp_path / "tree"), tmp_path / "out",
                         _opts(short_side=64))
  recs = read_all(tmp_path / "out")
  assert info["errors"]["count"] == 0 and len(recs) == summary["num_images"]
  assert all(r.sentences and r.labels.shape == (14,) for r in recs.values())
  boxes = [b for r in recs.values() for b in r.boxes]
  assert boxes and all(0 <= b.xmin < b.xmax <= 1 and 0 <= b.ymin < b.ymax <= 1 for b in boxes)
  for r in recs.values():
    assert len(r.masks_png) == len(r.mask_labels)
    for m in r.masks_png:
      assert np.asarray(Image.open(io.BytesIO(m))).shape == (r.height, r.width)
