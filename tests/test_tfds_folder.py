"""A converted folder is a TensorFlow Datasets dataset directory, and mmrl still reads old folders."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from data_pipeline import convert
from data_pipeline import example_proto
from data_pipeline import grain_source
from data_pipeline import pipeline
from data_pipeline import record_spec
from data_pipeline import tfds_metadata
from data_pipeline import tfrecord
from data_pipeline.converters import mimic
from data_pipeline.synthetic import mimic_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("tfds_tree")
  mimic_tree.write_mimic_tree(root, num_patients=10, seed=4, image_size=96, lateral_fraction=0.3)
  return root


def _convert(tree: pathlib.Path, out: pathlib.Path, **kw) -> pathlib.Path:
  convert.convert(mimic.list_mimic(tree), out,
                  convert.ConvertOptions(short_side=48, num_shards=2, progress=False, **kw))
  return out


@pytest.fixture(scope="module")
def folder(tree, tmp_path_factory) -> pathlib.Path:
  """A plain conversion (TFRecord shards only)."""
  return _convert(tree, tmp_path_factory.mktemp("tfds") / "out")


@pytest.fixture(scope="module")
def folder_ar(tree, tmp_path_factory) -> pathlib.Path:
  """A conversion with the array_record option (ArrayRecord copies for TFDS random access)."""
  return _convert(tree, tmp_path_factory.mktemp("tfds_ar") / "out", array_record=True)


def _tfds():
  return pytest.importorskip(
      "tensorflow_datasets", reason="TensorFlow Datasets is optional (extra 'tfds'; CI installs "
      "it with MMRL_WITH_TF=1): it checks that converted folders are TFDS dataset directories")


def _ours(folder: pathlib.Path, split: str) -> list[dict[str, tuple[str, list]]]:
  """Our records of one split, decoded by mmrl's own (TensorFlow-free) reader."""
  info = pipeline.dataset_info(folder)
  source = grain_source.TFRecordIndexSource(
      [folder / s["path"] for s in info["splits"][split]["shards"]])
  return [example_proto.decode_example(source[i]) for i in range(len(source))]


def test_the_folder_holds_tfds_metadata_beside_mmrls_own(folder):
  ours = pipeline.dataset_info(folder)
  assert pipeline.info_path(folder).name == record_spec.INFO_FILE == "mmrl_dataset_info.json"
  tfds_info = json.loads((folder / "dataset_info.json").read_text())
  assert "spec_version" not in tfds_info and tfds_info["fileFormat"] == "tfrecord"
  listed = {s["name"]: s for s in tfds_info["splits"]}
  assert listed and set(listed) == {k for k, v in ours["splits"].items() if v["num_records"]}
  for name, entry in listed.items():
    shards = ours["splits"][name]["shards"]
    assert entry["shardLengths"] == [str(s["num_records"]) for s in shards]
    assert int(entry["numBytes"]) == sum((folder / s["path"]).stat().st_size for s in shards)
  features = json.loads((folder / "features.json").read_text())["featuresDict"]["features"]
  assert set(features) == set(record_spec.FEATURES)


def test_a_folder_converted_before_the_rename_is_still_read(folder, tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  info = json.loads((folder / record_spec.INFO_FILE).read_text())
  for split in info["splits"].values():
    for shard in split["shards"]:
      for suffix in ("", ".index"):
        (old / (shard["path"] + suffix)).write_bytes((folder / (shard["path"] + suffix))
                                                     .read_bytes())
  (old / "dataset_info.json").write_text(json.dumps(info))  # the old layout: ours under TFDS's name
  assert pipeline.info_path(old) == old / "dataset_info.json"
  assert pipeline.dataset_info(old)["splits"] == info["splits"]
  assert len(pipeline.split_source(old, "train")) == info["splits"]["train"]["num_records"]


def test_a_folder_with_only_tfds_metadata_asks_to_reconvert(folder, tmp_path):
  (tmp_path / "dataset_info.json").write_text((folder / "dataset_info.json").read_text())
  with pytest.raises(FileNotFoundError, match="not mmrl's metadata.*re-run experiments/convert"):
    pipeline.dataset_info(tmp_path)


def test_shards_not_named_by_tfds_template_are_refused_with_the_name():
  info = {"name": "x", "spec_version": 1,
          "splits": {"train": {"num_records": 1, "shards": [{"path": "a.tfrecord",
                                                             "num_records": 1}]}}}
  with pytest.raises(ValueError, match="'a.tfrecord'.*'train-00000-of-00001.tfrecord'"):
    tfds_metadata.dataset_info_json(info, "/nonexistent")


def test_array_record_copies_hold_the_shards_records_in_order(folder_ar):
  from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=g-import-not-at-top
  info = pipeline.dataset_info(folder_ar)
  assert info["converter"]["array_record"] is True
  assert json.loads((folder_ar / "dataset_info.json").read_text())[
      "alternativeFileFormats"] == ["array_record"]
  for split in info["splits"].values():
    for shard in split["shards"]:
      reader = ArrayRecordReader(str(tfds_metadata.array_record_path(folder_ar / shard["path"])))
      assert reader.read_all() == list(tfrecord.iterate_records(folder_ar / shard["path"]))
      reader.close()
  assert tfds_metadata.write_array_record_copies(folder_ar, info) == 0  # up to date: kept


def _assert_same_records(theirs: list[dict], ours: list[dict]) -> None:
  assert len(theirs) == len(ours)
  for t, o in zip(theirs, ours):
    assert set(t) == set(o) == set(record_spec.FEATURES)
    for key, (kind, values) in o.items():
      got = np.atleast_1d(t[key])
      if kind == "float":
        np.testing.assert_array_equal(got, np.asarray(values, np.float32), err_msg=key)
      else:
        assert list(got) == list(values), key


def test_tfds_reads_the_folder_and_yields_our_records_under_our_feature_names(folder):
  tfds = _tfds()
  builder = tfds.builder_from_directory(str(folder))
  ours_info = pipeline.dataset_info(folder)
  checked = 0
  for split, entry in ours_info["splits"].items():
    if not entry["num_records"]:
      continue
    assert builder.info.splits[split].num_examples == entry["num_records"]
    theirs = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    _assert_same_records(theirs, _ours(folder, split))
    checked += len(theirs)
  assert checked == ours_info["num_records"]
  # TFDS's random access needs ArrayRecord / Parquet shards; TFDS says so on TFRecord ones.
  with pytest.raises(NotImplementedError, match="(?i)random access"):
    builder.as_data_source(split="train")


def test_tfds_random_access_reads_the_array_record_copies(folder_ar):
  tfds = _tfds()
  ours_info = pipeline.dataset_info(folder_ar)
  builder = tfds.builder_from_directory(str(folder_ar))
  sources = builder.as_data_source()
  for split, entry in ours_info["splits"].items():
    if not entry["num_records"]:
      continue
    source = sources[split]
    ours = _ours(folder_ar, split)
    assert len(source) == entry["num_records"]
    _assert_same_records([source[i] for i in reversed(range(len(source)))], ours[::-1])
    fresh = tfds.builder_from_directory(str(folder_ar))  # as_data_source switched `builder`
    streamed = list(tfds.as_numpy(fresh.as_dataset(split=split, shuffle_files=False)))
    _assert_same_records(streamed, ours)  # as_dataset still reads the TFRecord shards
