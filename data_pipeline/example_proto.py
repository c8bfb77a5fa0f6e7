"""The `tf.train.Example` protobuf wire format, written and read by hand (no TensorFlow, no protoc).

Owns the byte layout of one record's payload:
```
Example   { Features features = 1; }
Features  { map<string, Feature> feature = 1; }   # entry: { string key = 1; Feature value = 2; }
Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                         Int64List int64_list = 3; } }
BytesList { repeated bytes value = 1; }
FloatList { repeated float value = 1 [packed = true]; }
Int64List { repeated int64 value = 1 [packed = true]; }
```
`encode_example` writes packed floats/int64s and map entries sorted by key (deterministic bytes);
`decode_example` accepts packed and unpacked repeated scalars, entries in any order and unknown
fields (skipped), as any protobuf parser must. A Feature with no kind set decodes as kind ''.
"""
from __future__ import annotations

import struct
from typing import Iterable, Sequence

import numpy as np

KINDS = ("bytes", "float", "int64")
_KIND_FIELD = {"bytes": 1, "float": 2, "int64": 3}
_FIELD_KIND = {v: k for k, v in _KIND_FIELD.items()}

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


# ---------------------------------------------------------------------------------------------
# Encoding.

def _varint(value: int) -> bytes:
  """Base-128 varint of a non-negative int < 2**64."""
  if value < 0x80:
    return bytes((value,))
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
  return _varint((field << 3) | _LEN) + _varint(len(payload)) + payload


def _encode_feature(key: str, kind: str, values: Sequence) -> bytes:
  if kind == "bytes":
    parts = []
    for v in values:
      if isinstance(v, str):
        v = v.encode("utf-8")
      elif not isinstance(v, (bytes, bytearray, memoryview)):
        raise TypeError(f"feature {key!r}: bytes_list value must be bytes or str, "
                        f"got {type(v).__name__}; encode it first")
      parts.append(_len_field(1, bytes(v)))
    inner = b"".join(parts)
  elif kind == "float":
    arr = np.asarray(values, dtype="<f4").reshape(-1)
    inner = _len_field(1, arr.tobytes()) if arr.size else b""
  elif kind == "int64":
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    inner = (_len_field(1, b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in arr.tolist()))
             if arr.size else b"")
  else:
    raise ValueError(f"feature {key!r}: unknown kind {kind!r}; use one of {KINDS}")
  return _len_field(_KIND_FIELD[kind], inner)


def encode_example(features: dict[str, tuple[str, Iterable]]) -> bytes:
  """Serialises {key: (kind, values)} as a tf.train.Example; kind in {'bytes','float','int64'}.

  Empty value lists are written as an empty list of the given kind (TensorFlow parses them as a
  VarLenFeature with no values). Keys are written in sorted order so equal inputs give equal bytes.
  """
  entries = []
  for key in sorted(features):
    kind, values = features[key]
    if not isinstance(key, str):
      raise TypeError(f"feature key must be str, got {key!r}")
    feature = _encode_feature(key, kind, list(values) if not isinstance(values, np.ndarray)
                              else values)
    entry = _len_field(1, key.encode("utf-8")) + _len_field(2, feature)
    entries.append(_len_field(1, entry))
  return _len_field(1, b"".join(entries))


# ---------------------------------------------------------------------------------------------
# Decoding.

def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
  result = 0
  shift = 0
  while True:
    if pos >= end:
      raise ValueError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes, start: int, end: int):
  """Yields (field_number, wire_type, value) where value is an int or a (start, end) slice."""
  pos = start
  while pos < end:
    tag, pos = _read_varint(buf, pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0:
      raise ValueError("field number 0")
    if wire == _VARINT:
      value, pos = _read_varint(buf, pos, end)
    elif wire == _LEN:
      n, pos = _read_varint(buf, pos, end)
      if pos + n > end:
        raise ValueError(f"length-delimited field {field} of {n} bytes runs past its message")
      value = (pos, pos + n)
      pos += n
    elif wire == _I32:
      if pos + 4 > end:
        raise ValueError("truncated fixed32")
      value = (pos, pos + 4)
      pos += 4
    elif wire == _I64:
      if pos + 8 > end:
        raise ValueError("truncated fixed64")
      value = (pos, pos + 8)
      pos += 8
    else:
      raise ValueError(f"unsupported wire type {wire} (field {field})")
    yield field, wire, value


def _to_int64(v: int) -> int:
  v &= 0xFFFFFFFFFFFFFFFF
  return v - (1 << 64) if v >= (1 << 63) else v


def _decode_list(buf: bytes, kind: str, start: int, end: int) -> list:
  values: list = []
  for field, wire, value in _fields(buf, start, end):
    if field != 1:
      continue  # Unknown field: skip.
    if kind == "bytes":
      if wire != _LEN:
        raise ValueError(f"bytes_list value has wire type {wire}, expected 2")
      values.append(bytes(buf[value[0]:value[1]]))
    elif kind == "float":
      if wire == _LEN:  # Packed.
        s, e = value
        if (e - s) % 4:
          raise ValueError(f"packed float_list of {e - s} bytes is not a multiple of 4")
        values.extend(np.frombuffer(buf, dtype="<f4", count=(e - s) // 4, offset=s).tolist())
      elif wire == _I32:
        values.append(struct.unpack_from("<f", buf, value[0])[0])
      else:
        raise ValueError(f"float_list value has wire type {wire}, expected 2 or 5")
    else:  # int64
      if wire == _LEN:  # Packed.
        pos, e = value
        while pos < e:
          v, pos = _read_varint(buf, pos, e)
          values.append(_to_int64(v))
      elif wire == _VARINT:
        values.append(_to_int64(value))
      else:
        raise ValueError(f"int64_list value has wire type {wire}, expected 0 or 2")
  return values


def _decode_feature(buf: bytes, start: int, end: int) -> tuple[str, list]:
  kind, values = "", []
  for field, wire, value in _fields(buf, start, end):
    if field in _FIELD_KIND:
      if wire != _LEN:
        raise ValueError(f"Feature field {field} has wire type {wire}, expected 2")
      kind = _FIELD_KIND[field]  # oneof: the last one wins, as in protobuf.
      values = _decode_list(buf, kind, *value)
  return kind, values


def decode_example(data: bytes) -> dict[str, tuple[str, list]]:
  """Parses tf.train.Example bytes into {key: (kind, values)}; raises ValueError when malformed.

  kind is 'bytes' (values: list[bytes]), 'float' (list[float]), 'int64' (list[int]), or '' for a
  Feature without a kind (values: []).
  """
  buf = bytes(data) if not isinstance(data, bytes) else data
  out: dict[str, tuple[str, list]] = {}
  try:
    for field, wire, value in _fields(buf, 0, len(buf)):
      if field != 1:
        continue
      if wire != _LEN:
        raise ValueError(f"Example.features has wire type {wire}, expected 2")
      for f2, w2, entry in _fields(buf, *value):
        if f2 != 1:
          continue
        if w2 != _LEN:
          raise ValueError(f"Features.feature has wire type {w2}, expected 2")
        key, feature = "", ("", [])
        for f3, w3, v3 in _fields(buf, *entry):
          if w3 != _LEN:
            raise ValueError(f"map entry field {f3} has wire type {w3}, expected 2")
          if f3 == 1:
            key = buf[v3[0]:v3[1]].decode("utf-8")
          elif f3 == 2:
            feature = _decode_feature(buf, *v3)
        out[key] = feature  # Map semantics: a repeated key keeps the last value.
  except UnicodeDecodeError as e:
    raise ValueError(f"feature key is not UTF-8: {e}") from None
  return out
