"""MS-CXR (PhysioNet ms-cxr 1.0.0 / 1.1.0, Boecking et al. ECCV 2022) -> base.Dataset.

Owns reading MS-CXR's phrase-grounding boxes on top of a MIMIC-CXR (DICOM) download:
```
<mimic root>/files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm   images (MIMIC-CXR-JPG .jpg also read)
<mimic root>/files/pNN/pNNNNNNNN/sNNNNNNNN.txt              the study's report (optional)
MS_CXR_Local_Alignment_v1.1.0.csv   dicom_id,category_name,label_text,path,x,y,w,h,
                                    image_width,image_height[,split]   (one row per box; a
                                    phrase with several boxes has several rows)
```
The CSV is `annotations=` or the newest `MS_CXR_Local_Alignment_v*.csv` in the MIMIC root or
its parent. `x, y, w, h` are pixels of an `image_width x image_height` frame (the image as the
annotators saw it); the boxes are normalised by that frame (`Item.box_frame`), which rescales them
to the stored image whatever its resolution.

Records (one per dicom_id): `boxes/label` = '<category_name>: <label_text>' (split it with
`parse_box_label`; the phrase is the grounding query, the category its class), labels/values
multi-hot over the 8 categories (`CATEGORIES`), `report/*` = the study's MIMIC report when the
file is there (require_report=False).
Splits (`split_source`): `official` only: v1.1.0's `split` column (train / val / test); a CSV
without it (v1.0.0, an evaluation-only release) puts every image in test.
"""
from __future__ import annotations

import math
import pathlib
import re
from typing import Optional

from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry, normalise_split
from data_pipeline.converters import download_files

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
              "Pleural Effusion", "Pneumonia", "Pneumothorax")
_CANONICAL = {c.lower(): c for c in CATEGORIES}
SOURCES = ("official",)
CSV_GLOB = "MS_CXR_Local_Alignment_v*.csv"
_SEPARATOR = ": "
_PATH = re.compile(r"(p\d+)/(p\d+)/(s\d+)/([^/]+?)(?:\.[A-Za-z0-9]+)?$")


def box_label(category: str, phrase: str) -> str:
  return f"{category}{_SEPARATOR}{phrase}"


def parse_box_label(label: str) -> tuple[str, str]:
  """'<category>: <phrase>' -> (category, phrase)."""
  category, _, phrase = label.partition(_SEPARATOR)
  return category, phrase


def find_csv(root: pathlib.Path) -> Optional[pathlib.Path]:
  for folder in (root, root.parent):
    found = sorted(folder.glob(CSV_GLOB), reverse=True)
    if found:
      return found[0]
  return None


def _image(root: pathlib.Path, rel: str, dicom_id: str) -> tuple[pathlib.Path, str, str, str]:
  """(image path, subject, study, source) for a CSV `path` cell."""
  m = _PATH.search(rel.replace("\\", "/"))
  if not m:
    return root / f"{dicom_id}.dcm", "", "", rel
  group, subject, study, _ = m.groups()
  folder = root / "files" / group / subject / study
  for suffix in (".dcm", ".jpg", ".png"):
    if (folder / f"{dicom_id}{suffix}").is_file():
      return (folder / f"{dicom_id}{suffix}", subject[1:], study[1:],
              f"files/{group}/{subject}/{study}/{dicom_id}{suffix}")
  return (folder / f"{dicom_id}.dcm", subject[1:], study[1:],
          f"files/{group}/{subject}/{study}/{dicom_id}.dcm")


def list_ms_cxr(root: str | pathlib.Path, *, split_source: str = "", split_seed: int = 0,
                annotations: str = "") -> Dataset:
  """Lists MS-CXR over a MIMIC-CXR root (module docstring). split_seed is unused."""
  del split_seed
  root = pathlib.Path(root)
  source = split_lists.check_source("ms_cxr", split_source, SOURCES)
  csv_path = pathlib.Path(annotations) if annotations else find_csv(root)
  if csv_path is None:
    raise FileNotFoundError(f"no {CSV_GLOB} in {root} or {root.parent}: download MS-CXR from "
                            "PhysioNet and pass its CSV with --annotations=")
  rows = download_files.read_csv(csv_path, ("dicom_id", "category_name", "label_text", "path",
                                            "x", "y", "w", "h", "image_width", "image_height"),
                                 what="MS-CXR annotation file")
  problems: list[dict] = []
  grouped: dict[str, list[dict]] = {}
  for row in rows:
    grouped.setdefault(row["dicom_id"], []).append(row)
  has_split = bool(rows) and "split" in rows[0]
  items = []
  assign: dict[str, str] = {}
  for dicom_id in sorted(grouped):
    group = grouped[dicom_id]
    try:
      splits = {normalise_split(r.get("split", "")) or "test" for r in group} if has_split \
          else {"test"}
      if len(splits) != 1:
        raise ValueError(f"its rows disagree on the split: {sorted(splits)}")
      frames = {(float(r["image_height"]), float(r["image_width"])) for r in group}
      if len(frames) != 1:
        raise ValueError(f"its rows give different image sizes {sorted(frames)}")
      frame = frames.pop()
      boxes = []
      for r in group:
        x, y, w, h = (float(r[k]) for k in ("x", "y", "w", "h"))
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
          raise ValueError(f"line {r['__line__']}: box x={r['x']} y={r['y']} w={r['w']} "
                           f"h={r['h']} is not a positive-size box")
        category = _CANONICAL.get(r["category_name"].strip().lower())
        if category is None:
          category = r["category_name"].strip()
          problems.append(error_entry(dicom_id, "unknown_label", f"{csv_path.name}:"
                                      f"{r['__line__']}: category {category!r} is not one of "
                                      f"{CATEGORIES}; its box is kept, labels/values has no "
                                      "entry for it", str(csv_path), skipped=False))
        boxes.append(SourceBox(box_label(category, r["label_text"]), x, y, x + w, y + h))
    except ValueError as e:
      problems.append(error_entry(dicom_id, "bad_annotation", f"{csv_path.name}: {e}",
                                  str(csv_path)))
      continue
    image, subject, study, rel = _image(root, group[0]["path"], dicom_id)
    split = splits.pop()
    assign[dicom_id] = split
    report = (root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
              if subject else None)
    categories = {parse_box_label(b.label)[0] for b in boxes}
    items.append(Item(
        item_id=dicom_id, image=str(image), source=rel, patient_id=subject, study_id=study,
        split=split, report_path=str(report) if report else "",
        labels=tuple(1.0 if c in categories else 0.0 for c in CATEGORIES),
        boxes=tuple(boxes), box_frame=(int(frame[0]), int(frame[1]))))
  return Dataset(
      name="ms_cxr", source=str(root), items=items, label_names=CATEGORIES,
      listing_errors=problems, require_report=False,
      args={"layout": "ms_cxr", "input": str(root), "annotations": str(csv_path),
            "split": split_lists.summary(
                source, assign, how=("the CSV's split column" if has_split else
                                     "no split column (MS-CXR 1.0.0): all test"))})
