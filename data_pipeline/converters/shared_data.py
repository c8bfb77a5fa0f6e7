"""Presets for the real test data in ../shared/data (see its README): NIH CXR14 and COVID CXR.

Owns the ManifestSpecs of those folders:
* `nih_cxr14`: 902 NIH ChestX-ray14 PNGs, 14 one-hot label columns (record_spec.NIH_CXR14_LABELS),
  radiologist boxes; **no reports** (records get report_text ''; require_report defaults to
  False: evaluation-only data).
* `covid_cxr`: 306 images with free-text clinical notes (`report_text`, often null), `labels`
  (finding names; vocabulary = the sorted union), `lung_boxes`, `lung_mask` (label 'Lungs').
  Views 'L' -> 'LATERAL' and 'AP Supine' -> 'AP'.
* `iu_xray_reports` is text only (no images) and has no preset.
Both read `train.jsonl`, `val.jsonl`, `test.jsonl` of the part's folder; the input may be the
part's folder or the shared data root.

Splits of `nih_cxr14` (`split_source`; data_pipeline/splits.py): `official` (default): the
folder's train/val/test files (70/15/15 by patient, seeded; its README). `lovt`: LoVT's NIH
pathology detection split, data_pipeline/split_lists/nih_cxr14_lovt.txt (the 880 boxed images
by patient 60/20/20 plus 100 'No Finding' images; `unlisted: left out`). Image ids are the PNG
file stems (`images/00001555_002.png` -> `00001555_002`, the list's ids). The shared folder holds
the 880 boxed images (528 / 176 / 176), not LoVT's 100 'No Finding' ones (the summary's
`listed_ids_not_in_download`); its 22 images that the list does not name are not converted
(`download_ids_not_in_list`). split_seed is unused (lists). `covid_cxr` has its folder's split.
"""
from __future__ import annotations

import dataclasses
import pathlib

from data_pipeline import record_spec
from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset
from data_pipeline.converters import manifest

NIH_CXR14 = manifest.ManifestSpec(
    name="nih_cxr14", id="", label_names=record_spec.NIH_CXR14_LABELS, label_columns=True,
    report_text="", findings="", impression="", require_report=False)

COVID_CXR = manifest.ManifestSpec(
    name="covid_cxr", id="", labels="labels", boxes="lung_boxes", mask="lung_mask",
    mask_label="Lungs", view_map=(("L", "LATERAL"), ("AP SUPINE", "AP")), findings="",
    impression="", require_report=True)

NIH_CXR14_SOURCES = ("official", "lovt")


def _part(input_path: str | pathlib.Path, part: str) -> list[pathlib.Path]:
  root = pathlib.Path(input_path)
  if (root / part).is_dir():
    root = root / part
  files = [root / f"{s}.jsonl" for s in ("train", "val", "test") if (root / f"{s}.jsonl").is_file()]
  if not files:
    raise FileNotFoundError(f"{root} has no train.jsonl/val.jsonl/test.jsonl: --input must be the "
                            f"shared data folder or its {part}/ folder")
  return files


def nih_cxr14(input_path: str | pathlib.Path, *, split_source: str = "", split_seed: int = 0,
              **spec_overrides) -> Dataset:
  """NIH ChestX-ray14 subset of ../shared/data (images, 14 labels, boxes; no reports); split by
  `split_source` (module docstring)."""
  del split_seed
  source = split_lists.check_source("nih_cxr14", split_source, NIH_CXR14_SOURCES)
  spec = dataclasses.replace(NIH_CXR14, **spec_overrides)
  ds = manifest.list_manifest(_part(input_path, "nih_cxr14"), spec=spec, source=str(input_path))
  ds.args["layout"] = "nih_cxr14"
  if source == "official":
    return ds
  split_list = split_lists.read_split_list(split_lists.list_path("nih_cxr14", source))
  assign = {it.item_id: split_list.assign[it.item_id] for it in ds.items
            if it.item_id in split_list.assign}
  ds.args["split"] = split_lists.summary(
      source, assign, how="shipped list; images it does not name are left out",
      split_list=split_list, not_listed=len(ds.items) - len(assign))
  ds.items = [dataclasses.replace(it, split=assign[it.item_id]) for it in ds.items
              if it.item_id in assign]
  return ds


def covid_cxr(input_path: str | pathlib.Path, **spec_overrides) -> Dataset:
  """COVID-19 image data collection subset of ../shared/data (notes, lung boxes and masks)."""
  spec = dataclasses.replace(COVID_CXR, **spec_overrides)
  ds = manifest.list_manifest(_part(input_path, "covid_cxr"), spec=spec, source=str(input_path))
  ds.args["layout"] = "covid_cxr"
  return ds
