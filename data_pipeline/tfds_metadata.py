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
`tfds.data_source` (random access) needs ArrayRecord or Parquet shards, so it refuses these
TFRecord folders; mmrl's random access is the per-shard .index (data_pipeline.grain_source).
The JSON is plain data, checked against real TensorFlow Datasets in tests/test_tfds_folder.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import re

from data_pipeline import record_spec

TFDS_INFO_FILE = "dataset_info.json"
TFDS_FEATURES_FILE = "features.json"
FILEPATH_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
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


def dataset_info_json(info: dict, out_dir: str | os.PathLike) -> dict:
  """TFDS's dataset_info.json for mmrl's `info` (the converter's dict) of the folder `out_dir`.

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
      lengths.append(str(int(shard["num_records"])))
      num_bytes += path.stat().st_size
    splits.append({"filepathTemplate": FILEPATH_TEMPLATE, "name": split,
                   "numBytes": str(num_bytes), "shardLengths": lengths})
  return {
      "name": tfds_name(str(info["name"])),
      "description": (f"mmrl converted data set {info['name']!r} (record spec version "
                      f"{info['spec_version']}): one tf.train.Example per image with its study's "
                      f"report; keys and meanings in mmrl's docs/data_format.md; mmrl's own "
                      f"metadata: {record_spec.INFO_FILE}."),
      "fileFormat": "tfrecord",
      "splits": splits,
      "version": f"{int(info['spec_version'])}.0.0",
  }


def write_tfds_metadata(out_dir: str | os.PathLike, info: dict) -> None:
  """Writes dataset_info.json (TFDS schema) and features.json into `out_dir` (atomically)."""
  out = pathlib.Path(out_dir)
  for name, content in ((TFDS_FEATURES_FILE, features_json()),
                        (TFDS_INFO_FILE, dataset_info_json(info, out))):
    tmp = out / (name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / name)
