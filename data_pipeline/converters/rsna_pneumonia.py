"""RSNA Pneumonia Detection Challenge (Kaggle, 2018) -> base.Dataset.

Owns reading the official download
(`kaggle competitions download rsna-pneumonia-detection-challenge`):
```
<root>/stage_2_train_labels.csv     patientId,x,y,width,height,Target   (one row per box; a
                                    Target=0 image has one row with empty x/y/width/height)
<root>/stage_2_train_images/<patientId>.dcm
<root>/stage_2_detailed_class_info.csv  patientId,class (optional; not needed)
```
(`stage_1_*` names of the first release are read when the stage 2 ones are absent.)
Each patientId is one image (one patient). Records: label_names ('Pneumonia',), labels/values 1
for Target=1 else 0; one 'Pneumonia' box per Target=1 row (x, y, width, height in DICOM pixels
-> normalised corners); negatives are kept, with no box. One 'Pneumonia' mask per record: the
boxes filled (data_pipeline.mask_shapes, boundary pixels included as OpenCV's filled rectangle
draws them; MGCA's `mask[y:y+h, x:x+w]` leaves out the last row and column), all zero for
negatives -- the RSNA segmentation target of MGCA / BenchX. No reports (require_report=False).

Splits (`split_source`): the stage 2 test labels were never published, so there is no official
labelled test split. `benchx` (default): BenchX's 70/15/15 lists; `lovt`: LoVT's 60/20/20 lists
(data_pipeline/split_lists/rsna_pneumonia_<source>.txt; validate + test listed, train = the
rest of stage_2_train_labels.csv).
"""
from __future__ import annotations

import math
import pathlib

from data_pipeline import mask_shapes
from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry
from data_pipeline.converters import download_files

LABEL = "Pneumonia"
SOURCES = ("benchx", "lovt")


def _files(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  for stage in ("stage_2", "stage_1"):
    csv_path = root / f"{stage}_train_labels.csv"
    if csv_path.is_file():
      return csv_path, root / f"{stage}_train_images"
  return root / "stage_2_train_labels.csv", root / "stage_2_train_images"


def list_rsna_pneumonia(root: str | pathlib.Path, *, split_source: str = "",
                        split_seed: int = 0) -> Dataset:
  """Lists the RSNA pneumonia download (module docstring). split_seed is unused (lists)."""
  del split_seed
  root = pathlib.Path(root)
  source = split_lists.check_source("rsna_pneumonia", split_source, SOURCES)
  csv_path, image_dir = _files(root)
  rows = download_files.read_csv(csv_path, ("patientId", "x", "y", "width", "height", "Target"),
                                 what="RSNA box file")
  problems: list[dict] = []
  boxes: dict[str, list[SourceBox]] = {}
  target: dict[str, float] = {}
  for row in rows:
    pid = row["patientId"]
    where = f"{csv_path.name}:{row['__line__']}"
    try:
      t = float(row["Target"])
      if t not in (0.0, 1.0):
        raise ValueError(f"Target {row['Target']!r} is not 0 or 1")
      boxes.setdefault(pid, [])
      target[pid] = max(target.get(pid, 0.0), t)
      if t == 1.0:
        x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
          raise ValueError(f"box x={row['x']!r} y={row['y']!r} width={row['width']!r} "
                           f"height={row['height']!r} is not a positive-size box")
        boxes[pid].append(SourceBox(LABEL, x, y, x + w, y + h))
    except ValueError as e:
      problems.append(error_entry(pid or where, "bad_annotation", f"{where}: {e}; the row is "
                                  "ignored", str(csv_path), skipped=False))
  split_list = split_lists.read_split_list(split_lists.list_path("rsna_pneumonia", source))
  assign = download_files.split_assignment("rsna_pneumonia", source,
                                           dict.fromkeys(target, "train"), split_list=split_list)
  items = [Item(item_id=pid, image=str(image_dir / f"{pid}.dcm"),
                source=f"{image_dir.name}/{pid}.dcm", patient_id=pid, study_id=pid,
                split=assign[pid], labels=(target[pid],), boxes=tuple(boxes[pid]),
                shape_masks=((LABEL, tuple(mask_shapes.rectangle(b.xmin, b.ymin, b.xmax, b.ymax)
                                           for b in boxes[pid])),))
           for pid in sorted(target)]
  return Dataset(
      name="rsna_pneumonia", source=str(root), items=items, label_names=(LABEL,),
      listing_errors=problems, require_report=False,
      args={"layout": "rsna_pneumonia", "input": str(root), "labels_csv": csv_path.name,
            "split": split_lists.summary(source, assign, how="shipped list",
                                         split_list=split_list)})
