"""TFRecord files without TensorFlow: CRC32C, framing, the record index, writing and reading.

Owns the on-disk layout of a shard and of its index (docs/data_format.md):
```
record := uint64 length (LE) | uint32 masked_crc32c(length bytes) | data
          | uint32 masked_crc32c(data)
masked_crc32c(x) := ((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32
<shard>.index := little-endian int64 pairs (offset, length): offset of the record's first header
                 byte in the shard, length of its data; np.fromfile(p, '<i8').reshape(-1, 2)
```
`TFRecordWriter` writes the shard and its index under temporary names and renames both into place
on close, so a shard path that exists is complete. CRC32C is a table-driven implementation that is
vectorised with numpy for long inputs; the `crc32c` / `google-crc32c` packages are used instead when
importable (same results, tested for parity).
"""
from __future__ import annotations

import functools
import os
import pathlib
import struct
from typing import BinaryIO, Iterator, Optional

import numpy as np

from data_pipeline import errors

# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected polynomial 0x82F63B78.

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _make_table() -> np.ndarray:
  table = np.zeros(256, dtype=np.uint32)
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    table[i] = c
  return table


_TABLE = _make_table()
_TABLE_LIST = _TABLE.tolist()
_CHUNK = 64            # Bytes per lane in the vectorised path.
_BLOCK = 1 << 20       # Bytes processed per vectorised pass (bounds temporary memory).
_SMALL = 512           # Below this many bytes the plain Python loop is faster.


def _update_py(reg: int, data) -> int:
  """Raw (un-inverted) CRC register update over bytes, one table lookup per byte."""
  t = _TABLE_LIST
  for b in data:
    reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
  return reg


@functools.lru_cache(maxsize=None)
def _shift_tables(log2_len: int) -> np.ndarray:
  """[4, 256] uint32 tables of the linear map reg -> register after 2**log2_len zero bytes."""
  if log2_len == 0:
    basis = [1 << i for i in range(32)]
    cols = np.array([_update_py(e, b"\0") for e in basis], dtype=np.uint32)
  else:
    prev = _shift_tables(log2_len - 1)
    cols = np.array([_apply(prev, _apply(prev, 1 << i)) for i in range(32)], dtype=np.uint32)
  bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # [256, 8]
  tables = np.zeros((4, 256), dtype=np.uint32)
  for byte in range(4):
    sel = np.where(bits.astype(bool), cols[None, 8 * byte:8 * byte + 8], np.uint32(0))
    tables[byte] = np.bitwise_xor.reduce(sel, axis=1)
  return tables


def _apply(tables: np.ndarray, x):
  """Applies a shift operator (its byte tables) to a scalar int or a uint32 array."""
  if isinstance(x, np.ndarray):
    return (tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF] ^ tables[2][(x >> 16) & 0xFF]
            ^ tables[3][x >> 24])
  return int(tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF] ^ tables[2][(x >> 16) & 0xFF]
             ^ tables[3][x >> 24])


def _shift(reg: int, n: int) -> int:
  """Register after feeding n zero bytes (linear in reg), by powers of two."""
  k = 0
  while n:
    if n & 1:
      reg = _apply(_shift_tables(k), reg)
    n >>= 1
    k += 1
  return reg


def _crc0_block(arr: np.ndarray) -> int:
  """Raw CRC register with zero init over a uint8 block, vectorised across 64-byte lanes."""
  lanes = arr.size // _CHUNK
  if lanes < 2:
    return _update_py(0, arr.tobytes())
  size = 1 << (lanes - 1).bit_length()  # Pad lanes at the front: zero lanes add nothing.
  m = arr[:lanes * _CHUNK].reshape(lanes, _CHUNK)
  regs = np.zeros(lanes, dtype=np.uint32)
  for j in range(_CHUNK):
    regs = _TABLE[(regs ^ m[:, j]) & 0xFF] ^ (regs >> 8)
  regs = np.concatenate([np.zeros(size - lanes, dtype=np.uint32), regs])
  level = _CHUNK.bit_length() - 1  # log2 of the byte length of each register's span.
  while regs.size > 1:
    regs = _apply(_shift_tables(level), regs[0::2]) ^ regs[1::2]
    level += 1
  return _update_py(int(regs[0]), arr[lanes * _CHUNK:].tobytes())


def crc32c_py(data) -> int:
  """CRC32C of bytes-like `data` in numpy/Python (no compiled extension)."""
  mv = memoryview(data).cast("B")
  n = mv.nbytes
  if n < _SMALL:
    return _update_py(0xFFFFFFFF, mv) ^ 0xFFFFFFFF
  arr = np.frombuffer(mv, dtype=np.uint8)
  reg = 0xFFFFFFFF
  for start in range(0, n, _BLOCK):
    block = arr[start:start + _BLOCK]
    reg = _shift(reg, block.size) ^ _crc0_block(block)
  return reg ^ 0xFFFFFFFF


def _fast_crc32c():
  try:
    import google_crc32c  # pytype: disable=import-error
    if getattr(google_crc32c, "implementation", "c") == "c":
      return lambda d: google_crc32c.value(bytes(d))
  except ImportError:
    pass
  try:
    import crc32c as _crc32c_mod  # pytype: disable=import-error
    return lambda d: _crc32c_mod.crc32c(d)
  except ImportError:
    return None


FAST_CRC32C = _fast_crc32c()


def crc32c(data) -> int:
  """CRC32C (Castagnoli) of `data`, as used by TFRecord; crc32c(b'123456789') == 0xE3069283."""
  if FAST_CRC32C is not None:
    return FAST_CRC32C(data)
  return crc32c_py(data)


def masked_crc32c(data) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Writing.

_HEADER = 12   # uint64 length + uint32 masked crc of the length.
_FOOTER = 4    # uint32 masked crc of the data.


def index_path(shard_path) -> pathlib.Path:
  """The index file of a shard: '<shard>.index'."""
  p = pathlib.Path(shard_path)
  return p.with_name(p.name + ".index")


def frame_record(data: bytes) -> bytes:
  """The full TFRecord framing of one record's data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _write_index(shard_path, index: np.ndarray) -> pathlib.Path:
  """Writes the index atomically (temp name + rename)."""
  path = index_path(shard_path)
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  np.asarray(index, dtype="<i8").reshape(-1, 2).tofile(tmp)
  os.replace(tmp, path)
  return path


class TFRecordWriter:
  """Writes one TFRecord shard and, on close, its '<shard>.index'.

  Usage:
    with TFRecordWriter("out/train-00000-of-00004.tfrecord") as w:
      w.write(example_bytes)

  Data goes to a temporary file next to `path`; `close()` renames it to `path` and writes the
  index, so a shard that exists is complete. Leaving the `with` block by an exception discards the
  partial file (call `abort()` to do that by hand).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self._tmp = self.path.with_name(self.path.name + f".partial{os.getpid()}")
    self._f: Optional[BinaryIO] = open(self._tmp, "wb")
    self._offsets: list[tuple[int, int]] = []
    self._pos = 0

  @property
  def num_records(self) -> int:
    return len(self._offsets)

  def write(self, data: bytes) -> None:
    if self._f is None:
      raise ValueError(f"TFRecordWriter({self.path}) is closed; open a new writer")
    framed = frame_record(bytes(data))
    self._f.write(framed)
    self._offsets.append((self._pos, len(data)))
    self._pos += len(framed)

  def close(self) -> None:
    if self._f is None:
      return
    self._f.close()
    self._f = None
    os.replace(self._tmp, self.path)
    _write_index(self.path, np.array(self._offsets, dtype=np.int64).reshape(-1, 2))

  def abort(self) -> None:
    if self._f is None:
      return
    self._f.close()
    self._f = None
    self._tmp.unlink(missing_ok=True)

  def __enter__(self) -> "TFRecordWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


# ---------------------------------------------------------------------------------------------
# Reading.

def read_index(shard_path) -> np.ndarray:
  """The int64 [N, 2] (offset, length) index of a shard; raises FileNotFoundError naming the fix."""
  path = index_path(shard_path)
  if not path.exists():
    raise FileNotFoundError(
        f"{path}: no index for shard {shard_path}; build one with "
        f"data_pipeline.tfrecord.build_index('{shard_path}')")
  raw = np.fromfile(path, dtype="<i8")
  if raw.size % 2:
    raise errors.CorruptRecordError(str(path), f"index has {raw.size} int64 values, expected "
                                    "an even number; rebuild it with build_index()")
  return raw.reshape(-1, 2).astype(np.int64)


def read_record_at(f: BinaryIO, offset: int, length: int, *, verify_crc: bool = True,
                   item: str = "") -> bytes:
  """Reads the record whose header starts at `offset` and whose data is `length` bytes.

  Raises errors.CorruptRecordError (item = `item`, e.g. '<shard>#<record number>') on a short read,
  a length field that differs from `length`, or a CRC mismatch (when verify_crc).
  """
  offset, length = int(offset), int(length)
  f.seek(offset)
  buf = f.read(_HEADER + length + _FOOTER)
  if len(buf) != _HEADER + length + _FOOTER:
    raise errors.CorruptRecordError(
        item, f"short read at offset {offset}: wanted {_HEADER + length + _FOOTER} bytes, got "
        f"{len(buf)} (truncated shard; re-convert it or rebuild its index)")
  (stored_len,) = struct.unpack_from("<Q", buf, 0)
  if stored_len != length:
    raise errors.CorruptRecordError(
        item, f"length field at offset {offset} is {stored_len}, index says {length} (index out "
        "of date or shard corrupt; rebuild the index with build_index())")
  if verify_crc:
    (len_crc,) = struct.unpack_from("<I", buf, 8)
    if len_crc != masked_crc32c(buf[:8]):
      raise errors.CorruptRecordError(item, f"length CRC mismatch at offset {offset}")
    data_crc = struct.unpack_from("<I", buf, _HEADER + length)[0]
    data = buf[_HEADER:_HEADER + length]
    if data_crc != masked_crc32c(data):
      raise errors.CorruptRecordError(item, f"data CRC mismatch at offset {offset} "
                                      f"({length} bytes): the record is corrupt")
    return data
  return buf[_HEADER:_HEADER + length]


def _scan(f: BinaryIO, shard: str, *, verify_crc: bool) -> Iterator[tuple[int, int, bytes]]:
  """Yields (offset, length, data) by following the length fields from the start of a shard."""
  offset = 0
  n = 0
  while True:
    f.seek(offset)
    header = f.read(_HEADER)
    if not header:
      return
    item = f"{shard}#{n}"
    if len(header) < _HEADER:
      raise errors.CorruptRecordError(
          item, f"truncated record header at offset {offset} ({len(header)} of {_HEADER} bytes)")
    (length,) = struct.unpack_from("<Q", header, 0)
    if verify_crc and struct.unpack_from("<I", header, 8)[0] != masked_crc32c(header[:8]):
      raise errors.CorruptRecordError(item, f"length CRC mismatch at offset {offset}: not a "
                                      "TFRecord file, or corrupt")
    data = read_record_at(f, offset, length, verify_crc=verify_crc, item=item)
    yield offset, length, data
    offset += _HEADER + length + _FOOTER
    n += 1


def build_index(shard_path) -> np.ndarray:
  """Scans a shard (e.g. one written by TensorFlow), verifies every CRC and writes its index."""
  with open(shard_path, "rb") as f:
    rows = [(off, ln) for off, ln, _ in _scan(f, str(shard_path), verify_crc=True)]
  index = np.array(rows, dtype=np.int64).reshape(-1, 2)
  _write_index(shard_path, index)
  return index


def iterate_records(shard_path, *, verify_crc: bool = True) -> Iterator[bytes]:
  """Yields each record's data in file order (no index needed); corrupt data raises
  errors.CorruptRecordError naming '<shard>#<record number>'."""
  with open(shard_path, "rb") as f:
    for _, _, data in _scan(f, str(shard_path), verify_crc=verify_crc):
      yield data
