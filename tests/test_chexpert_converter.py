"""CheXpert layout (official CSVs + JPEG tree, optional CheXpert-Plus reports) -> shards."""
from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_pipeline import convert
from data_pipeline import pipeline
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline.converters import chexpert

# The official column order of train.csv / valid.csv.
LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
          "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
          "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + LABELS
RELEASE = "CheXpert-v1.0-small"


def _image(path: pathlib.Path, seed: int, size=(40, 48)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  pixels = (np.linspace(0, 200, size[0] * size[1]).reshape(size)
            + rng.integers(0, 40, size)).astype(np.uint8)
  Image.fromarray(pixels, mode="L").save(path, quality=95)


def _row(rel: str, view: str, ap_pa: str, labels: dict[str, str]) -> list[str]:
  return [f"{RELEASE}/{rel}", "Female", "68", view, ap_pa] + [labels.get(n, "") for n in LABELS]


@pytest.fixture
def chexpert_root(tmp_path) -> pathlib.Path:
  """A tiny CheXpert-v1.0-small tree: 2 train patients (3 images, one lateral), 1 valid."""
  root = tmp_path / RELEASE
  train = [
      _row("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP",
           {"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0", "No Finding": ""}),
      _row("train/patient00001/study1/view2_lateral.jpg", "Lateral", "",
           {"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0"}),
      _row("train/patient00002/study3/view1_frontal.jpg", "Frontal", "PA",
           {"No Finding": "1.0", "Support Devices": "0.0"}),
  ]
  valid = [_row("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "PA",
                {"Edema": "1.0", "Atelectasis": "0.0"})]
  for name, rows in (("train.csv", train), ("valid.csv", valid)):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
      csv.writer(f).writerows([HEADER] + rows)
    for k, row in enumerate(rows):
      _image(tmp_path / row[0], seed=k)
  return root


def _read_all(out: pathlib.Path) -> dict[str, record_spec.StudyRecord]:
  info = json.loads((out / record_spec.INFO_FILE).read_text())
  recs = {}
  for split, s in info["splits"].items():
    for shard in s["shards"]:
      path = out / shard["path"]
      with open(path, "rb") as f:
        for off, ln in tfrecord.read_index(path):
          rec = records.parse_record(tfrecord.read_record_at(f, off, ln))
          assert rec.split == split
          recs[rec.image_id] = rec
  return recs


def _label(rec, name):
  return float(rec.labels[record_spec.CHEXPERT_LABELS.index(name)])


def test_chexpert_converts_labels_views_splits_without_reports(chexpert_root, tmp_path):
  info = convert.convert(convert.load_layout("chexpert", chexpert_root), tmp_path / "out",
                         convert.ConvertOptions(short_side=32, progress=False))
  recs = _read_all(tmp_path / "out")
  assert info["errors"]["count"] == 0 and info["label_names"] == list(record_spec.CHEXPERT_LABELS)
  assert sorted(recs) == ["patient00001_study1_view1_frontal", "patient00001_study1_view2_lateral",
                          "patient00002_study3_view1_frontal", "patient64541_study1_view1_frontal"]
  front = recs["patient00001_study1_view1_frontal"]
  assert (front.patient_id, front.study_id, front.view) == ("patient00001", "patient00001_study1",
                                                          "AP")
  assert recs["patient00001_study1_view2_lateral"].view == "LATERAL"
  assert _label(front, "Cardiomegaly") == 1.0 and _label(front, "Pleural Effusion") == -1.0
  assert math.isnan(_label(front, "No Finding"))
  assert recs["patient64541_study1_view1_frontal"].split == "validate"
  assert _label(recs["patient64541_study1_view1_frontal"], "Edema") == 1.0
  assert all(r.report_text == "" and r.sentences == [] for r in recs.values())
  assert min(front.height, front.width) == 32


def test_chexpert_view_filter_keeps_frontal_images(chexpert_root, tmp_path):
  convert.convert(chexpert.list_chexpert(chexpert_root), tmp_path / "out",
                  convert.ConvertOptions(short_side=32, views=("AP", "PA"), progress=False))
  assert "patient00001_study1_view2_lateral" not in _read_all(tmp_path / "out")


def test_chexpert_records_feed_the_evaluation_pipeline_with_label_masks(chexpert_root, tmp_path):
  convert.convert(chexpert.list_chexpert(chexpert_root), tmp_path / "out",
                  convert.ConvertOptions(short_side=32, progress=False))
  data_cfg = {"dataset_dir": str(tmp_path / "out"), "image_size": 32, "max_tokens": 64,
              "max_sentences": 4, "max_boxes": 2, "mean": 0.5, "std": 0.25, "tokenizer": "",
              "on_bad_record": "fail"}
  batch = next(pipeline.make_eval_batches(data_cfg, split="train", batch_size=4))
  assert batch["image"].shape == (4, 32, 32, 1) and batch["labels"].shape == (4, 14)
  assert batch["valid"].tolist() == [True, True, True, False]
  assert batch["label_mask"][0].sum() == 2  # Cardiomegaly, Pleural Effusion; the rest blank


def test_chexpert_plus_reports_become_the_report_and_are_then_required(chexpert_root, tmp_path):
  plus = chexpert_root / "df_chexpert_plus_240401.csv"
  with open(plus, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path_to_image", "report", "section_findings", "section_impression"])
    w.writerow(["train/patient00001/study1/view1_frontal.png", "full text",
                "The heart is enlarged. Small effusion.", "Cardiomegaly."])
    w.writerow(["train/patient00002/study3/view1_frontal.png",
                "FINDINGS: Lungs are clear.\n\nIMPRESSION: Normal chest.", "", ""])
  dataset = convert.load_layout("chexpert", chexpert_root)
  assert dataset.require_report and dataset.args["reports_csv"] == str(plus)
  info = convert.convert(dataset, tmp_path / "out",
                         convert.ConvertOptions(short_side=32, progress=False))
  recs = _read_all(tmp_path / "out")
  assert sorted(recs) == ["patient00001_study1_view1_frontal", "patient00002_study3_view1_frontal"]
  assert recs["patient00001_study1_view1_frontal"].sentences == [
      "The heart is enlarged.", "Small effusion.", "Cardiomegaly."]
  assert "Lungs are clear." in recs["patient00002_study3_view1_frontal"].sentences
  assert info["errors"]["count"] == 2  # the lateral and the valid image have no report
  errors = [json.loads(l) for l in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
  assert {e["item"] for e in errors if e["skipped"]} == {"patient00001_study1_view2_lateral",
                                                         "patient64541_study1_view1_frontal"}


def test_bad_label_cell_is_logged_and_the_row_skipped(chexpert_root):
  with open(chexpert_root / "valid.csv", "a", newline="") as f:
    csv.writer(f).writerow(_row("valid/patient64542/study1/view1_frontal.jpg", "Frontal", "AP",
                                {"Edema": "2.0"}))
  dataset = chexpert.list_chexpert(chexpert_root)
  assert [e["kind"] for e in dataset.listing_errors] == ["bad_label"]
  assert len(dataset.items) == 4


def test_a_folder_without_the_csvs_says_what_input_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="train.csv and valid.csv"):
    convert.load_layout("chexpert", tmp_path)
