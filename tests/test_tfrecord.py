"""TFRecord framing, CRC32C, the index, and the hand-written tf.train.Example wire format."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from data_pipeline import errors
from data_pipeline import example_proto
from data_pipeline import tfrecord


def _naive_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc ^= b
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
  return crc ^ 0xFFFFFFFF


def _write_shard(path, payloads):
  with tfrecord.TFRecordWriter(path) as w:
    for p in payloads:
      w.write(p)
  return path


# ----------------------------------------------------------------------------- CRC32C

def test_crc32c_matches_the_standard_check_value():
  assert tfrecord.crc32c(b"123456789") == 0xE3069283
  assert tfrecord.crc32c_py(b"123456789") == 0xE3069283


def test_crc32c_matches_known_vectors():
  # RFC 3720 (iSCSI) B.4 test vectors.
  assert tfrecord.crc32c_py(b"") == 0
  assert tfrecord.crc32c_py(bytes(32)) == 0x8A9136AA
  assert tfrecord.crc32c_py(b"\xff" * 32) == 0x62A8AB43
  assert tfrecord.crc32c_py(bytes(range(32))) == 0x46DD794E


def test_vectorised_crc32c_equals_bitwise_reference_at_every_boundary():
  rng = np.random.default_rng(0)
  for n in (1, 63, 64, 511, 512, 513, 4096 + 17, 70_001):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert tfrecord.crc32c_py(data) == _naive_crc32c(data), n


def test_vectorised_crc32c_is_consistent_across_its_block_size():
  rng = np.random.default_rng(1)
  data = rng.integers(0, 256, (1 << 20) + 1000, dtype=np.uint8).tobytes()
  assert tfrecord.crc32c_py(data) == tfrecord._update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_compiled_crc32c_fast_path_agrees_with_the_numpy_implementation():
  if tfrecord.FAST_CRC32C is None:
    pytest.skip("neither `crc32c` nor `google-crc32c` is installed; the numpy path is used")
  data = np.random.default_rng(2).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
  assert tfrecord.FAST_CRC32C(data) == tfrecord.crc32c_py(data)


def test_framing_is_length_masked_crc_data_masked_crc():
  data = b"payload"
  framed = tfrecord.frame_record(data)

  def masked(b):
    crc = _naive_crc32c(b)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  length = struct.pack("<Q", len(data))
  assert framed == (length + struct.pack("<I", masked(length)) + data
                    + struct.pack("<I", masked(data)))
  assert tfrecord.frame_record(b"")[-4:] == struct.pack("<I", 0xA282EAD8)  # crc32c(b'') == 0


# ----------------------------------------------------------------------------- framing + index

def test_records_round_trip_through_a_shard_in_order(tmp_path):
  payloads = [b"", b"a", bytes(range(256)) * 10, b"last"]
  path = _write_shard(tmp_path / "s.tfrecord", payloads)
  assert list(tfrecord.iterate_records(path)) == payloads


def test_index_gives_offset_and_length_of_every_record(tmp_path):
  payloads = [b"x" * n for n in (3, 0, 1000)]
  path = _write_shard(tmp_path / "s.tfrecord", payloads)
  index = tfrecord.read_index(path)
  assert index.dtype == np.int64 and index.shape == (3, 2)
  np.testing.assert_array_equal(index, [[0, 3], [19, 0], [35, 1000]])
  raw = np.fromfile(tfrecord.index_path(path), "<i8").reshape(-1, 2)
  np.testing.assert_array_equal(raw, index)
  with open(path, "rb") as f:
    for (off, ln), p in zip(index, payloads):
      assert tfrecord.read_record_at(f, off, ln) == p


def test_build_index_reproduces_the_writer_index(tmp_path):
  path = _write_shard(tmp_path / "s.tfrecord", [b"a" * 10, b"b" * 20, b"c"])
  written = tfrecord.read_index(path)
  tfrecord.index_path(path).unlink()
  np.testing.assert_array_equal(tfrecord.build_index(path), written)
  np.testing.assert_array_equal(tfrecord.read_index(path), written)


def test_missing_index_error_says_how_to_build_one(tmp_path):
  path = tmp_path / "no.tfrecord"
  path.write_bytes(tfrecord.frame_record(b"x"))
  with pytest.raises(FileNotFoundError, match="build_index"):
    tfrecord.read_index(path)


def test_writer_leaves_no_shard_when_the_block_raises(tmp_path):
  path = tmp_path / "s.tfrecord"
  with pytest.raises(RuntimeError):
    with tfrecord.TFRecordWriter(path) as w:
      w.write(b"abc")
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


def test_flipped_data_byte_raises_corrupt_record_naming_shard_and_record(tmp_path):
  path = _write_shard(tmp_path / "s.tfrecord", [b"first", b"second record", b"third"])
  index = tfrecord.read_index(path)
  raw = bytearray(path.read_bytes())
  raw[int(index[1, 0]) + 12 + 3] ^= 0x01
  path.write_bytes(bytes(raw))
  with pytest.raises(errors.CorruptRecordError, match="data CRC mismatch") as e:
    list(tfrecord.iterate_records(path))
  assert e.value.item == f"{path}#1"
  with open(path, "rb") as f:
    with pytest.raises(errors.CorruptRecordError, match="CRC"):
      tfrecord.read_record_at(f, *index[1], item=f"{path}#1")
    assert tfrecord.read_record_at(f, *index[1], verify_crc=False)[:3] == b"sec"


def test_truncated_shard_raises_corrupt_record_on_the_cut_record(tmp_path):
  path = _write_shard(tmp_path / "s.tfrecord", [b"a" * 100, b"b" * 100])
  index = tfrecord.read_index(path)
  path.write_bytes(path.read_bytes()[:-10])
  it = tfrecord.iterate_records(path)
  assert next(it) == b"a" * 100
  with pytest.raises(errors.CorruptRecordError, match="short read") as e:
    next(it)
  assert e.value.item.endswith("#1")
  with open(path, "rb") as f, pytest.raises(errors.CorruptRecordError, match="truncated"):
    tfrecord.read_record_at(f, *index[1], item="x")


def test_read_at_with_a_stale_index_length_raises_corrupt_record(tmp_path):
  path = _write_shard(tmp_path / "s.tfrecord", [b"abcdef"])
  with open(path, "rb") as f, pytest.raises(errors.CorruptRecordError, match="length field"):
    tfrecord.read_record_at(f, 0, 5)


# ----------------------------------------------------------------------------- Example wire format

_FEATURES = {
    "b": ("bytes", [b"", b"hello", "unicode \u00e9".encode()]),
    "f": ("float", [0.5, -1.25, float("nan"), 3e38]),
    "i": ("int64", [0, 1, -1, 2**63 - 1, -(2**63), 300]),
    "empty_b": ("bytes", []),
    "empty_f": ("float", []),
    "empty_i": ("int64", []),
}


def _assert_features_equal(got, want):
  assert got.keys() == want.keys()
  for k, (kind, values) in want.items():
    assert got[k][0] == kind, k
    if kind == "float":
      np.testing.assert_array_equal(np.float32(got[k][1]), np.float32(values))
    else:
      assert got[k][1] == values, k


def test_example_round_trips_every_kind_including_empty_lists():
  _assert_features_equal(example_proto.decode_example(example_proto.encode_example(_FEATURES)),
                         _FEATURES)


def test_example_encoding_is_deterministic_in_key_order():
  a = example_proto.encode_example(dict(_FEATURES))
  b = example_proto.encode_example(dict(reversed(list(_FEATURES.items()))))
  assert a == b


def test_decoder_accepts_unpacked_floats_and_int64s():
  # Feature{float_list{value: 1.5 value: 2.0}} unpacked (wire type 5), int64 unpacked (type 0).
  floats = b"\x0d" + struct.pack("<f", 1.5) + b"\x0d" + struct.pack("<f", 2.0)
  ints = b"\x08\x07\x08" + example_proto._varint((-2) & 0xFFFFFFFFFFFFFFFF)

  def entry(key, field, inner):
    feature = example_proto._len_field(field, inner)
    return example_proto._len_field(1, example_proto._len_field(1, key.encode())
                                    + example_proto._len_field(2, feature))
  data = example_proto._len_field(1, entry("f", 2, floats) + entry("i", 3, ints))
  assert example_proto.decode_example(data) == {"f": ("float", [1.5, 2.0]),
                                                "i": ("int64", [7, -2])}


@pytest.mark.parametrize("bad", [b"\x0a\x05abc", b"\x0a", b"\x0f\x00", b"\x0a\x02\x0a\x7f",
                                 b"\xff" * 11])
def test_malformed_example_bytes_raise_value_error(bad):
  with pytest.raises(ValueError):
    example_proto.decode_example(bad)


def _example_message_class():
  """tf.train.Example built at runtime from its .proto definition with protobuf's descriptors."""
  descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
  from google.protobuf import descriptor_pool
  from google.protobuf import message_factory
  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="mmrl_test_example.proto",
                                           package="mmrltest.tensorflow", syntax="proto3")

  def msg(name, fields, oneof=None):
    m = fdp.message_type.add(name=name)
    if oneof:
      m.oneof_decl.add(name=oneof)
    for number, fname, ftype, label, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = type_name
      if oneof:
        f.oneof_index = 0
    return m
  rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
  p = ".mmrltest.tensorflow."
  msg("BytesList", [(1, "value", F.TYPE_BYTES, rep, None)])
  msg("FloatList", [(1, "value", F.TYPE_FLOAT, rep, None)])
  msg("Int64List", [(1, "value", F.TYPE_INT64, rep, None)])
  msg("Feature", [(1, "bytes_list", F.TYPE_MESSAGE, opt, p + "BytesList"),
                  (2, "float_list", F.TYPE_MESSAGE, opt, p + "FloatList"),
                  (3, "int64_list", F.TYPE_MESSAGE, opt, p + "Int64List")], oneof="kind")
  features = msg("Features", [(1, "feature", F.TYPE_MESSAGE, rep, p + "Features.FeatureEntry")])
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=p + "Feature")
  msg("Example", [(1, "features", F.TYPE_MESSAGE, opt, p + "Features")])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("mmrltest.tensorflow.Example"))


def test_protobuf_parses_our_bytes_as_a_tf_train_example():
  example_cls = _example_message_class()
  msg = example_cls.FromString(example_proto.encode_example(_FEATURES))
  feats = msg.features.feature
  assert set(feats.keys()) == set(_FEATURES)
  assert list(feats["b"].bytes_list.value) == _FEATURES["b"][1]
  np.testing.assert_array_equal(np.float32(feats["f"].float_list.value),
                                np.float32(_FEATURES["f"][1]))
  assert list(feats["i"].int64_list.value) == _FEATURES["i"][1]
  assert feats["empty_f"].WhichOneof("kind") == "float_list"
  assert feats["empty_i"].WhichOneof("kind") == "int64_list"
  assert feats["empty_b"].WhichOneof("kind") == "bytes_list"


def test_our_decoder_reads_bytes_serialised_by_protobuf():
  example_cls = _example_message_class()
  msg = example_cls()
  msg.features.feature["f"].float_list.value.extend([1.0, -2.5])
  msg.features.feature["i"].int64_list.value.extend([-5, 7])
  msg.features.feature["b"].bytes_list.value.extend([b"x", b""])
  msg.features.feature["none"]  # A Feature with no kind set.
  got = example_proto.decode_example(msg.SerializeToString())
  assert got == {"f": ("float", [1.0, -2.5]), "i": ("int64", [-5, 7]),
                 "b": ("bytes", [b"x", b""]), "none": ("", [])}
