"""Converts an input layout to TFRecord shards (docs/data_format.md).

COMMAND: python -m experiments.convert --layout=mimic --input=/data/mimic-cxr \
           --output=/data/mimic_tfr --views=PA,AP --workers=8
         python -m experiments.convert --layout=manifest --input=my_manifest.csv --output=out/
         python -m experiments.convert --layout=nih_cxr14 --input=../shared/data --output=out/nih
           [--split_source=lovt: LoVT's NIH detection split, 528 / 176 / 176 of the 880 boxed]
         python -m experiments.convert --layout=covid_cxr --input=../shared/data --output=out/covid
         python -m experiments.convert --layout=chexpert --input=/data/CheXpert-v1.0-small \
           --output=/data/chexpert_tfr --views=PA,AP
         python -m experiments.convert --layout=rsna_pneumonia --input=/data/rsna \
           --output=/data/rsna_tfr --split_source=benchx
         (downstream layouts: rsna_pneumonia, siim_acr, object_cxr, vindr_cxr, chexpert_5x200,
         ms_cxr [--annotations=MS_CXR_Local_Alignment_v1.1.0.csv], covidx; docs/data_format.md)
SMOKE:   add --max_items=50
SUBSETS: add --subset_fractions=1,10,100 --subset_seeds=0,1,2 to also write the nested training
         subsets (<output>/subsets_train.json; data_pipeline/subsets.py, docs/downstream.md)
Thin: parses flags, calls data_pipeline.convert, prints a summary. Re-running resumes (finished
shards are kept); failed inputs are listed in <output>/errors.jsonl.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app
from absl import flags

from data_pipeline import convert

_LAYOUT = flags.DEFINE_enum("layout", None, list(convert.LAYOUTS), "Input layout.")
_INPUT = flags.DEFINE_string(
    "input", None, "MIMIC-CXR root, CheXpert folder, manifest file, or shared data folder "
    "(docs/data_preparation.md).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder for shards and their metadata "
                               "(mmrl_dataset_info.json; TFDS's dataset_info.json, features.json).")
_SHORT_SIDE = flags.DEFINE_integer("short_side", 512, "Resize so the short side is at most this.")
_BIT_DEPTH = flags.DEFINE_enum("bit_depth", "8", ["8", "16"], "PNG bit depth.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Shards per split (0 = ~1024 records each).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes (each writes whole shards).")
_VIEWS = flags.DEFINE_list("views", [], "Keep only these views, e.g. PA,AP (empty = all).")
_MAX_ITEMS = flags.DEFINE_integer("max_items", 0, "Convert only the first N items (0 = all).")
_ARRAY_RECORD = flags.DEFINE_bool(
    "array_record", False, "Also write an ArrayRecord copy of each shard (twice the disk), so that "
    "TensorFlow Datasets' random access (tfds.data_source) works on the folder; mmrl never needs "
    "it.")
_SPLIT_SOURCE = flags.DEFINE_enum(
    "split_source", None, ["official", "lovt", "benchx"], "Downstream layouts and nih_cxr14: whose "
    "train/validate/test split (data_pipeline/splits.py; default: the layout's own, see "
    "docs/data_format.md).")
_SPLIT_SEED = flags.DEFINE_integer(
    "split_seed", None, "Downstream layouts only: seed of the splits that are drawn, not listed "
    "(siim_acr benchx, chexpert_5x200, covidx without val.txt). Default 0.")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "ms_cxr only: the MS_CXR_Local_Alignment_v*.csv (default: found in "
    "--input or its parent).")
_SPLIT_FILE = flags.DEFINE_string(
    "split_file", None, "chexpert_5x200 only: convert the images of this selection (a "
    "chexpert_5x200_split.txt an earlier run wrote) instead of drawing them.")
_REQUIRE_REPORT = flags.DEFINE_bool(
    "require_report", None, "Items without a usable report are errors (default: true; false for "
    "nih_cxr14 and for chexpert without CheXpert-Plus reports, which have no reports).")
_SUBSET_FRACTIONS = flags.DEFINE_list(
    "subset_fractions", [], "After converting, write nested training subsets of these "
    "percentages (e.g. 1,10,100) to <output>/subsets_train.json (empty = none).")
_SUBSET_SEEDS = flags.DEFINE_list("subset_seeds", ["0"], "Seeds of the training subsets.")


def main(argv):
  del argv
  options = convert.ConvertOptions(
      short_side=_SHORT_SIDE.value, bit_depth=int(_BIT_DEPTH.value),
      num_shards=_NUM_SHARDS.value, workers=_WORKERS.value, views=tuple(_VIEWS.value),
      max_items=_MAX_ITEMS.value, require_report=_REQUIRE_REPORT.value,
      array_record=_ARRAY_RECORD.value)
  start = time.perf_counter()
  try:
    options.validate()
    kwargs = {"split_source": _SPLIT_SOURCE.value, "split_seed": _SPLIT_SEED.value,
              "annotations": _ANNOTATIONS.value, "split_file": _SPLIT_FILE.value}
    for name, only in (("annotations", "ms_cxr"), ("split_file", "chexpert_5x200")):
      if kwargs[name] is not None and _LAYOUT.value != only:
        raise ValueError(f"--{name} is for --layout={only} only")
    dataset = convert.load_layout(_LAYOUT.value, _INPUT.value,
                                  **{k: v for k, v in kwargs.items() if v is not None})
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"convert: {e}")
  info = convert.convert(dataset, _OUTPUT.value, options)
  if _LAYOUT.value == "chexpert_5x200":
    from data_pipeline.converters import chexpert_5x200  # pylint: disable=import-outside-toplevel
    print(f"  selection: {chexpert_5x200.write_split_file(dataset, _OUTPUT.value)}")
  seconds = time.perf_counter() - start
  out = pathlib.Path(_OUTPUT.value)
  written = info["num_records"] - info["records_reused"]
  print(f"{info['num_records']} records from {len(dataset.items)} listed items of {info['name']}: "
        f"{written} converted in {seconds:.1f} s ({written / max(seconds, 1e-9):.1f} records/s), "
        f"{info['records_reused']} kept from an earlier run")
  if "split" in info["converter"]:
    print(f"  split: {json.dumps(info['converter']['split'])}")
  for split, s in info["splits"].items():
    print(f"  {split:9s} {s['num_records']:7d} records in {len(s['shards'])} shards; "
          f"views {json.dumps(info['counts'][split]['views'])}")
  print(f"  errors: {info['errors']['count']} {json.dumps(info['errors']['by_kind'])}; "
        f"warnings: {info['errors']['warnings']} (report fallbacks: {info['report_fallbacks']}); "
        f"filtered by view: {info['filtered_by_view']}; shards reused: {info['shards_reused']}")
  print(f"  shards + .index: {out}/<split>-SSSSS-of-NNNNN.tfrecord; info: "
        f"{out / 'mmrl_dataset_info.json'} (TFDS: dataset_info.json, features.json); errors: "
        f"{out / 'errors.jsonl'}")
  if _SUBSET_FRACTIONS.value and not info["splits"].get("train", {}).get("num_records"):
    print("  subsets: not written: the train split is empty")
  elif _SUBSET_FRACTIONS.value:
    from data_pipeline import subsets  # pylint: disable=g-import-not-at-top
    doc = subsets.ensure_subsets(out, [float(f) for f in _SUBSET_FRACTIONS.value],
                                 [int(s) for s in _SUBSET_SEEDS.value])
    counts = {f"{f:g}%": doc["subsets"][str(doc["seeds"][0])][f"{f:g}"]["count"]
              for f in doc["fractions"]}
    print(f"  subsets of train ({doc['num_examples']} examples), seeds {doc['seeds']}: "
          f"{json.dumps(counts)} -> {subsets.subsets_path(out)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["layout", "input", "output"])
  app.run(main)
