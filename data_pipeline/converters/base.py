"""What every converter shares: the Item / SourceBox / Dataset they produce, error entries, split
names, CheXpert-style label cells, and the LAYOUTS table that data_pipeline.convert reads.

An `Item` is a cheap, picklable description of one input (paths, ids, labels, boxes in source
pixels; no pixels); a `Dataset` is a converter's output. The converters (this package) import
from here and nothing from data_pipeline.convert, so the conversion engine can import them back.
`LAYOUTS` names each layout's lister as (module, function) strings: nothing here imports a
converter, so this module sits below all of them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

_SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                  "valid": "validate", "validation": "validate", "dev": "validate",
                  "test": "test", "testing": "test"}


@dataclasses.dataclass(frozen=True)
class SourceBox:
  """A box in pixels of the source image (or of Item.box_frame)."""
  label: str
  xmin: float
  ymin: float
  xmax: float
  ymax: float


@dataclasses.dataclass(frozen=True)
class Item:
  """One input image and everything needed to turn it into a record (no pixels loaded)."""
  item_id: str                      # image/id: dicom_id or image file stem; unique
  image: str                        # path of the source image: DICOM, PNG, JPEG, ...
  source: str = ""                  # image/source: path relative to the input root
  patient_id: str = ""              # '' -> item_id
  study_id: str = ""                # '' -> item_id
  split: str = ""                   # '' -> hash of patient id; aliases like 'val' accepted
  view: str = ""                    # '' -> the DICOM ViewPosition (if any)
  report_path: str = ""             # a report file (UTF-8 text), or
  report_text: Optional[str] = None  # free text, or
  findings: Optional[str] = None    # pre-split sections
  impression: Optional[str] = None
  labels: Optional[tuple[float, ...]] = None   # one per Dataset.label_names; NaN = blank
  boxes: tuple[SourceBox, ...] = ()
  box_frame: Optional[tuple[int, int]] = None  # (height, width) of the boxes' pixel frame;
                                               # None = the source image as decoded
  masks: tuple[tuple[str, str], ...] = ()      # (label, path of a binary PNG mask)
  rle_masks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (label, SIIM RLE strings, OR-ed;
                                               # () or '-1' = empty) in the source image frame
  shape_masks: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...] = ()  # (label, polygons
                                               # (x1, y1, x2, y2, ...) in source pixels, filled
                                               # and OR-ed; () = empty): data_pipeline.mask_shapes


@dataclasses.dataclass
class Dataset:
  """A converter's output: the items, the label vocabulary and problems found while listing."""
  name: str
  source: str
  items: list[Item]
  label_names: tuple[str, ...] = ()
  listing_errors: list[dict] = dataclasses.field(default_factory=list)  # errors.jsonl entries
  require_report: bool = True       # the layout's default (False for image-only data sets)
  args: dict = dataclasses.field(default_factory=dict)  # converter arguments, for dataset_info


def error_entry(item: str, kind: str, reason: str, path: str = "", *, skipped: bool = True,
                split: str = "") -> dict:
  """One line of errors.jsonl. skipped=False marks a warning (the record was still written)."""
  return {"item": item, "kind": kind, "reason": reason, "path": path, "split": split,
          "skipped": skipped}


def normalise_split(value: str) -> str:
  """Maps split names to record_spec.SPLITS ('val' -> 'validate'); '' stays ''."""
  v = str(value or "").strip().lower()
  if not v:
    return ""
  if v not in _SPLIT_ALIASES:
    raise ValueError(f"split {value!r} is not one of {sorted(_SPLIT_ALIASES)}")
  return _SPLIT_ALIASES[v]


def label_value(cell: Optional[str]) -> float:
  """A CheXpert-style label cell ('1', '0', '-1' or blank) -> 1.0 / 0.0 / -1.0 / NaN."""
  cell = (cell or "").strip()
  if not cell:
    return math.nan
  v = float(cell)
  if v not in (1.0, 0.0, -1.0):
    raise ValueError(f"label value {cell!r} is not 1, 0, -1 or empty")
  return v


@dataclasses.dataclass(frozen=True)
class Layout:
  """One input layout: its lister is `<module>.<function>(input_path, **kwargs) -> Dataset`,
  with module under data_pipeline/converters/, imported only when the layout is used.
  takes_split: the lister takes split_source= / split_seed= (data_pipeline/splits.py)."""
  module: str
  function: str
  takes_split: bool = False


LAYOUTS: dict[str, Layout] = {
    "mimic": Layout("mimic", "list_mimic"),
    "manifest": Layout("manifest", "list_manifest"),
    "nih_cxr14": Layout("shared_data", "nih_cxr14", takes_split=True),
    "covid_cxr": Layout("shared_data", "covid_cxr"),
    "chexpert": Layout("chexpert", "list_chexpert"),
    "rsna_pneumonia": Layout("rsna_pneumonia", "list_rsna_pneumonia", takes_split=True),
    "siim_acr": Layout("siim_acr", "list_siim_acr", takes_split=True),
    "object_cxr": Layout("object_cxr", "list_object_cxr", takes_split=True),
    "vindr_cxr": Layout("vindr_cxr", "list_vindr_cxr", takes_split=True),
    "chexpert_5x200": Layout("chexpert_5x200", "list_chexpert_5x200", takes_split=True),
    "ms_cxr": Layout("ms_cxr", "list_ms_cxr", takes_split=True),
    "covidx": Layout("covidx", "list_covidx", takes_split=True),
}
# Layouts that take split_source= / split_seed= (data_pipeline/splits.py).
SPLIT_LAYOUTS = tuple(name for name, layout in LAYOUTS.items() if layout.takes_split)

