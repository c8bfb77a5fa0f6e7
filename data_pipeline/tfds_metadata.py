"""TFDS's own metadata for a converted folder, written without TensorFlow.

This module owns the two files that make a converted folder a TensorFlow Datasets dataset
directory, so that `tfds.builder_from_directory(folder).as_dataset(split=...)` reads our shards
and yields our records under our feature names (record_spec.FEATURES, e.g. "image/encoded"):

  dataset_info.json   TFDS's DatasetInfo proto as JSON (name, version, fileFormat "tfrecord",
                      one split entry per non-empty split: shardLengths, numBytes and
                      filepathTemplate "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}", which is our shard
                      naming `<split>-SSSSS-of-NNNNN.tfrecord`)
  features.json       a flat FeaturesDict: every record_spec key as a tfds Tensor feature
                      (scalar -> shape (), list -> shape (None,); bytes -> string, float ->
                      float32, int64 -> int64), which is how our tf.train.Examples are laid out

mmrl's own metadata lives in record_spec.INFO_FILE (mmrl_dataset_info.json) beside them.
TFDS's random access (`tfds.data_source`, `builder.as_data_source`) needs ArrayRecord or Parquet
shards and refuses TFRecord ones; with the converter's `array_record` option every shard also
gets an ArrayRecord copy (`<split>-SSSSS-of-NNNNN.array_record`, the same record bytes in the same
order, written by `write_array_record_copies`), listed as TFDS's alternative file format, and
random access works there too. mmrl itself never needs the copies: its random access is the
per-shard .index (data_pipeline.grain_source).
The JSON is plain data, checked against real TensorFlow Datasets in tests/test_tfds_folder.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import re

from data_pipeline import record_spec
from data_pipeline import tfrecord

TFDS_INFO_FILE = "dataset_info.json"
TFDS_FEATURES_FILE = "features.json"
FILEPATH_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
ARRAY_RECORD_SUFFIX = ".array_record"
_TFDS_DTYPES = {"bytes": "string", "int64": "int64", "float": "float32"}
_TENSOR_CLASS = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_DICT_CLASS = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


def features_json() -> dict:
  """features.json: record_spec.FEATURES as a flat TFDS FeaturesDict of Tensor features."""
  features = {}
  for key, (dtype, kind, _) in record_spec.FEATURES.items():
    shape = {} if kind == "scalar" else {"dimensions": ["-1"]}
    features[key] = {"pythonClassName": _TENSOR_CLASS,
                     "tensor": {"dtype": _TFDS_DTYPES[dtype], "encoding": "none",
                                "shape": shape}}
  return {"featuresDict": {"features": features}, "pythonClassName": _DICT_CLASS}


def tfds_name(name: str) -> str:
  """A TFDS data set name (snake_case identifier) for our data set name."""
  snake = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
  return snake if snake and not snake[0].isdigit() else f"ds_{snake}"


def array_record_path(shard_path: str | os.PathLike) -> pathlib.Path:
  """The ArrayRecord copy of a `<split>-SSSSS-of-NNNNN.tfrecord` shard."""
  p = pathlib.Path(shard_path)
  return p.with_name(p.name.removesuffix(".tfrecord") + ARRAY_RECORD_SUFFIX)


def write_array_record_copies(out_dir: str | os.PathLike, info: dict) -> int:
  """Writes the ArrayRecord copy of every listed shard that lacks an up-to-date one.

  A copy is up to date when it is newer than its shard (shards are only ever replaced whole).
  Returns the number of copies written. Needs the `array_record` package (a dependency of
  grain on Linux), not TensorFlow.
  """
  try:
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"the array_record option needs the array_record package ({e}); "
                      "pip install array-record, or convert without --array_record") from None
  out = pathlib.Path(out_dir)
  written = 0
  for entry in info["splits"].values():
    for shard in entry["shards"]:
      src = out / shard["path"]
      dst = array_record_path(src)
      if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        continue
      tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
      writer = ArrayRecordWriter(str(tmp), "group_size:1")  # group 1: cheap single reads
      try:
        for data in tfrecord.iterate_records(src):
          writer.write(data)
      finally:
        writer.close()
      os.replace(tmp, dst)
      written += 1
  return written


def dataset_info_json(info: dict, out_dir: str | os.PathLike, *,
                      array_record: bool = False) -> dict:
  """TFDS's dataset_info.json for mmrl's `info` (the converter's dict) of the folder `out_dir`.

  array_record: list ArrayRecord as an alternative file format (every shard has its copy).

  Raises:
    ValueError: a shard whose file name is not `<split>-SSSSS-of-NNNNN.tfrecord` in order (TFDS
      finds shards by that template only), or a shard file that is missing.
  """
  out = pathlib.Path(out_dir)
  splits = []
  for split, entry in info["splits"].items():
    shards = entry["shards"]
    if not entry["num_records"]:
      continue  # TFDS has no notion of an empty split; mmrl keeps it in its own file
    lengths, num_bytes = [], 0
    for i, shard in enumerate(shards):
      expected = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
      if shard["path"] != expected:
        raise ValueError(f"shard {shard['path']!r} of split {split!r}: TFDS finds shards by the "
                         f"name {expected!r} (template {FILEPATH_TEMPLATE}); re-run the "
                         "converter into an empty folder")
      path = out / shard["path"]
      if not path.is_file():
        raise ValueError(f"{path} is listed for split {split!r} but does not exist; re-run "
                         "the converter")
      if array_record and not array_record_path(path).is_file():
        raise ValueError(f"{array_record_path(path)} does not exist: write the copies first "
                         "(write_array_record_copies) or pass array_record=False")
      lengths.append(str(int(shard["num_records"])))
      num_bytes += path.stat().st_size
    splits.append({"filepathTemplate": FILEPATH_TEMPLATE, "name": split,
                   "numBytes": str(num_bytes), "shardLengths": lengths})
  result = {
      "name": tfds_name(str(info["name"])),
      "description": (f"mmrl converted data set {info['name']!r} (record spec version "
                      f"{info['spec_version']}): one tf.train.Example per image with its study's "
                      f"report; keys and meanings in mmrl's docs/data_format.md; mmrl's own "
                      f"metadata: {record_spec.INFO_FILE}."),
      "fileFormat": "tfrecord",
      "splits": splits,
      "version": f"{int(info['spec_version'])}.0.0",
  }
  if array_record:
    result["alternativeFileFormats"] = ["array_record"]
  return result


def write_tfds_metadata(out_dir: str | os.PathLike, info: dict, *,
                        array_record: bool = False) -> None:
  """Writes dataset_info.json (TFDS schema) and features.json into `out_dir` (atomically)."""
  out = pathlib.Path(out_dir)
  for name, content in ((TFDS_FEATURES_FILE, features_json()),
                        (TFDS_INFO_FILE, dataset_info_json(info, out,
                                                           array_record=array_record))):
    tmp = out / (name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / name)
