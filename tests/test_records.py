"""StudyRecord <-> tf.train.Example bytes, against the record contract (record_spec.FEATURES)."""
from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_pipeline import errors
from data_pipeline import example_proto
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline.record_spec import Box, StudyRecord


def _png(h=8, w=6, value=128) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def make_record(i: int = 0, *, with_extras: bool = True) -> StudyRecord:
  rec = StudyRecord(image_png=_png(value=i % 256), height=8, width=6, bit_depth=8,
                    original_height=80, original_width=60, image_id=f"img{i}",
                    study_id=f"5{i:07d}", patient_id=f"1{i:07d}")
  if with_extras:
    rec.view = "PA"
    rec.source = f"files/p10/p1000000{i}/s5000000{i}/img{i}.dcm"
    rec.split = "validate"
    rec.findings = "Heart size normal. No effusion \u00e9."
    rec.impression = "No acute process."
    rec.report_text = rec.findings + " " + rec.impression
    rec.sentences = ["Heart size normal.", "No effusion \u00e9.", "No acute process."]
    rec.sentence_sections = ["findings", "findings", "impression"]
    rec.labels = np.array([1, 0, -1, np.nan], np.float32)
    rec.boxes = [Box("Nodule", 0.1, 0.2, 0.3, 0.4), Box("Effusion", 0.0, 0.5, 1.0, 1.0)]
    rec.mask_labels = ["Nodule"]
    rec.masks_png = [_png(value=255)]
  return rec


def test_record_round_trips_every_field():
  rec = make_record(3)
  back = records.parse_record(records.serialize_record(rec))
  assert records.records_equal(back, rec)
  assert back.boxes[0].label == "Nodule" and back.sentences[1].endswith("\u00e9.")
  assert np.isnan(back.labels[3])


def test_record_with_empty_lists_round_trips():
  rec = make_record(1, with_extras=False)
  back = records.parse_record(records.serialize_record(rec))
  assert records.records_equal(back, rec)
  assert back.labels is None and back.boxes == [] and back.sentences == []


def test_serialised_record_has_exactly_the_contract_keys_and_kinds():
  feats = example_proto.decode_example(records.serialize_record(make_record()))
  assert set(feats) == set(record_spec.FEATURES)
  for key, (dtype, count, _) in record_spec.FEATURES.items():
    kind, values = feats[key]
    assert kind == dtype, key
    if count == "scalar":
      assert len(values) == 1, key


def test_missing_key_raises_corrupt_record_naming_the_key():
  feats = example_proto.decode_example(records.serialize_record(make_record()))
  del feats["report/text"]
  with pytest.raises(errors.CorruptRecordError, match="report/text") as e:
    records.parse_record(example_proto.encode_example(feats), item="shard#4")
  assert e.value.item == "shard#4"


def test_wrong_kind_raises_corrupt_record():
  feats = example_proto.decode_example(records.serialize_record(make_record()))
  feats["image/height"] = ("float", [8.0])
  with pytest.raises(errors.CorruptRecordError, match="image/height.*expected int64"):
    records.parse_record(example_proto.encode_example(feats))


def test_scalar_with_two_values_raises_corrupt_record():
  feats = example_proto.decode_example(records.serialize_record(make_record()))
  feats["image/id"] = ("bytes", [b"a", b"b"])
  with pytest.raises(errors.CorruptRecordError, match="exactly 1"):
    records.parse_record(example_proto.encode_example(feats))


def test_box_lists_of_different_lengths_raise_corrupt_record():
  feats = example_proto.decode_example(records.serialize_record(make_record()))
  feats["boxes/xmin"] = ("float", [0.1])
  with pytest.raises(errors.CorruptRecordError, match="box lists"):
    records.parse_record(example_proto.encode_example(feats))


def test_garbage_bytes_raise_corrupt_record_not_value_error():
  with pytest.raises(errors.CorruptRecordError, match="not a tf.train.Example"):
    records.parse_record(b"\x0a\x09abc", item="x#0")


def test_feature_spec_tf_covers_every_key():
  pytest.importorskip("tensorflow", reason="TensorFlow is optional (never a dependency of mmrl); "
                      "install it to check the TF parse spec")
  assert set(records.feature_spec_tf()) == set(record_spec.FEATURES)


def test_tensorflow_reads_our_shards_with_the_contract_spec(tmp_path):
  tf = pytest.importorskip(
      "tensorflow", reason="TensorFlow is optional (never a dependency of mmrl); install it to "
      "check that tf.data.TFRecordDataset + tf.io.parse_single_example read our shards")
  recs = [make_record(0), make_record(1, with_extras=False)]
  path = tmp_path / "train-00000-of-00001.tfrecord"
  with tfrecord.TFRecordWriter(path) as w:
    for r in recs:
      w.write(records.serialize_record(r))
  spec = records.feature_spec_tf()
  parsed = [tf.io.parse_single_example(x, spec) for x in tf.data.TFRecordDataset(str(path))]
  assert len(parsed) == 2
  assert parsed[0]["image/id"].numpy() == b"img0"
  assert parsed[0]["image/encoded"].numpy() == recs[0].image_png
  np.testing.assert_array_equal(tf.sparse.to_dense(parsed[0]["boxes/xmin"]).numpy(),
                                np.float32([0.1, 0.0]))
  labels = tf.sparse.to_dense(parsed[0]["labels/values"]).numpy()
  np.testing.assert_array_equal(labels[:3], [1, 0, -1])
  assert tf.sparse.to_dense(parsed[1]["report/sentences"]).numpy().size == 0
  # And TF's writer output reads with ours.
  tf_path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(tf_path) as w:
    w.write(records.serialize_record(recs[0]))
  tfrecord.build_index(tf_path)
  assert records.records_equal(
      records.parse_record(next(tfrecord.iterate_records(tf_path))), recs[0])


def test_data_format_doc_lists_every_record_key():
  doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "data_format.md").read_text()
  missing = [k for k in record_spec.FEATURES if f"| `{k}` |" not in doc]
  assert not missing, f"docs/data_format.md lacks {missing}; add them to its feature table"
