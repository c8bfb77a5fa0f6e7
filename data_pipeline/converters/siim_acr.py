"""SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019) -> base.Dataset.

Owns reading the official download as LoVT and GLoRIA read it:
```
<root>/train-rle.csv          ImageId, EncodedPixels   (the header has ' EncodedPixels' with a
                              leading space; several rows per image, one per pneumothorax
                              region; '-1' = no pneumothorax)
<root>/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm
<root>/dicom-images-test/...  (also searched: every *.dcm under the root is indexed by stem)
```
`EncodedPixels` is the competition's relative-offset, column-major RLE (data_pipeline.mask_rle),
decoded in the DICOM's pixel frame (1024 x 1024) at conversion. Records: label_names
('Pneumothorax',), labels/values 1 when any row of the image has a mask; one mask per record,
label 'Pneumothorax', the OR of the image's rows (all zero for '-1' images). An RLE that ends past
the image is a `bad_mask` error for that image; a CSV ImageId without a DICOM is `missing_file`.
No reports. The stage 2 file `stage_2_train.csv` (standard, non-relative RLE) is not read.

Splits (`split_source`): no official labelled test split. `lovt` (default): LoVT's 60/20/20
lists (data_pipeline/split_lists/siim_acr_lovt.txt). `benchx`: BenchX's list names the PNG files
of a Kaggle re-release (`<n>_train_<label>_`) that cannot be mapped to ImageIds, so this is a
**seeded** split (`split_seed`) with BenchX's counts 9303 / 1372 / 1372 of 12047 images
(`splits.seeded_split`): same sizes, different images than BenchX's.
"""
from __future__ import annotations

import pathlib

from data_pipeline import mask_rle
from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, error_entry
from data_pipeline.converters import download_files

LABEL = "Pneumothorax"
SOURCES = ("lovt", "benchx")
BENCHX_COUNTS = {"train": 9303, "validate": 1372, "test": 1372}


def list_siim_acr(root: str | pathlib.Path, *, split_source: str = "",
                  split_seed: int = 0) -> Dataset:
  """Lists the SIIM-ACR download (module docstring)."""
  root = pathlib.Path(root)
  source = split_lists.check_source("siim_acr", split_source, SOURCES)
  csv_path = root / "train-rle.csv"
  rows = download_files.read_csv(csv_path, ("ImageId", "EncodedPixels"),
                                 what="SIIM RLE file")
  rles: dict[str, list[str]] = {}
  for row in rows:
    image_id = row["ImageId"]
    rles.setdefault(image_id, [])
    if not mask_rle.is_empty(row["EncodedPixels"]):
      rles[image_id].append(row["EncodedPixels"])
  dicoms = download_files.index_files(root, (".dcm",))
  problems = []
  present = []
  for image_id in sorted(rles):
    if image_id in dicoms:
      present.append(image_id)
    else:
      problems.append(error_entry(image_id, "missing_file", f"{csv_path.name} lists ImageId "
                                  f"{image_id!r} but no {image_id}.dcm is under {root}",
                                  str(csv_path)))
  split_list = None
  if source == "benchx":
    assign = split_lists.seeded_split(present, BENCHX_COUNTS, split_seed)
    split_info = split_lists.summary(source, assign, how="seeded with BenchX's counts (BenchX's "
                                     "list names Kaggle PNG files, not ImageIds)",
                                     seed=split_seed, expected=BENCHX_COUNTS)
  else:
    split_list = split_lists.read_split_list(split_lists.list_path("siim_acr", source))
    assign = download_files.split_assignment("siim_acr", source,
                                             dict.fromkeys(present, "train"),
                                             split_list=split_list)
    split_info = split_lists.summary(source, assign, how="shipped list", split_list=split_list)
  items = [Item(item_id=i, image=str(dicoms[i]), source=str(dicoms[i].relative_to(root)),
                split=assign[i], labels=(1.0 if rles[i] else 0.0,),
                rle_masks=((LABEL, tuple(rles[i])),))
           for i in present]
  return Dataset(
      name="siim_acr", source=str(root), items=items, label_names=(LABEL,),
      listing_errors=problems, require_report=False,
      args={"layout": "siim_acr", "input": str(root), "rle_csv": csv_path.name,
            "dicoms_without_rle_row": sum(1 for i in dicoms if i not in rles),
            "split": split_info})
