"""Downstream layouts (rsna_pneumonia, siim_acr, object_cxr, vindr_cxr, chexpert_5x200, ms_cxr,
covidx) read from fixtures written in each data set's official file layout, and their splits
(also nih_cxr14's lovt split, on ../shared/data)."""
from __future__ import annotations

import csv
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipeline import convert
from data_pipeline import mask_rle
from data_pipeline import records
from data_pipeline import splits
from data_pipeline import tfrecord
from data_pipeline.converters import chexpert_5x200
from data_pipeline.converters import covidx
from data_pipeline.converters import ms_cxr
from data_pipeline.converters import object_cxr
from data_pipeline.converters import vindr_cxr
from data_pipeline.synthetic import mimic_tree

OPTIONS = convert.ConvertOptions(progress=False)


# ---------------------------------------------------------------------------------------------
# Fixture writers.

def _display(height: int, width: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0.1, 0.9, height * width).reshape(height, width)
  return np.clip(ramp + rng.uniform(-0.05, 0.05, (height, width)), 0, 1)


def write_dicom(path: pathlib.Path, height: int, width: int, *, seed: int = 0,
                view: str = "PA") -> None:
  """A small valid DICOM (the project's synthetic writer) at `path`."""
  stored, center, width_w = mimic_tree.encode_pixels(_display(height, width, seed), bits_stored=12,
                                                     photometric="MONOCHROME2")
  ds = mimic_tree.build_dataset(
      stored, seed=seed, subject_id=10000000 + seed, study_id=50000000 + seed,
      dicom_id=f"d{seed}", view=view, photometric="MONOCHROME2", bits_stored=12,
      pixel_spacing_mm=0.2, window=(center, width_w), rescale=None, modality="CR", rle=False,
      study_date="21000101", study_time="120000.000", procedure="CHEST (PA AND LAT)", sex="F",
      instance_number=1)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(mimic_tree.dicom_bytes(ds))


def write_image(path: pathlib.Path, height: int, width: int, *, seed: int = 0) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = (255 * _display(height, width, seed)).astype(np.uint8)
  Image.fromarray(pixels, mode="L").save(path)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header] + rows)


def converted(dataset: convert.Dataset, out: pathlib.Path
              ) -> tuple[dict, dict[str, records.StudyRecord], list[dict]]:
  """(info, image id -> record, errors.jsonl entries)."""
  info = convert.convert(dataset, out, OPTIONS)
  recs = {}
  for split in info["splits"].values():
    for shard in split["shards"]:
      for data in tfrecord.iterate_records(out / shard["path"]):
        rec = records.parse_record(data)
        recs[rec.image_id] = rec
  errs = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
  return info, recs, errs


def mask_of(rec: records.StudyRecord, k: int = 0) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(rec.masks_png[k]))) > 127


def box_tuples(rec: records.StudyRecord) -> list[tuple]:
  return sorted((b.label, round(b.xmin, 5), round(b.ymin, 5), round(b.xmax, 5), round(b.ymax, 5))
                for b in rec.boxes)


def rounded(boxes: list[tuple]) -> list[tuple]:
  return sorted((label, *(round(v, 5) for v in coords)) for label, *coords in boxes)


def first_listed(dataset: str, source: str, split: str) -> str:
  lst = splits.read_split_list(splits.list_path(dataset, source))
  return next(i for i, s in lst.assign.items() if s == split)


# ---------------------------------------------------------------------------------------------
# SIIM RLE.

def encode_siim_rle(mask: np.ndarray) -> str:
  """Independent encoder: column-major runs, each offset relative to the previous run's end."""
  flat = mask.T.reshape(-1).astype(np.int8)
  padded = np.concatenate([[0], flat, [0]])
  changes = np.flatnonzero(np.diff(padded))
  starts, ends = changes[0::2], changes[1::2]
  out, previous_end = [], 0
  for s, e in zip(starts, ends):
    out += [int(s - previous_end), int(e - s)]
    previous_end = e
  return " ".join(map(str, out)) if out else "-1"


@pytest.mark.parametrize("shape", [(7, 5), (16, 16), (9, 13)])
def test_siim_rle_decode_inverts_an_independent_column_major_encoder(shape):
  rng = np.random.default_rng(shape[0] * 100 + shape[1])
  for _ in range(5):
    mask = rng.random(shape) < 0.3
    np.testing.assert_array_equal(mask_rle.decode_siim_rle(encode_siim_rle(mask), *shape), mask)


def test_siim_rle_runs_go_down_columns_with_relative_offsets():
  # '1 2 3 1': pixels 1-2 then (1+2)+3 = 6 in column-major order of a 4x3 image.
  expected = np.zeros((4, 3), bool)
  expected[1:3, 0] = True   # flat 1, 2 -> column 0, rows 1, 2
  expected[2, 1] = True     # flat 6 -> column 1, row 2
  np.testing.assert_array_equal(mask_rle.decode_siim_rle("1 2 3 1", 4, 3), expected)
  assert not mask_rle.decode_siim_rle(" -1", 4, 3).any()


@pytest.mark.parametrize("rle,words", [("10 3", "ends past"), ("1 2 3", "odd"),
                                       ("a b", "not integers"), ("2 -1", "negative")])
def test_siim_rle_errors_name_the_image_and_the_problem(rle, words):
  with pytest.raises(mask_rle.MaskError, match=words) as e:
    mask_rle.decode_siim_rle(rle, 3, 4, item="img7")
  assert e.value.item == "img7" and e.value.kind == "bad_mask"


# ---------------------------------------------------------------------------------------------
# siim_acr.

def test_siim_acr_masks_are_the_union_of_rows_and_bad_inputs_are_logged(tmp_path):
  root = tmp_path / "siim"
  h, w = 12, 10
  rng = np.random.default_rng(0)
  part_a = np.zeros((h, w), bool)
  part_a[2:5, 1:4] = True
  part_b = np.zeros((h, w), bool)
  part_b[7:11, 6:9] = True
  ids = {"1.2.3.4": (3, 7), "1.2.3.5": (4, 8), "1.2.3.6": (5, 9), "1.2.3.7": (6, 10)}
  for k, (image_id, (a, b)) in enumerate(ids.items()):
    write_dicom(root / "dicom-images-train" / f"1.2.{a}" / f"1.2.{b}" / f"{image_id}.dcm", h, w,
                seed=k)
  broken = root / "dicom-images-train" / "1.2.9" / "1.2.9" / "1.2.3.8.dcm"
  broken.parent.mkdir(parents=True)
  broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
  lovt_test_id = first_listed("siim_acr", "lovt", "test")
  write_dicom(root / "dicom-images-train" / "x" / "y" / f"{lovt_test_id}.dcm", h, w, seed=9)
  rows = [["1.2.3.4", " " + encode_siim_rle(part_a)], ["1.2.3.4", " " + encode_siim_rle(part_b)],
          ["1.2.3.5", " -1"],
          ["1.2.3.6", " 100 30"],                       # longer than the 12x10 image
          ["1.2.3.7", " " + encode_siim_rle(rng.random((h, w)) < 0.2)],
          ["1.2.3.8", " -1"],                           # unreadable DICOM
          ["1.2.3.9", " -1"],                           # no DICOM at all
          [lovt_test_id, " -1"]]
  write_csv(root / "train-rle.csv", ["ImageId", " EncodedPixels"], rows)  # official header quirk
  ds = convert.load_layout("siim_acr", root, split_source="lovt")
  info, recs, errs = converted(ds, tmp_path / "out")
  assert sorted(recs) == sorted(["1.2.3.4", "1.2.3.5", "1.2.3.7", lovt_test_id])
  np.testing.assert_array_equal(mask_of(recs["1.2.3.4"]), part_a | part_b)
  assert recs["1.2.3.4"].mask_labels == ["Pneumothorax"]
  assert recs["1.2.3.4"].labels.tolist() == [1.0] and recs["1.2.3.5"].labels.tolist() == [0.0]
  assert not mask_of(recs["1.2.3.5"]).any()
  assert recs[lovt_test_id].split == "test" and recs["1.2.3.4"].split == "train"
  failed = {e["item"]: e for e in errs if e["skipped"]}
  assert failed["1.2.3.6"]["kind"] == "bad_mask" and "ends past" in failed["1.2.3.6"]["reason"]
  assert failed["1.2.3.8"]["kind"] == "dicom_decode"
  assert failed["1.2.3.9"]["kind"] == "missing_file" and "1.2.3.9" in failed["1.2.3.9"]["reason"]
  split = info["converter"]["split"]
  assert split["source"] == "lovt" and split["expected"] == {"train": 7229, "validate": 2409,
                                                             "test": 2409}
  assert split["found"] == {"train": 5, "validate": 0, "test": 1}


def test_siim_acr_benchx_split_is_seeded_with_benchx_proportions(tmp_path):
  ids = [f"1.2.{k}" for k in range(400)]
  a = splits.seeded_split(ids, {"train": 9303, "validate": 1372, "test": 1372}, seed=3)
  b = splits.seeded_split(list(reversed(ids)), {"train": 9303, "validate": 1372, "test": 1372},
                          seed=3)
  c = splits.seeded_split(ids, {"train": 9303, "validate": 1372, "test": 1372}, seed=4)
  assert a == b and a != c
  counts = {s: sum(v == s for v in a.values()) for s in ("train", "validate", "test")}
  assert counts == {"train": round(400 * 9303 / 12047), "validate": round(400 * 1372 / 12047),
                    "test": 400 - round(400 * 9303 / 12047) - round(400 * 1372 / 12047)}


# ---------------------------------------------------------------------------------------------
# rsna_pneumonia.

def test_rsna_boxes_negatives_and_benchx_split(tmp_path):
  root = tmp_path / "rsna"
  val_id = first_listed("rsna_pneumonia", "benchx", "validate")
  h, w = 20, 16
  for k, pid in enumerate(["neg-0001", val_id, "pos-0003"]):
    write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", h, w, seed=k)
  write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
            [["neg-0001", "", "", "", "", "0"],
             [val_id, "2", "4", "6", "8", "1"], [val_id, "8", "10", "4", "6", "1"],
             ["pos-0003", "0", "0", "16", "20", "1"],
             ["no-image-4", "1", "1", "2", "2", "1"]])
  ds = convert.load_layout("rsna_pneumonia", root, split_source="benchx")
  info, recs, errs = converted(ds, tmp_path / "out")
  assert sorted(recs) == sorted(["neg-0001", val_id, "pos-0003"])
  assert recs["neg-0001"].boxes == [] and recs["neg-0001"].labels.tolist() == [0.0]
  assert box_tuples(recs[val_id]) == rounded([("Pneumonia", 2 / 16, 4 / 20, 8 / 16, 12 / 20),
                                              ("Pneumonia", 8 / 16, 10 / 20, 12 / 16, 16 / 20)])
  assert recs[val_id].split == "validate" and recs["pos-0003"].split == "train"
  expected = np.zeros((h, w), bool)
  expected[4:13, 2:9] = True      # box x 2..8, y 4..12 (boundary included)
  expected[10:17, 8:13] = True    # box x 8..12, y 10..16
  np.testing.assert_array_equal(mask_of(recs[val_id]), expected)
  assert recs["neg-0001"].mask_labels == ["Pneumonia"] and not mask_of(recs["neg-0001"]).any()
  assert [(e["item"], e["kind"]) for e in errs if e["skipped"]] == [("no-image-4", "missing_file")]
  assert info["converter"]["split"]["expected"] == {"train": 18678, "validate": 4003,
                                                    "test": 4003}


def test_rsna_has_no_official_labelled_split(tmp_path):
  write_csv(tmp_path / "stage_2_train_labels.csv",
            ["patientId", "x", "y", "width", "height", "Target"], [])
  with pytest.raises(ValueError, match="no 'official' split"):
    convert.load_layout("rsna_pneumonia", tmp_path, split_source="official")


# ---------------------------------------------------------------------------------------------
# object_cxr.

def triangle_mask(vertices, height, width) -> np.ndarray:
  """Independent rasteriser: pixel centres inside or within half a pixel of the triangle."""
  (x0, y0), (x1, y1), (x2, y2) = vertices
  ys, xs = np.mgrid[0:height, 0:width].astype(float)
  inside = np.ones((height, width), bool)
  for (ax, ay), (bx, by), (cx, cy) in (((x0, y0), (x1, y1), (x2, y2)),
                                       ((x1, y1), (x2, y2), (x0, y0)),
                                       ((x2, y2), (x0, y0), (x1, y1))):
    side = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
    sign = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))
    distance = side * sign / np.hypot(bx - ax, by - ay)
    inside &= distance >= -0.5
  return inside


def test_shape_masks_fill_polygons_with_their_boundary():
  from data_pipeline import mask_shapes  # pylint: disable=import-outside-toplevel
  rect = mask_shapes.rasterise([mask_shapes.rectangle(2, 3, 6, 5)], 8, 9)
  expected = np.zeros((8, 9), bool)
  expected[3:6, 2:7] = True
  np.testing.assert_array_equal(rect, expected)
  tri = [(2, 2), (28, 6), (10, 25)]
  got = mask_shapes.rasterise([sum(tri, ())], 30, 32)
  ours = triangle_mask(tri, 30, 32)
  assert (got != ours).mean() < 0.03  # only edge pixels may differ between rasterisers
  assert got[10, 12] and not got[25, 30]


def test_object_cxr_shapes_become_bounding_boxes():
  shapes = object_cxr.parse_annotation("0 1 2 5 6;1 10 12 20 30;2 3 4 9 1 7 8")
  assert [(kind, box) for kind, box, _ in shapes] == [
      (0, (1, 2, 5, 6)), (1, (10, 12, 20, 30)), (2, (3, 1, 9, 8))]
  assert shapes[0][2] == (1, 2, 5, 2, 5, 6, 1, 6) and shapes[2][2] == (3, 4, 9, 1, 7, 8)
  assert object_cxr.parse_annotation("") == []
  for bad in ("3 1 2 3 4", "0 1 2 3", "2 1 2 3 4", "x 1 2 3 4"):
    with pytest.raises(ValueError):
      object_cxr.parse_annotation(bad)


def test_object_cxr_official_and_lovt_splits(tmp_path):
  root = tmp_path / "object-CXR"
  h, w = 24, 20
  lovt_val = first_listed("object_cxr", "lovt", "validate")
  train_rows = [["00001.jpg", "0 2 3 10 12;2 1 14 6 14 6 16 3 16 3 20 1 20"],  # box, L
                ["00002.jpg", ""],
                [f"{lovt_val}.jpg", "1 4 4 8 8"], ["00004.jpg", "7 1 1 2 2"],
                ["00005.jpg", ""]]
  dev_rows = [["08001.jpg", "1 0 0 20 24"]]
  write_csv(root / "train.csv", ["image_name", "annotation"], train_rows)
  write_csv(root / "dev.csv", ["image_name", "annotation"], dev_rows)
  for k, (name, _) in enumerate(train_rows[:4]):
    write_image(root / "train" / name, h, w, seed=k)
  write_image(root / "dev" / "08001.jpg", h, w, seed=7)
  write_csv(root / "test.csv", ["image_path", "annotation"], [["test/09001.jpg", ""]])  # quirk
  write_image(root / "test" / "09001.jpg", h, w, seed=8)
  info, recs, errs = converted(convert.load_layout("object_cxr", root), tmp_path / "out")
  assert box_tuples(recs["00001"]) == rounded([  # rectangle, polygon
      ("Foreign object", 2 / 20, 3 / 24, 10 / 20, 12 / 24),
      ("Foreign object", 1 / 20, 14 / 24, 6 / 20, 20 / 24)])
  assert box_tuples(recs[lovt_val]) == rounded([  # ellipse: its bounding box
      ("Foreign object", 4 / 20, 4 / 24, 8 / 20, 8 / 24)])
  assert recs["00002"].boxes == [] and recs["00002"].labels.tolist() == [0.0]
  assert recs["00002"].mask_labels == ["Foreign object"] and not mask_of(recs["00002"]).any()
  expected = np.zeros((h, w), bool)
  expected[3:13, 2:11] = True                       # rectangle 2 3 10 12, boundary included
  expected[14:17, 1:7] = True                      # the L: rows 14-16 x cols 1-6,
  expected[16:21, 1:4] = True                      # rows 16-20 x cols 1-3
  np.testing.assert_array_equal(mask_of(recs["00001"]), expected)
  assert recs["08001"].split == "validate" and recs["00001"].split == "train"
  assert recs["09001"].split == "test"
  failed = {e["item"]: e["kind"] for e in errs if e["skipped"]}
  assert failed == {"00004": "bad_annotation", "00005": "missing_file"}
  lovt = convert.load_layout("object_cxr", root, split_source="lovt")
  assign = {it.item_id: it.split for it in lovt.items}
  assert assign[lovt_val] == "validate" and assign["08001"] == "test"
  assert assign["00001"] == "train" and "09001" not in assign


# ---------------------------------------------------------------------------------------------
# vindr_cxr.

def test_vindr_fusion_averages_overlapping_boxes_of_a_class_only():
  B = convert.SourceBox
  fused = vindr_cxr.fuse_boxes([B("Nodule", 10, 10, 20, 20), B("Nodule", 12, 10, 22, 20),
                                B("Nodule", 50, 50, 60, 60), B("Effusion", 11, 10, 21, 20)])
  assert sorted(fused, key=lambda b: (b.label, b.xmin)) == [
      B("Effusion", 11, 10, 21, 20), B("Nodule", 11, 10, 21, 20), B("Nodule", 50, 50, 60, 60)]


def test_vindr_three_readers_on_train_consensus_on_test(tmp_path):
  root = tmp_path / "vindr"
  h, w = 30, 24
  test_id = first_listed("vindr_cxr", "benchx", "test")
  val_id = first_listed("vindr_cxr", "benchx", "validate")
  write_dicom(root / "train" / "aaa.dicom", h, w, seed=1)
  write_dicom(root / "train" / f"{val_id}.dicom", h, w, seed=2)
  write_dicom(root / "test" / f"{test_id}.dicom", h, w, seed=3)
  box_header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
  write_csv(root / "annotations" / "annotations_train.csv", box_header, [
      ["aaa", "R8", "Nodule/Mass", "2", "2", "10", "10"],
      ["aaa", "R9", "Nodule/Mass", "4", "2", "12", "10"],
      ["aaa", "R10", "No finding", "", "", "", ""],
      [val_id, "R8", "No finding", "", "", "", ""], [val_id, "R9", "No finding", "", "", "", ""],
      [val_id, "R10", "No finding", "", "", "", ""]])
  write_csv(root / "annotations" / "annotations_test.csv", box_header,
            [[test_id, "R11", "Aortic enlargement", "0", "0", "12", "15"],
             [test_id, "R11", "Aortic enlargement", "1", "1", "13", "16"]])
  label_names = ["Aortic enlargement", "Nodule/Mass", "No finding"]
  write_csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_ID"] + label_names,
            [["aaa", "R8", 0, 1, 0], ["aaa", "R9", 0, 1, 0], ["aaa", "R10", 0, 0, 1],
             [val_id, "R8", 0, 0, 1], [val_id, "R9", 0, 0, 1], [val_id, "R10", 0, 0, 1]])
  write_csv(root / "annotations" / "image_labels_test.csv", ["image_id"] + label_names,
            [[test_id, 1, 0, 0]])
  ds = convert.load_layout("vindr_cxr", root, split_source="benchx")
  info, recs, errs = converted(ds, tmp_path / "out")
  assert not [e for e in errs if e["skipped"]]
  assert box_tuples(recs["aaa"]) == rounded([("Nodule/Mass", 3 / 24, 2 / 30, 11 / 24, 10 / 30)])
  assert len(recs[test_id].boxes) == 2  # consensus boxes kept as they are
  assert recs["aaa"].labels.tolist() == [0.0, 1.0, 0.0]  # 2 of 3 readers
  assert recs[test_id].labels.tolist() == [1.0, 0.0, 0.0]
  assert (recs["aaa"].split, recs[val_id].split, recs[test_id].split) == (
      "train", "validate", "test")
  official = convert.load_layout("vindr_cxr", root)
  assert {it.item_id: it.split for it in official.items}[val_id] == "train"
  with pytest.raises(ValueError, match="no 'lovt' split"):
    convert.load_layout("vindr_cxr", root, split_source="lovt")


# ---------------------------------------------------------------------------------------------
# chexpert_5x200.

CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                   "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                   "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                   "Support Devices"]


def test_chexpert_5x200_selects_single_positive_frontal_images_seeded(tmp_path):
  root = tmp_path / "CheXpert-v1.0-small"
  rows, patient = [], 0
  expected_pool: dict[str, set[str]] = {c: set() for c in chexpert_5x200.CLASSES}

  def add(labels: dict, view="Frontal", candidate_of=None):
    nonlocal patient
    patient += 1
    rel = f"train/patient{patient:05d}/study1/view1_{view.lower()}.jpg"
    rows.append([f"CheXpert-v1.0-small/{rel}", "Male", "50", view, "PA" if view == "Frontal"
                 else ""] + [labels.get(n, "") for n in CHEXPERT_LABELS])
    if candidate_of:
      expected_pool[candidate_of].add(f"patient{patient:05d}_study1_view1_frontal")

  for cls in chexpert_5x200.CLASSES:
    for _ in range(3):
      add({cls: "1.0", "No Finding": "0.0"}, candidate_of=cls)
    add({cls: "1.0", "No Finding": "1.0", "Pneumonia": "0.0"}, candidate_of=cls)  # blank = 0
    add({cls: "1.0", "Support Devices": "-1.0"})   # uncertain elsewhere: out
    add({cls: "1.0"}, view="Lateral")               # lateral: out
  add({"Edema": "1.0", "Atelectasis": "1.0"})       # two classes: out
  write_csv(root / "train.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
            + CHEXPERT_LABELS, rows)
  write_csv(root / "valid.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
            + CHEXPERT_LABELS, [])
  a = chexpert_5x200.list_chexpert_5x200(root, split_seed=0, per_class=2, reports_csv="")
  b = chexpert_5x200.list_chexpert_5x200(root, split_seed=0, per_class=2, reports_csv="")
  assert [it.item_id for it in a.items] == [it.item_id for it in b.items]
  assert a.args["candidates_per_class"] == {c: 4 for c in chexpert_5x200.CLASSES}
  for cls_index, cls in enumerate(chexpert_5x200.CLASSES):
    chosen = [it for it in a.items if it.labels[cls_index] == 1.0]
    assert len(chosen) == 2 and {it.item_id for it in chosen} <= expected_pool[cls]
  assert all(it.split == "test" and sum(it.labels) == 1.0 for it in a.items)
  seeds = {tuple(it.item_id for it in chexpert_5x200.list_chexpert_5x200(
      root, split_seed=s, per_class=2, reports_csv="").items) for s in range(4)}
  assert len(seeds) > 1
  path = chexpert_5x200.write_split_file(a, tmp_path)
  again = chexpert_5x200.list_chexpert_5x200(root, split_file=str(path), reports_csv="")
  assert [(it.item_id, it.labels) for it in again.items] == [(it.item_id, it.labels)
                                                             for it in a.items]


# ---------------------------------------------------------------------------------------------
# ms_cxr.

MS_CXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                 "image_width", "image_height", "split"]


def test_ms_cxr_boxes_are_rescaled_from_the_annotation_frame(tmp_path):
  root = tmp_path / "mimic-cxr"
  h, w = 30, 40   # the stored DICOM; annotators saw 60 x 80
  rel = "files/p10/p10000032/s50414267"
  write_dicom(root / rel / "img-a.dcm", h, w, seed=1)
  (root / "files" / "p10" / "p10000032" / "s50414267.txt").write_text(
      "FINDINGS: Small left effusion.\nIMPRESSION: Effusion.\n")
  write_dicom(root / "files/p11/p11000001/s51000001" / "img-b.dcm", h, w, seed=2)
  write_csv(tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv", MS_CXR_HEADER, [
      ["img-a", "Pleural Effusion", "small left effusion", f"{rel}/img-a.jpg", 8, 20, 16, 10,
       80, 60, "test"],
      ["img-a", "Pleural effusion", "small left effusion", f"{rel}/img-a.jpg", 40, 30, 20, 20,
       80, 60, "test"],
      ["img-a", "Cardiomegaly", "enlarged heart", f"{rel}/img-a.jpg", 20, 10, 40, 30, 80, 60,
       "test"],
      ["img-b", "Edema", "mild edema", "files/p11/p11000001/s51000001/img-b.jpg", 0, 0, 80, 60,
       80, 60, "val"],
      ["img-c", "Edema", "edema", "files/p12/p12000001/s52000001/img-c.jpg", 0, 0, 8, 6, 80, 60,
       "train"]])
  ds = convert.load_layout("ms_cxr", root)
  info, recs, errs = converted(ds, tmp_path / "out")
  assert box_tuples(recs["img-a"]) == rounded([
      ("Pleural Effusion: small left effusion", 0.1, 20 / 60, 0.3, 0.5),
      ("Pleural Effusion: small left effusion", 0.5, 0.5, 0.75, 50 / 60),
      ("Cardiomegaly: enlarged heart", 0.25, 10 / 60, 0.75, 40 / 60)])
  assert ms_cxr.parse_box_label(recs["img-a"].boxes[0].label)[0] in ms_cxr.CATEGORIES
  assert recs["img-a"].labels[ms_cxr.CATEGORIES.index("Cardiomegaly")] == 1.0
  assert recs["img-a"].findings == "Small left effusion."
  assert (recs["img-a"].split, recs["img-b"].split) == ("test", "validate")
  assert [(e["item"], e["kind"]) for e in errs if e["skipped"]] == [("img-c", "missing_file")]
  assert info["converter"]["split"]["found"] == {"train": 1, "validate": 1, "test": 1}


# ---------------------------------------------------------------------------------------------
# covidx.

def test_covidx_lists_classes_and_validation_fallback(tmp_path):
  root = tmp_path / "covidx"
  lines = {"train": ["P1 a1.png positive rsna", "P2 b 2.png negative sirm", "P3 c3.png negative"],
           "val": ["P4 d4.png positive bimcv"], "test": ["P5 e5.jpg negative ricord"]}
  for stem, rows in lines.items():
    (root).mkdir(exist_ok=True)
    (root / f"{stem}.txt").write_text("\n".join(rows) + "\n")
  for k, name in enumerate(["train/a1.png", "train/b 2.png", "val/d4.png", "test/e5.jpg"]):
    write_image(root / name, 16, 16, seed=k)
  info, recs, errs = converted(convert.load_layout("covidx", root), tmp_path / "out")
  assert info["label_names"] == ["negative", "positive"]
  assert recs["a1"].labels.tolist() == [0.0, 1.0] and recs["b 2"].patient_id == "P2"
  assert (recs["a1"].split, recs["d4"].split, recs["e5"].split) == ("train", "validate", "test")
  assert [(e["item"], e["kind"]) for e in errs if e["skipped"]] == [
      ("train.txt:3", "bad_manifest_row")]
  (root / "val.txt").unlink()
  no_val = covidx.list_covidx(root, split_seed=1)
  assert "10%" in no_val.args["split"]["how"]
  assert {it.split for it in no_val.items} <= {"train", "validate", "test"}
  with pytest.raises(ValueError, match="no 'lovt' split"):
    covidx.list_covidx(root, split_source="lovt")


# ---------------------------------------------------------------------------------------------
# Layout-level checks.

@pytest.mark.parametrize("layout,file_name", [
    ("rsna_pneumonia", "stage_2_train_labels.csv"), ("siim_acr", "train-rle.csv"),
    ("object_cxr", "train.csv"), ("vindr_cxr", "annotations_train.csv"),
    ("chexpert_5x200", "train.csv"), ("ms_cxr", "MS_CXR_Local_Alignment_v"),
    ("covidx", "train.txt")])
def test_a_download_without_its_csv_is_an_error_naming_the_file(tmp_path, layout, file_name):
  with pytest.raises(FileNotFoundError, match=file_name.replace(".", r"\.")):
    convert.load_layout(layout, tmp_path / "empty")


def test_split_arguments_are_refused_by_layouts_without_split_sources(tmp_path):
  with pytest.raises(ValueError, match="takes no split_source"):
    convert.load_layout("covid_cxr", tmp_path, split_source="benchx")
  with pytest.raises(ValueError, match="use one of"):
    splits.check_source("siim_acr", "gloria", ("lovt",))


@pytest.mark.parametrize("path", sorted(splits.LIST_DIR.glob("*.txt")), ids=lambda p: p.name)
def test_shipped_split_lists_carry_source_licence_and_their_authors_counts(path):
  lst = splits.read_split_list(path)
  assert lst.header["source"].startswith("https://github.com/")
  assert lst.header["licence"].startswith("MIT")
  assert "Permission is hereby granted" in path.read_text()
  # "unlisted: train" lists validate and test only; "unlisted: left out" lists every split.
  assert lst.header["unlisted"] in ("train", "left out")
  named = ("validate", "test") if lst.header["unlisted"] == "train" else ("train", "validate", "test")
  listed = {s: sum(v == s for v in lst.assign.values()) for s in named}
  assert {s: lst.expected[s] for s in listed} == listed
  assert lst.expected["train"] > 0 and sum(listed.values()) == len(lst.assign)


def test_nih_cxr14_refuses_an_unknown_split_source_naming_the_choices(tmp_path):
  with pytest.raises(ValueError, match="no 'benchx' split.*available: official, lovt"):
    convert.load_layout("nih_cxr14", tmp_path, split_source="benchx")
  with pytest.raises(ValueError, match="split_source='gloria'; use one of official, lovt"):
    convert.load_layout("nih_cxr14", tmp_path, split_source="gloria")


def _nih_official_splits(shared_data: pathlib.Path) -> dict[str, str]:
  """image stem -> split of the shared folder's train/val/test.jsonl (read independently)."""
  out = {}
  for split in ("train", "val", "test"):
    for line in (shared_data / "nih_cxr14" / f"{split}.jsonl").read_text().splitlines():
      out[pathlib.PurePosixPath(json.loads(line)["image"]).stem] = split
  return out


@pytest.mark.realdata
def test_nih_cxr14_lovt_split_is_the_lists_528_176_176_boxed_images(shared_data):
  dataset = convert.load_layout("nih_cxr14", shared_data, split_source="lovt")
  lst = splits.read_split_list(splits.list_path("nih_cxr14", "lovt"))
  present = {i: s for i, s in lst.assign.items() if i in _nih_official_splits(shared_data)}
  assert {it.item_id: it.split for it in dataset.items} == present
  assert len(dataset.items) == len({it.item_id for it in dataset.items})
  counts = {"train": 528, "validate": 176, "test": 176}
  assert {s: sum(it.split == s for it in dataset.items) for s in counts} == counts
  assert all(it.boxes for it in dataset.items)   # LoVT's boxed images; its 100 'No Finding'
  info = dataset.args["split"]                   # images are not in the shared data
  assert info["source"] == "lovt" and info["file"] == "nih_cxr14_lovt.txt"
  assert info["list_source"].startswith("https://github.com/philip-mueller/lovt/")
  assert info["found"] == counts
  assert info["expected"] == {"train": 588, "validate": 196, "test": 196}
  assert info["listed_ids_not_in_download"] == 588 + 196 + 196 - 880
  assert info["download_ids_not_in_list"] == 902 - 880


@pytest.mark.realdata
def test_nih_cxr14_official_split_is_the_shared_folders_files_unchanged(shared_data):
  default = convert.load_layout("nih_cxr14", shared_data)
  official = convert.load_layout("nih_cxr14", shared_data, split_source="official")
  assert default.items == official.items and default.args == official.args
  assert {it.item_id: it.split for it in official.items} == _nih_official_splits(shared_data)
  assert "split" not in official.args


@pytest.mark.realdata
def test_nih_cxr14_lovt_split_reaches_the_dataset_info(shared_data, tmp_path):
  dataset = convert.load_layout("nih_cxr14", shared_data, split_source="lovt")
  dataset.items = [next(it for it in dataset.items if it.split == s)
                   for s in ("train", "validate", "test")]
  info = convert.convert(dataset, tmp_path, convert.ConvertOptions(progress=False, short_side=64))
  assert {s: v["num_records"] for s, v in info["splits"].items()} == {
      "train": 1, "validate": 1, "test": 1}
  on_disk = json.loads((tmp_path / "mmrl_dataset_info.json").read_text())
  assert on_disk["converter"]["split"]["file"] == "nih_cxr14_lovt.txt"
  assert on_disk["converter"]["split"]["listed_ids_not_in_download"] == 100


@pytest.mark.realdata
def test_siim_acr_mask_lines_up_with_a_real_non_square_chest_dicom(shared_data, tmp_path):
  source = shared_data / "dicom" / "RG1_half_MONO1_RLE.dcm"   # real CR chest, 977 rows x 920
  if not source.is_file():
    pytest.skip(f"{source} is not in the shared data")
  root = tmp_path / "siim"
  target = root / "dicom-images-train" / "1.2.7" / "1.2.8" / "1.2.3.99.dcm"
  target.parent.mkdir(parents=True)
  target.write_bytes(source.read_bytes())
  truth = np.zeros((977, 920), bool)
  truth[100:400, 50:300] = True        # tall block, left
  truth[700:720, 600:900] = True       # wide strip, low right
  write_csv(root / "train-rle.csv", ["ImageId", " EncodedPixels"],
            [["1.2.3.99", " " + encode_siim_rle(truth)]])
  ds = convert.load_layout("siim_acr", root, split_source="lovt")
  info = convert.convert(ds, tmp_path / "out", convert.ConvertOptions(progress=False,
                                                                      short_side=1024))
  assert info["errors"]["count"] == 0
  rec = records.parse_record(next(tfrecord.iterate_records(
      tmp_path / "out" / info["splits"]["train"]["shards"][0]["path"])))
  assert (rec.original_height, rec.original_width) == (977, 920)
  np.testing.assert_array_equal(mask_of(rec), truth)


def test_cli_converts_chexpert_5x200_and_writes_its_selection(tmp_path):
  root = tmp_path / "CheXpert-v1.0-small"
  header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_LABELS
  rows = []
  for k, cls in enumerate(chexpert_5x200.CLASSES):
    rel = f"train/patient{k + 1:05d}/study1/view1_frontal.jpg"
    rows.append([f"CheXpert-v1.0-small/{rel}", "F", "40", "Frontal", "AP"]
                + ["1.0" if n == cls else "" for n in CHEXPERT_LABELS])
    write_image(root / rel, 16, 16, seed=k)
  write_csv(root / "train.csv", header, rows)
  write_csv(root / "valid.csv", header, [])
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.convert", "--layout=chexpert_5x200",
       f"--input={root}", f"--output={out}", "--split_seed=3"],
      capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "5 records" in proc.stdout and '"source": "official"' in proc.stdout
  selection = splits.read_split_list(out / chexpert_5x200.SPLIT_FILE_NAME)
  assert sorted(selection.assign) == sorted(f"patient{k:05d}_study1_view1_frontal"
                                            for k in range(1, 6))
  refused = subprocess.run(
      [sys.executable, "-m", "experiments.convert", "--layout=covidx", f"--input={root}",
       f"--output={out}", "--annotations=x.csv"],
      capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert refused.returncode != 0 and "--annotations is for --layout=ms_cxr only" in refused.stderr
