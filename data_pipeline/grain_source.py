"""Grain random-access source over TFRecord shards, through their '<shard>.index' files.

Owns `TFRecordIndexSource`: global record number -> (shard, offset, length) -> raw record bytes
(CRC-checked by data_pipeline.tfrecord). Files are opened lazily, per process and per thread, so
the source pickles into Grain multiprocessing workers without carrying open file handles, and
concurrent reader threads never share a file position.
"""
from __future__ import annotations

import os
import pathlib
import threading
from typing import Sequence

import grain
import numpy as np

from data_pipeline import tfrecord


class TFRecordIndexSource(grain.sources.RandomAccessDataSource):
  """Random access to the records of a list of indexed TFRecord shards.

  Args:
    shards: shard paths, in the order that defines global record numbers.
    verify_crc: check the length and data CRCs of each record read.

  Raises:
    FileNotFoundError: a shard or its index does not exist (names the file and the fix).
  """

  def __init__(self, shards: Sequence[str | os.PathLike], *, verify_crc: bool = True):
    self._paths = [str(p) for p in shards]
    for p in self._paths:
      if not pathlib.Path(p).exists():
        raise FileNotFoundError(f"shard {p} does not exist; re-run the converter or fix the "
                                "shard list in mmrl_dataset_info.json")
    indexes = [tfrecord.read_index(p) for p in self._paths]
    counts = np.array([len(ix) for ix in indexes], np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._shard_of = np.repeat(np.arange(len(indexes), dtype=np.int32), counts)
    self._index = (np.concatenate(indexes, axis=0) if indexes
                   else np.zeros([0, 2], np.int64))
    self._verify_crc = verify_crc
    self._local = threading.local()

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_local"]  # Holds open files; each process/thread opens its own.
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self) -> int:
    return int(self._index.shape[0])

  def __repr__(self) -> str:
    first = self._paths[0] if self._paths else "-"
    return (f"TFRecordIndexSource(num_records={len(self)}, num_shards={len(self._paths)}, "
            f"first_shard={first!r}, verify_crc={self._verify_crc})")

  @property
  def shard_paths(self) -> list[str]:
    return list(self._paths)

  def shard_num_records(self, shard: int) -> int:
    return int(self._starts[shard + 1] - self._starts[shard])

  def locate(self, record: int) -> tuple[int, int]:
    """Global record number -> (shard number, record number inside the shard)."""
    record = self._check(record)
    shard = int(self._shard_of[record])
    return shard, record - int(self._starts[shard])

  def item_name(self, record: int) -> str:
    """'<shard path>#<record number in shard>', the id used in errors and logs."""
    shard, local = self.locate(record)
    return f"{self._paths[shard]}#{local}"

  def _check(self, record) -> int:
    record = int(record)
    n = len(self)
    if record < 0:
      record += n
    if not 0 <= record < n:
      raise IndexError(f"record {record} out of range for a source of {n} records")
    return record

  def _file(self, shard: int):
    local = self._local
    if getattr(local, "pid", None) != os.getpid():
      local.pid = os.getpid()
      local.files = {}
    f = local.files.get(shard)
    if f is None:
      f = open(self._paths[shard], "rb")
      local.files[shard] = f
    return f

  def __getitem__(self, record) -> bytes:
    """Raw bytes of a record; raises errors.CorruptRecordError naming '<shard>#<n>'."""
    record = self._check(record)
    shard = int(self._shard_of[record])
    offset, length = self._index[record]
    return tfrecord.read_record_at(
        self._file(shard), int(offset), int(length), verify_crc=self._verify_crc,
        item=f"{self._paths[shard]}#{record - int(self._starts[shard])}")

  def close(self) -> None:
    """Closes the files this thread opened (others close when their process exits)."""
    for f in getattr(self._local, "files", {}).values():
      f.close()
    self._local.files = {}
