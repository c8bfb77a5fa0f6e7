"""Reading the files of an official data-set download, for the downstream converters.

Owns three small jobs shared by rsna_pneumonia, siim_acr, object_cxr, vindr_cxr, ms_cxr, covidx:
* `read_csv`: a CSV as a list of row dicts, header names stripped (SIIM's `train-rle.csv` writes
  ` EncodedPixels` with a leading space), a UTF-8 BOM dropped, the required columns checked; a
  missing file is a FileNotFoundError naming it and what it should be.
* `index_files`: image id (file stem) -> path for every file with given suffixes under a folder
  (the DICOM trees of SIIM and MS-CXR/MIMIC nest them in study/series folders).
* `split_assignment`: applies a shipped split list (data_pipeline/splits.py) on top of a
  converter's default split per image.
"""
from __future__ import annotations

import csv
import io
import os
import pathlib
from typing import Mapping, Optional, Sequence

from data_pipeline import splits as split_lists


def read_csv(path: pathlib.Path, required: Sequence[str], *, what: str) -> list[dict[str, str]]:
  """Rows of `path` (header names stripped); raises FileNotFoundError / ValueError naming it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} {str(path)!r} does not exist: the official download has it "
                            "there; point --input at the folder that holds it")
  text = path.read_bytes().decode("utf-8-sig")
  reader = csv.reader(io.StringIO(text))
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise ValueError(f"{what} {str(path)!r} is empty (no header line)") from None
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f"{what} {str(path)!r} lacks the column(s) {missing}; its header is "
                     f"{header}: is this the right file?")
  rows = []
  for values in reader:
    if not any(v.strip() for v in values):
      continue
    row = dict(zip(header, (v.strip() for v in values)))
    row["__line__"] = str(reader.line_num)
    rows.append(row)
  return rows


def index_files(folder: pathlib.Path, suffixes: Sequence[str]) -> dict[str, pathlib.Path]:
  """File stem -> path of every file under `folder` whose suffix (lower-case) is in `suffixes`;
  the first in sorted order wins when two share a stem."""
  found: dict[str, pathlib.Path] = {}
  if not pathlib.Path(folder).is_dir():
    return found
  suffixes = tuple(s.lower() for s in suffixes)
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in sorted(filenames):
      p = pathlib.Path(dirpath) / name
      if p.suffix.lower() in suffixes:
        found.setdefault(p.stem, p)
  return found


def split_assignment(dataset: str, source: str, default: Mapping[str, str], *,
                     split_list: Optional[split_lists.SplitList] = None
                     ) -> dict[str, str]:
  """image id -> split: `default` (the official split, or 'train' everywhere), overridden by
  `split_list` (or the shipped `<dataset>_<source>.txt` when source is not 'official')."""
  if split_list is None and source != "official":
    split_list = split_lists.read_split_list(split_lists.list_path(dataset, source))
  out = dict(default)
  if split_list is not None:
    for image_id in out:
      if image_id in split_list.assign:
        out[image_id] = split_list.assign[image_id]
  return out
