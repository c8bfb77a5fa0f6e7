"""Generic manifests (CSV or JSONL, one row per image) -> base.Dataset.

Owns reading a table that names image files and, optionally, their report, labels, boxes and
mask. Which column means what is a `ManifestSpec`; its defaults match the schemas of
../shared/data (`image`, `patient_id`, `split`, `view`, `report_text`, `labels`, `boxes`, ...):

| field of ManifestSpec | default column | cell |
|---|---|---|
| image | image | path relative to the manifest's folder (PNG/JPEG/DICOM) |
| id | id | image id; missing/empty -> the image file's stem |
| patient_id, study_id, split, view | same names | strings ('' -> data_pipeline.convert defaults) |
| report_text | report_text | free-text report, or |
| findings, impression | findings, impression | pre-split sections |
| labels | labels | list of positive label names (JSON list, or 'a|b' in CSV) |
| label_names + label_columns=True | one column per name | 1 / 0 / -1 / blank |
| boxes | boxes | list of {label,x,y,w,h} or {label,xmin,ymin,xmax,ymax}, pixels of the image file |
| mask | mask | path of a binary PNG mask (label: ManifestSpec.mask_label) |

In CSV files, list/dict cells are JSON strings. A row that cannot be read is logged in
errors.jsonl (kind `bad_manifest_row`) and skipped; a missing image file is found by the converter.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import pathlib
from typing import Any, Optional, Sequence

from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry


@dataclasses.dataclass(frozen=True)
class ManifestSpec:
  """Which manifest column holds what (a column that is absent is simply not used)."""
  name: str = "manifest"
  image: str = "image"
  id: str = "id"
  patient_id: str = "patient_id"
  study_id: str = "study_id"
  split: str = "split"
  view: str = "view"
  view_map: tuple[tuple[str, str], ...] = ()   # e.g. (('L', 'LATERAL'),); applied after upper()
  report_text: str = "report_text"
  findings: str = "findings"
  impression: str = "impression"
  labels: str = "labels"
  label_names: tuple[str, ...] = ()            # () = sorted union of the names in `labels`
  label_columns: bool = False                  # True: one column per label_names entry
  boxes: str = "boxes"
  mask: str = "mask"
  mask_label: str = "mask"
  require_report: bool = True


def _parse_cell(value: Any) -> Any:
  if isinstance(value, str):
    s = value.strip()
    if s[:1] in ("[", "{"):
      try:
        return json.loads(s)
      except ValueError:
        return value
  return value


def read_manifest(path: pathlib.Path) -> list[dict]:
  """Rows of a .csv[.gz] or .jsonl/.json (one object per line) manifest."""
  raw = path.read_bytes()
  if path.suffix == ".gz":
    raw = gzip.decompress(raw)
  text = raw.decode("utf-8-sig")
  name = path.name.lower().removesuffix(".gz")
  if name.endswith((".jsonl", ".json", ".ndjson")):
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except ValueError as e:
          rows.append({"__error__": f"line {n} is not JSON: {e}", "__line__": n})
    return rows
  if name.endswith((".csv", ".tsv")):
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if name.endswith(".tsv") else ",")
    return [{k: _parse_cell(v) for k, v in r.items()} for r in reader]
  raise ValueError(f"manifest {path}: unknown format; use .csv, .tsv, .jsonl or .json (one JSON "
                   "object per line), optionally .gz")


def _str(row: dict, col: str) -> str:
  v = row.get(col) if col else None
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  return str(v).strip()


def _opt_text(row: dict, col: str) -> Optional[str]:
  v = row.get(col) if col else None
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return None
  return str(v)


def _names(value: Any) -> list[str]:
  if value is None or value == "":
    return []
  if isinstance(value, (list, tuple)):
    return [str(v).strip() for v in value if str(v).strip()]
  return [v.strip() for v in str(value).split("|") if v.strip()]


def _label_value(value: Any) -> float:
  """A manifest label cell (string, number or JSON null) -> 1.0 / 0.0 / -1.0 / NaN. Unlike
  base.label_value (CSV text cells), it takes numbers and lets NaN through."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return math.nan
  v = float(value)
  if math.isnan(v):
    return v
  if v not in (1.0, 0.0, -1.0):
    raise ValueError(f"label value {value!r} is not 1, 0, -1 or blank")
  return v


def _boxes(value: Any) -> tuple[SourceBox, ...]:
  if value is None or value == "":
    return ()
  if not isinstance(value, list):
    raise ValueError(f"boxes cell must be a list of objects, got {type(value).__name__}")
  out = []
  for b in value:
    label = str(b.get("label", ""))
    if all(k in b for k in ("x", "y", "w", "h")):
      x, y, w, h = (float(b[k]) for k in ("x", "y", "w", "h"))
      out.append(SourceBox(label, x, y, x + w, y + h))
    elif all(k in b for k in ("xmin", "ymin", "xmax", "ymax")):
      out.append(SourceBox(label, *(float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))))
    else:
      raise ValueError(f"box {b} needs keys x,y,w,h or xmin,ymin,xmax,ymax")
  return tuple(out)


def list_manifest(paths: str | pathlib.Path | Sequence[str | pathlib.Path], *,
                  spec: ManifestSpec = ManifestSpec(), source: str = "") -> Dataset:
  """Lists the rows of one or more manifests (paths relative to each manifest's folder)."""
  if isinstance(paths, (str, pathlib.Path)):
    paths = [paths]
  paths = [pathlib.Path(p) for p in paths]
  for p in paths:
    if not p.is_file():
      raise FileNotFoundError(f"manifest {p} does not exist; --input must name a .csv or .jsonl "
                              "manifest file")
  view_map = {k.upper(): v for k, v in spec.view_map}
  tables = [(p, read_manifest(p)) for p in paths]
  names = tuple(spec.label_names)
  if not names and not spec.label_columns:
    found = {n for _, rows in tables for r in rows for n in _names(r.get(spec.labels))}
    names = tuple(sorted(found))
  if spec.label_columns and not names:
    raise ValueError("ManifestSpec.label_columns=True needs label_names (the column names)")

  items: list[Item] = []
  problems: list[dict] = []
  for path, rows in tables:
    folder = path.parent
    for n, row in enumerate(rows, 1):
      where = f"{path.name}:{n}"
      try:
        if "__error__" in row:
          raise ValueError(row["__error__"])
        image_rel = _str(row, spec.image)
        if not image_rel:
          raise ValueError(f"no {spec.image!r} column value (the image path)")
        image = folder / image_rel
        item_id = _str(row, spec.id) or pathlib.PurePosixPath(image_rel).stem
        if spec.label_columns:
          labels = tuple(_label_value(row.get(c)) for c in names)
        elif names and spec.labels in row:
          positive = set(_names(row.get(spec.labels)))
          unknown = positive - set(names)
          if unknown:
            problems.append(error_entry(item_id, "unknown_label", f"labels {sorted(unknown)} are "
                                        "not in label_names; ignored", str(image), skipped=False))
          labels = tuple(1.0 if name in positive else 0.0 for name in names)
        else:
          labels = None
        view = _str(row, spec.view).upper()
        mask_rel = _str(row, spec.mask)
        items.append(Item(
            item_id=item_id,
            image=str(image),
            source=image_rel,
            patient_id=_str(row, spec.patient_id),
            study_id=_str(row, spec.study_id),
            split=_str(row, spec.split),
            view=view_map.get(view, view),
            report_text=_opt_text(row, spec.report_text),
            findings=_opt_text(row, spec.findings),
            impression=_opt_text(row, spec.impression),
            labels=labels,
            boxes=_boxes(row.get(spec.boxes)),
            masks=((spec.mask_label, str(folder / mask_rel)),) if mask_rel else ()))
      except (ValueError, TypeError, AttributeError) as e:
        problems.append(error_entry(_str(row, spec.id) or where, "bad_manifest_row",
                                    f"{where}: {e}; fix the row or the ManifestSpec", str(path)))
  return Dataset(
      name=spec.name, source=source or ",".join(str(p) for p in paths), items=items,
      label_names=names, listing_errors=problems, require_report=spec.require_report,
      args={"layout": "manifest", "input": [str(p) for p in paths],
            "spec": dataclasses.asdict(spec)})

