"""VinDr-CXR (PhysioNet vindr-cxr 1.0.0) -> base.Dataset.

Owns reading the official release:
```
<root>/annotations/annotations_train.csv   image_id,rad_id,class_name,x_min,y_min,x_max,y_max
                                           (3 radiologists per image, one row per box; 'No
                                           finding' rows have empty coordinates)
<root>/annotations/annotations_test.csv    same columns: the consensus boxes of the test set
<root>/annotations/image_labels_train.csv  image_id,rad_id,<28 global labels> (one row per reader)
<root>/annotations/image_labels_test.csv   image_id,<28 global labels> (consensus)
<root>/train/<image_id>.dicom, <root>/test/<image_id>.dicom
```
(the CSVs are also found directly in <root>; `rad_ID` is read as `rad_id`).
Boxes: DICOM pixels -> normalised corners, label = class_name. The test set's consensus boxes are
kept as they are. The training images' boxes of different radiologists are **fused** per class as
BenchX does (weighted boxes fusion, IoU > 0.5, all scores equal: `fuse_boxes` -- a box joins the
cluster whose mean box it overlaps most, the cluster's box is the mean of its members).
Labels: label_names = the columns of image_labels_train.csv after image_id / rad_id; training
labels are the majority vote of the image's readers (1 when more than half marked it), test labels
the consensus row. A missing image_labels file leaves labels empty (logged).
No reports.

Splits (`split_source`): `official` (default): train/ -> train, test/ -> test (no validation set).
`benchx`: BenchX's 3000 validation images from train
(data_pipeline/split_lists/vindr_cxr_benchx.txt; its 3000 test ids are the official test set).
LoVT does not use VinDr-CXR.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional

from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry
from data_pipeline.converters import download_files

SOURCES = ("official", "benchx")
IOU_THRESHOLD = 0.5
_BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def fuse_boxes(boxes: list[SourceBox], iou_threshold: float = IOU_THRESHOLD) -> list[SourceBox]:
  """Weighted boxes fusion with equal scores, per label, in input order (module docstring)."""
  out: list[SourceBox] = []
  for label in sorted({b.label for b in boxes}):
    clusters: list[list[tuple[float, float, float, float]]] = []
    means: list[tuple[float, float, float, float]] = []
    for b in (b for b in boxes if b.label == label):
      coords = (b.xmin, b.ymin, b.xmax, b.ymax)
      best, best_iou = -1, iou_threshold
      for k, m in enumerate(means):
        iou = _iou(coords, m)
        if iou > best_iou:
          best, best_iou = k, iou
      if best < 0:
        clusters.append([coords])
        means.append(coords)
      else:
        clusters[best].append(coords)
        means[best] = tuple(sum(c[j] for c in clusters[best]) / len(clusters[best])
                            for j in range(4))
    out.extend(SourceBox(label, *m) for m in means)
  return out


def _annotation_dir(root: pathlib.Path) -> pathlib.Path:
  return root / "annotations" if (root / "annotations").is_dir() else root


def _labels(path: pathlib.Path, problems: list[dict], majority: bool
            ) -> tuple[tuple[str, ...], dict[str, tuple[float, ...]]]:
  if not path.is_file():
    problems.append(error_entry(path.name, "missing_file", f"{path} does not exist: its images "
                                "get no labels/values", str(path), skipped=False))
    return (), {}
  rows = download_files.read_csv(path, ("image_id",), what="VinDr-CXR label file")
  names = tuple(c for c in (rows[0] if rows else {}) if c not in ("image_id", "rad_id", "rad_ID",
                                                                  "__line__"))
  votes: dict[str, list[list[float]]] = {}
  for row in rows:
    try:
      votes.setdefault(row["image_id"], []).append([float(row.get(n) or 0) for n in names])
    except ValueError as e:
      problems.append(error_entry(row["image_id"], "bad_label", f"{path.name}:{row['__line__']}: "
                                  f"{e}", str(path), skipped=False))
  out = {}
  for image_id, vs in votes.items():
    if majority:
      out[image_id] = tuple(1.0 if sum(v[j] == 1 for v in vs) * 2 > len(vs) else 0.0
                            for j in range(len(names)))
    else:
      out[image_id] = tuple(float(x) for x in vs[0])
  return names, out


def _boxes(path: pathlib.Path, problems: list[dict]) -> dict[str, list[SourceBox]]:
  rows = download_files.read_csv(path, _BOX_COLUMNS, what="VinDr-CXR box file")
  out: dict[str, list[SourceBox]] = {}
  for row in rows:
    image_id = row["image_id"]
    out.setdefault(image_id, [])
    cells = [row[k] for k in ("x_min", "y_min", "x_max", "y_max")]
    if not any(cells):  # 'No finding'
      continue
    try:
      x0, y0, x1, y1 = (float(c) for c in cells)
      if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError("a coordinate is not finite")
    except ValueError as e:
      problems.append(error_entry(image_id, "bad_annotation", f"{path.name}:{row['__line__']}: "
                                  f"box {cells} ({e}); the box is ignored", str(path),
                                  skipped=False))
      continue
    out[image_id].append(SourceBox(row["class_name"], x0, y0, x1, y1))
  return out


def list_vindr_cxr(root: str | pathlib.Path, *, split_source: str = "",
                   split_seed: int = 0) -> Dataset:
  """Lists the VinDr-CXR release (module docstring). split_seed is unused (lists)."""
  del split_seed
  root = pathlib.Path(root)
  source = split_lists.check_source("vindr_cxr", split_source, SOURCES)
  ann = _annotation_dir(root)
  problems: list[dict] = []
  per_split: dict[str, tuple[dict, dict, tuple[str, ...]]] = {}
  for split, majority in (("train", True), ("test", False)):
    boxes = _boxes(ann / f"annotations_{split}.csv", problems)
    names, labels = _labels(ann / f"image_labels_{split}.csv", problems, majority)
    per_split[split] = (boxes, labels, names)
  label_names: tuple[str, ...] = per_split["train"][2] or per_split["test"][2]
  default: dict[str, str] = {}
  items_src: dict[str, tuple[str, list[SourceBox], Optional[tuple[float, ...]]]] = {}
  for split in ("train", "test"):
    boxes, labels, names = per_split[split]
    for image_id in sorted(set(boxes) | set(labels)):
      if image_id in default:
        problems.append(error_entry(image_id, "duplicate_id", f"{image_id} is in both the train "
                                    "and the test annotations; kept the train one", ""))
        continue
      default[image_id] = split
      b = boxes.get(image_id, [])
      if split == "train":
        b = fuse_boxes(b)
      values = None
      if label_names and image_id in labels:
        row = dict(zip(names, labels[image_id]))
        values = tuple(row.get(n, math.nan) for n in label_names)
      items_src[image_id] = (split, b, values)
  split_list = None
  if source == "benchx":
    split_list = split_lists.read_split_list(split_lists.list_path("vindr_cxr", "benchx"))
  assign = download_files.split_assignment("vindr_cxr", source, default, split_list=split_list)
  moved = sum(1 for i, s in assign.items() if s == "test" and default[i] != "test")
  if moved:
    problems.append(error_entry("vindr_cxr_benchx.txt", "split_mismatch", f"{moved} images of the "
                                "official train set are in BenchX's test list", "",
                                skipped=False))
  items = []
  for image_id, (split, b, values) in items_src.items():
    image = root / split / f"{image_id}.dicom"
    items.append(Item(item_id=image_id, image=str(image), source=f"{split}/{image_id}.dicom",
                      split=assign[image_id], labels=values if label_names else None,
                      boxes=tuple(b)))
  if label_names and any(it.labels is None for it in items):
    items = [it if it.labels is not None else
             dataclasses.replace(it, labels=tuple(math.nan for _ in label_names))
             for it in items]
  return Dataset(
      name="vindr_cxr", source=str(root), items=items, label_names=label_names,
      listing_errors=problems, require_report=False,
      args={"layout": "vindr_cxr", "input": str(root), "train_box_fusion":
            f"weighted boxes fusion, equal scores, IoU > {IOU_THRESHOLD}",
            "split": split_lists.summary(source, assign,
                                         how=("official train/ and test/ folders"
                                              if source == "official" else "shipped list"),
                                         split_list=split_list,
                                         expected=None if split_list else
                                         {"train": 15000, "validate": 0, "test": 3000})})
