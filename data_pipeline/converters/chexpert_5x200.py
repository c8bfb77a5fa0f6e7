"""CheXpert 5x200: the zero-shot / retrieval set GLoRIA builds from CheXpert -> base.Dataset.

Owns the selection, as GLoRIA's `preprocess_chexpert_5x200_data` makes it (MGCA copies it):
from the official CheXpert `train.csv` (the `chexpert` layout's input), frontal images only, blank
labels read as 0; for each class of (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion), the candidates are the images with that label == 1 and **every other label except
No Finding == 0** (so uncertain -1 anywhere else excludes an image); 200 are drawn per class.
GLoRIA draws with pandas' unseeded `sample`; here the draw is seeded (`split_seed`): the
candidates sorted by Path, numpy's PCG64 generator
`default_rng([seed, class index]).choice(n, 200, replace=False)` -- the same construction, a
different (reproducible) 1000 images than GLoRIA's
`chexpert_5x200.csv`, which is not published. With `split_file` (a file `write_split_file` wrote)
the listed images are used instead of a draw.

Records: all in split 'test'; label_names = the 5 classes, labels/values one-hot. Reports from
CheXpert-Plus when its CSV is there (as the `chexpert` layout), else none. After conversion
`experiments.convert` writes the selection to `<output>/chexpert_5x200_split.txt` (split-list
format, data_pipeline/splits.py) so that the same images can be converted again anywhere.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import numpy as np

from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset
from data_pipeline.converters import chexpert

CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
OTHERS = ("Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Pneumonia",
          "Pneumothorax", "Pleural Other", "Fracture", "Support Devices")
PER_CLASS = 200
SOURCES = ("official",)
SPLIT_FILE_NAME = "chexpert_5x200_split.txt"


def _value(cell: Optional[str]) -> float:
  cell = (cell or "").strip()
  return float(cell) if cell else 0.0  # GLoRIA: fillna(0)


def class_of(row: dict[str, str]) -> Optional[str]:
  """The one class this train.csv row is a 5x200 candidate for, or None (module docstring)."""
  if (row.get("Frontal/Lateral") or "").strip() != "Frontal":
    return None
  try:
    values = {c: _value(row.get(c)) for c in CLASSES + OTHERS}
  except ValueError:
    return None
  positives = [c for c in CLASSES if values[c] == 1.0]
  if len(positives) != 1:
    return None
  if any(values[c] != 0.0 for c in CLASSES + OTHERS if c != positives[0]):
    return None
  return positives[0]


def list_chexpert_5x200(root: str | pathlib.Path, *, split_source: str = "",
                        split_seed: int = 0, per_class: int = PER_CLASS,
                        split_file: str = "", reports_csv: Optional[str] = None) -> Dataset:
  """Lists the 5x200 selection of a CheXpert folder (module docstring)."""
  root = pathlib.Path(root)
  split_lists.check_source("chexpert_5x200", split_source, SOURCES)
  train_csv = root / "train.csv"
  if not train_csv.is_file():
    raise FileNotFoundError(f"CheXpert train.csv {str(train_csv)!r} does not exist: --input must "
                            "be the CheXpert-v1.0(-small) folder")
  full = chexpert.list_chexpert(root, reports_csv=reports_csv)
  by_id = {it.item_id: it for it in full.items if it.split == "train"}
  candidates: dict[str, list[str]] = {c: [] for c in CLASSES}
  for row in chexpert._read_csv(train_csv):  # pylint: disable=protected-access
    key = chexpert._key(row.get("Path", ""))  # pylint: disable=protected-access
    cls = class_of(row)
    if key and cls:
      image_id = key.replace("/", "_")
      if image_id in by_id:
        candidates[cls].append(image_id)
  chosen: dict[str, str] = {}
  if split_file:
    listed = split_lists.read_split_list(split_file)
    for image_id in listed.assign:
      cls = next((c for c in CLASSES if image_id in candidates[c]), None)
      if cls is None:
        raise ValueError(f"{split_file} lists {image_id!r}, which is not a 5x200 candidate of "
                         f"{train_csv} (not in it, lateral, or not positive for exactly one class)")
      chosen[image_id] = cls
    how = f"the images listed in {split_file}"
  else:
    for k, cls in enumerate(CLASSES):
      pool = sorted(candidates[cls])
      take = min(per_class, len(pool))
      rng = np.random.default_rng([split_seed, k])
      for j in sorted(rng.choice(len(pool), take, replace=False).tolist()):
        chosen[pool[j]] = cls
    how = f"GLoRIA's construction, {per_class} per class drawn with seed {split_seed}"
  items = []
  for image_id in sorted(chosen):
    it = by_id[image_id]
    one_hot = tuple(1.0 if c == chosen[image_id] else 0.0 for c in CLASSES)
    items.append(dataclasses.replace(it, split="test", labels=one_hot))
  counts = {c: sum(1 for v in chosen.values() if v == c) for c in CLASSES}
  problems = list(full.listing_errors)
  return Dataset(
      name="chexpert_5x200", source=str(root), items=items, label_names=CLASSES,
      listing_errors=problems, require_report=full.require_report,
      args={"layout": "chexpert_5x200", "input": str(root),
            "candidates_per_class": {c: len(v) for c, v in candidates.items()},
            "chosen_per_class": counts,
            "split": {"source": "official", "how": how, "seed": split_seed,
                      "found": {"train": 0, "validate": 0, "test": len(items)},
                      "expected": {"train": 0, "validate": 0, "test": per_class * len(CLASSES)},
                      "file": SPLIT_FILE_NAME}})


def write_split_file(dataset: Dataset, out_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes the selection as `<out_dir>/chexpert_5x200_split.txt` (split-list format)."""
  path = pathlib.Path(out_dir) / SPLIT_FILE_NAME
  split = dataset.args.get("split", {})
  lines = ["# mmrl split list: chexpert_5x200",
           f"# source: {dataset.source}/train.csv",
           f"# how: {split.get('how', '')}",
           "# counts: train=0 validate=0 test=" + str(len(dataset.items)),
           "# unlisted: left out",
           "# licence: image ids of CheXpert (Stanford University School of Medicine CheXpert "
           "Dataset Research Use Agreement); do not redistribute with the images"]
  lines += [f"test {it.item_id}" for it in dataset.items]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path

