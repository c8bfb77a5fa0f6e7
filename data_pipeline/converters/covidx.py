"""COVIDx CXR (COVID-Net; Kaggle andyczhao/covidx-cxr2, releases CXR-2 .. CXR-4) -> base.Dataset.

Owns reading the release's image lists:
```
<root>/train.txt, <root>/val.txt (CXR-3 and later), <root>/test.txt
    one image per line: '<patient id> <filename> <class> <data source>' (space-separated;
    class: positive | negative in CXR-2+, COVID-19 | pneumonia | normal in older releases)
<root>/train/<filename>, <root>/val/<filename>, <root>/test/<filename>   PNG / JPEG images
```
Records: label_names = the sorted classes of the lists, labels/values one-hot; patient/id = the
list's patient id; no reports (require_report=False). A line that does not have four fields is a
`bad_manifest_row` error; a listed file that is missing is `missing_file` at conversion.

Splits (`split_source`): `official` (default) = `benchx`: train.txt -> train, val.txt ->
validate, test.txt -> test (BenchX's lists are CXR-4's three files). A release without val.txt
gets a validation set of 10 % of the train **patients**, by sha256(split_seed/patient id)
(`splits.hash_fraction_split`); the metadata says so. LoVT does not use COVIDx.
Every line of a list is an image: the lists have no header. (BenchX's copies hold one line fewer
than the lists they come from -- 67862 / 8472 / 8481 -- as its `pd.read_csv(path, sep=' ')` reads
the first line as a header; `official` keeps that image.)
"""
from __future__ import annotations

import pathlib

from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, error_entry

SOURCES = ("official", "benchx")
VALIDATION_FRACTION = 0.1  # of the train patients, when the release has no val.txt
_LISTS = (("train", "train"), ("val", "validate"), ("test", "test"))


def parse_line(line: str) -> tuple[str, str, str, str]:
  """'<patient> <filename> <class> <source>' -> the four fields (a filename may hold spaces)."""
  parts = line.split()
  if len(parts) < 4:
    raise ValueError(f"{line!r} has {len(parts)} fields; expected '<patient id> <filename> "
                     "<class> <data source>'")
  return parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]


def list_covidx(root: str | pathlib.Path, *, split_source: str = "",
                split_seed: int = 0) -> Dataset:
  """Lists a COVIDx CXR release (module docstring)."""
  root = pathlib.Path(root)
  source = split_lists.check_source("covidx", split_source, SOURCES)
  for required in ("train.txt", "test.txt"):
    if not (root / required).is_file():
      raise FileNotFoundError(f"COVIDx list {str(root / required)!r} does not exist: --input must "
                              "be the COVIDx folder holding train.txt, test.txt (and val.txt) and "
                              "the train/ test/ (val/) image folders")
  has_val = (root / "val.txt").is_file()
  problems: list[dict] = []
  rows = []
  seen: set[str] = set()
  for stem, split in _LISTS:
    path = root / f"{stem}.txt"
    if not path.is_file():
      continue
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
      if not line.strip():
        continue
      try:
        patient, filename, cls, data_source = parse_line(line)
      except ValueError as e:
        problems.append(error_entry(f"{path.name}:{n}", "bad_manifest_row", str(e), str(path)))
        continue
      image_id = pathlib.Path(filename).stem
      if image_id in seen:
        problems.append(error_entry(image_id, "duplicate_id", f"{path.name}:{n} lists "
                                    f"{filename!r} again; kept the first", str(path)))
        continue
      seen.add(image_id)
      if split == "train" and not has_val:
        split = split_lists.hash_fraction_split(
            patient, (1 - VALIDATION_FRACTION, VALIDATION_FRACTION, 0.0), split_seed)
      rows.append((image_id, patient, filename, cls, data_source, stem, split))
  classes = tuple(sorted({r[3] for r in rows}))
  items = [Item(item_id=image_id, image=str(root / stem / filename), source=f"{stem}/{filename}",
                patient_id=patient, split=split,
                labels=tuple(1.0 if c == cls else 0.0 for c in classes))
           for image_id, patient, filename, cls, _, stem, split in rows]
  assign = {it.item_id: it.split for it in items}
  how = ("the release's train.txt / val.txt / test.txt" if has_val else
         f"train.txt / test.txt; validate = {VALIDATION_FRACTION:.0%} of the train patients by "
         f"sha256(seed/patient id)")
  return Dataset(
      name="covidx", source=str(root), items=items, label_names=classes,
      listing_errors=problems, require_report=False,
      args={"layout": "covidx", "input": str(root),
            "data_sources": sorted({r[4] for r in rows}),
            "split": split_lists.summary(source, assign, how=how,
                                         seed=None if has_val else split_seed)})
