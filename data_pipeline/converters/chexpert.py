"""CheXpert layout (+ optional CheXpert-Plus reports) -> base.Dataset.

Owns reading the official CheXpert-v1.0 release (also the `-small` one):
```
<root>/train.csv        Path, Sex, Age, Frontal/Lateral, AP/PA, + the 14 CheXpert label columns
<root>/valid.csv        same columns (the official 234-study validation set)
<root>/test.csv         optional (later releases / CheXlocalize): Path + the 14 labels
<root>/train/patientNNNNN/studyN/viewN_frontal.jpg        images (JPEG; PNG/DICOM also read)
<root>/df_chexpert_plus_*.csv                             optional CheXpert-Plus reports
```
`Path` cells start with the release folder's name (`CheXpert-v1.0-small/train/...`); they are
resolved against the root's parent and, failing that, against the root with that first part
dropped, so the folder may be renamed.

Labels: the 14 columns become `record_spec.CHEXPERT_LABELS` (the MIMIC-CXR vocabulary, so probes
and zero-shot prompts carry over): 1 positive, 0 negative, -1 uncertain, blank = not mentioned
(NaN; masked out by the pipeline's `label_mask`).
Splits: train.csv -> train, valid.csv -> validate, test.csv / test_labels.csv -> test.
Views: the `AP/PA` column (AP, PA, LL, RL), else LATERAL for `Frontal/Lateral` = Lateral.
Ids: patient `patientNNNNN`, study `patientNNNNN_studyN`, image `patientNNNNN_studyN_viewN_frontal`.

CheXpert has no reports: records are labels-only (require_report=False) and serve linear-probe
and zero-shot evaluation. With a CheXpert-Plus CSV (`reports_csv=`, or a `df_chexpert_plus*.csv`
found in the root or its parent) its `section_findings` / `section_impression` (else `report`)
become the report, joined on `path_to_image` (file suffix ignored: the Plus release ships PNGs);
the conversion then requires a report and logs images without one in errors.jsonl.
No pixels are read here; `data_pipeline.convert` decodes in its workers.
"""
from __future__ import annotations

import csv
import io
import pathlib
import re
from typing import Optional

from data_pipeline import record_spec
from data_pipeline.converters.base import Dataset, Item, error_entry, label_value

SPLIT_FILES = (("train.csv", "train"), ("valid.csv", "validate"), ("test.csv", "test"),
               ("test_labels.csv", "test"))
PLUS_GLOB = "df_chexpert_plus*.csv"
_PATIENT_STUDY = re.compile(r"(patient\d+)/(study\d+)/([^/]+?)(?:\.[A-Za-z0-9]+)?$")


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  text = path.read_bytes().decode("utf-8-sig")
  return list(csv.DictReader(io.StringIO(text)))


def _resolve(root: pathlib.Path, rel: str) -> pathlib.Path:
  """The image file of a `Path` cell (module docstring)."""
  rel = rel.strip().replace("\\", "/")
  first = root.parent / rel
  if first.exists():
    return first
  parts = rel.split("/")
  return root.joinpath(*parts[1:]) if len(parts) > 1 else root / rel


def _key(rel: str) -> Optional[str]:
  """'patient00001/study1/view1_frontal': the join key of CheXpert and CheXpert-Plus paths."""
  m = _PATIENT_STUDY.search(rel.strip().replace("\\", "/"))
  return "/".join(m.groups()) if m else None


def _view(row: dict[str, str]) -> str:
  ap_pa = (row.get("AP/PA") or "").strip().upper()
  if ap_pa:
    return ap_pa
  if (row.get("Frontal/Lateral") or "").strip().lower() == "lateral":
    return "LATERAL"
  return ""


def find_reports_csv(root: pathlib.Path) -> Optional[pathlib.Path]:
  """A CheXpert-Plus `df_chexpert_plus*.csv` in the root or its parent (newest name first)."""
  for folder in (root, root.parent):
    found = sorted(folder.glob(PLUS_GLOB), reverse=True)
    if found:
      return found[0]
  return None


def read_reports(path: pathlib.Path) -> dict[str, dict[str, str]]:
  """Join key -> {'findings', 'impression', 'report'} from a CheXpert-Plus CSV."""
  rows = _read_csv(path)
  if rows and "path_to_image" not in rows[0]:
    raise ValueError(f"{path} has no 'path_to_image' column (columns: {sorted(rows[0])[:12]}); "
                     "give the CheXpert-Plus df_chexpert_plus_*.csv")
  out = {}
  for r in rows:
    key = _key(r.get("path_to_image", ""))
    if key:
      out[key] = {"findings": (r.get("section_findings") or "").strip(),
                  "impression": (r.get("section_impression") or "").strip(),
                  "report": (r.get("report") or "").strip()}
  return out


def list_chexpert(root: str | pathlib.Path, *,
                  reports_csv: Optional[str | pathlib.Path] = None) -> Dataset:
  """Lists a CheXpert(-v1.0[-small]) folder as a Dataset (module docstring).

  Args:
    root: the folder holding train.csv / valid.csv and train/ / valid/.
    reports_csv: a CheXpert-Plus CSV; default: `df_chexpert_plus*.csv` in the root or its parent
      when there is one; '' to ignore it.
  """
  root = pathlib.Path(root)
  csvs = [(root / name, split) for name, split in SPLIT_FILES if (root / name).is_file()]
  if not csvs:
    raise FileNotFoundError(
        f"{root} has none of {', '.join(n for n, _ in SPLIT_FILES)}: --input must be the CheXpert "
        "folder (CheXpert-v1.0 or CheXpert-v1.0-small) holding train.csv and valid.csv")
  if reports_csv is None:
    plus = find_reports_csv(root)
  else:
    plus = pathlib.Path(reports_csv) if str(reports_csv) else None
    if plus is not None and not plus.is_file():
      raise FileNotFoundError(f"reports_csv={str(plus)!r} does not exist; give the CheXpert-Plus "
                              "df_chexpert_plus_*.csv or '' for labels-only records")
  reports = read_reports(plus) if plus is not None else {}

  problems: list[dict] = []
  items: list[Item] = []
  seen: set[str] = set()
  for path, split in csvs:
    for n, row in enumerate(_read_csv(path), 2):  # line 1 is the header
      rel = (row.get("Path") or "").strip()
      key = _key(rel)
      where = f"{path.name}:{n}"
      if not key:
        problems.append(error_entry(where, "bad_manifest_row", f"Path {rel!r} is not "
                                    "<release>/<split>/patientN/studyN/<view>.jpg", str(path)))
        continue
      patient, study, view_name = key.split("/")
      item_id = f"{patient}_{study}_{view_name}"
      if item_id in seen:
        problems.append(error_entry(item_id, "duplicate", f"{where} repeats an image listed "
                                    "earlier; kept the first", str(path)))
        continue
      try:
        labels = tuple(label_value(row.get(name)) for name in record_spec.CHEXPERT_LABELS)
      except ValueError as e:
        problems.append(error_entry(item_id, "bad_label", f"{e} in {where}; use 1.0, 0.0, -1.0 "
                                    "or leave empty", str(path)))
        continue
      seen.add(item_id)
      image = _resolve(root, rel)
      report = reports.get(key, {})
      items.append(Item(
          item_id=item_id,
          image=str(image),
          source=rel,
          patient_id=patient,
          study_id=f"{patient}_{study}",
          split=split,
          view=_view(row),
          findings=report.get("findings") or None,
          impression=report.get("impression") or None,
          report_text=(report.get("report") or None)
          if not (report.get("findings") or report.get("impression")) else None,
          labels=labels))
  return Dataset(
      name="chexpert_plus" if plus is not None else "chexpert", source=str(root), items=items,
      label_names=record_spec.CHEXPERT_LABELS, listing_errors=problems,
      require_report=plus is not None,
      args={"layout": "chexpert", "input": str(root),
            "csvs": [p.name for p, _ in csvs], "reports_csv": str(plus or "")})
