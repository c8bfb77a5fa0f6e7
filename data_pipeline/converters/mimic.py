"""MIMIC-CXR layout -> base.Dataset: walks the DICOM tree and joins the MIMIC CSVs.

Owns reading the MIMIC-CXR (DICOM) layout:
```
<root>/files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm     images
<root>/files/pNN/pNNNNNNNN/sNNNNNNNN.txt                the study's free-text report
<root>/mimic-cxr-2.0.0-metadata.csv[.gz]                dicom_id, subject_id, study_id, ViewPosition
<root>/mimic-cxr-2.0.0-chexpert.csv[.gz]                subject_id, study_id + 14 CheXpert labels
<root>/mimic-cxr-2.0.0-split.csv[.gz]                   dicom_id, study_id, subject_id, split
<root>/mmrl-synthetic-annotations.jsonl                 optional ground truth (synthetic data)
```
Every CSV is optional (and may be gzipped). With a metadata CSV its rows define the items (an
image it names but that is missing becomes a `missing_file` error); without one the tree is walked.
No pixels are read here; `data_pipeline.convert` decodes in its workers.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import pathlib
import re
from typing import Iterable, Optional

from data_pipeline import record_spec
from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry, label_value

METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
ANNOTATIONS = "mmrl-synthetic-annotations.jsonl"
_DICOM_PATH = re.compile(r"p(\d+)/s(\d+)/([^/]+)\.dcm$")


def _find(root: pathlib.Path, name: str) -> Optional[pathlib.Path]:
  for p in (root / name, root / (name + ".gz")):
    if p.is_file():
      return p
  return None


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  """Rows of a CSV or gzipped CSV as dicts (header row = keys)."""
  raw = path.read_bytes()
  if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  text = raw.decode("utf-8-sig")
  return list(csv.DictReader(io.StringIO(text)))


def _study_dir(root: pathlib.Path, subject: str, study: str) -> pathlib.Path:
  return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def list_mimic(root: str | pathlib.Path, *, views: Iterable[str] = (),
               annotations: Optional[str | pathlib.Path] = None) -> Dataset:
  """Lists a MIMIC-CXR tree as a Dataset (label_names = record_spec.CHEXPERT_LABELS).

  Args:
    root: the folder holding `files/` and the CSVs.
    views: keep only these ViewPositions (e.g. ('PA', 'AP')); () keeps all. Also applied by the
      driver (ConvertOptions.views), which filters on the DICOM header when the CSV has no view.
    annotations: the synthetic ground-truth JSONL; default `<root>/mmrl-synthetic-annotations.jsonl`
      when it exists.
  """
  root = pathlib.Path(root)
  if not (root / "files").is_dir():
    raise FileNotFoundError(f"{root}/files does not exist: --input must be the MIMIC-CXR root "
                            "holding files/pNN/... and the mimic-cxr-2.0.0-*.csv files")
  views = tuple(v.strip().upper() for v in views if v.strip())
  problems: list[dict] = []

  # dicom_id -> (subject, study, view)
  rows: dict[str, tuple[str, str, str]] = {}
  meta_path = _find(root, METADATA)
  if meta_path is not None:
    for r in read_csv(meta_path):
      rows[r["dicom_id"]] = (str(r["subject_id"]), str(r["study_id"]),
                             (r.get("ViewPosition") or "").strip().upper())
  else:
    for p in sorted((root / "files").glob("p*/p*/s*/*.dcm")):
      m = _DICOM_PATH.search(p.relative_to(root).as_posix())
      if m:
        rows[m.group(3)] = (m.group(1), m.group(2), "")

  splits: dict[str, str] = {}
  split_path = _find(root, SPLIT)
  if split_path is not None:
    splits = {r["dicom_id"]: r["split"] for r in read_csv(split_path)}

  labels: dict[tuple[str, str], tuple[float, ...]] = {}
  chexpert_path = _find(root, CHEXPERT)
  if chexpert_path is not None:
    for r in read_csv(chexpert_path):
      key = (str(r["subject_id"]), str(r["study_id"]))
      try:
        labels[key] = tuple(label_value(r.get(name, "")) for name in record_spec.CHEXPERT_LABELS)
      except ValueError as e:
        problems.append(error_entry(f"s{key[1]}", "bad_label", f"{e} in {chexpert_path.name}; "
                                    "use 1.0, 0.0, -1.0 or leave empty", str(chexpert_path)))

  ann_path = pathlib.Path(annotations) if annotations else root / ANNOTATIONS
  findings: dict[str, list[dict]] = {}
  if ann_path.is_file():
    for n, line in enumerate(ann_path.read_text(encoding="utf-8").splitlines(), 1):
      if not line.strip():
        continue
      try:
        a = json.loads(line)
        findings[str(a["dicom_id"])] = list(a.get("findings") or [])
      except (ValueError, KeyError, TypeError) as e:
        problems.append(error_entry(f"{ann_path.name}:{n}", "bad_annotation",
                                    f"line {n} is not an annotation object: {e}", str(ann_path)))

  items = []
  for dicom_id in sorted(rows):
    subject, study, view = rows[dicom_id]
    if views and view and view not in views:
      continue
    study_dir = _study_dir(root, subject, study)
    image = study_dir / f"{dicom_id}.dcm"
    boxes, masks = [], []
    for k, f in enumerate(findings.get(dicom_id, [])):
      name = str(f.get("chexpert_label") or f.get("name") or "finding")
      box = f.get("box")
      if box and len(box) == 4:
        boxes.append(SourceBox(name, *(float(v) for v in box)))
      if f.get("mask"):
        masks.append((name, str(root / f["mask"])))
    items.append(Item(
        item_id=dicom_id,
        image=str(image),
        source=image.relative_to(root).as_posix(),
        patient_id=subject,
        study_id=study,
        split=splits.get(dicom_id, ""),
        view=view,
        report_path=str(study_dir.with_suffix(".txt")),
        labels=labels.get((subject, study)) if chexpert_path is not None else None,
        boxes=tuple(boxes),
        masks=tuple(masks)))
  # Studies without a chexpert row get all-blank labels (same length for every record).
  if chexpert_path is not None:
    blank = tuple([math.nan] * len(record_spec.CHEXPERT_LABELS))
    items = [it if it.labels is not None else dataclasses.replace(it, labels=blank)
             for it in items]
  return Dataset(
      name="mimic_cxr", source=str(root), items=items,
      label_names=record_spec.CHEXPERT_LABELS if chexpert_path is not None else (),
      listing_errors=problems, require_report=True,
      args={"layout": "mimic", "input": str(root), "metadata": str(meta_path or ""),
            "chexpert": str(chexpert_path or ""), "split_csv": str(split_path or ""),
            "annotations": str(ann_path) if ann_path.is_file() else ""})

