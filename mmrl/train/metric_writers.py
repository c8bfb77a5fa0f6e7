"""Where training metrics go: stdout (logging), a JSON-lines file, and TensorBoard event files.

The TensorBoard writer needs no TensorFlow: it encodes `Event`/`Summary` protos by hand (scalars
and PNG images) and frames them as TFRecords, which TensorBoard reads as usual
(`tensorboard --logdir <workdir>/tensorboard`). Only process 0 writes (`make_writers`).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import pathlib
import socket
import struct
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from data_pipeline.tfrecord import frame_record

log = logging.getLogger(__name__)


class MetricWriter:
  """Interface: scalars (and images) at a step."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    raise NotImplementedError

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    del step, images

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.flush()


class LoggingWriter(MetricWriter):
  """One log line per write: `step 120 | loss 2.31 | clip_nce/acc_i2t 0.41 ...`."""

  def write_scalars(self, step, scalars):
    parts = [f"{k} {_fmt(v)}" for k, v in sorted(scalars.items())]
    log.info("step %d | %s", step, " | ".join(parts))


class JsonlWriter(MetricWriter):
  """One JSON object per logged step in `path`: {"step": s, "time": t, **scalars}.

  Made to be read with one pandas call, `pandas.read_json(path, lines=True)`: consecutive writes
  for the same step (the training metrics and the evaluation metrics of step s) are merged into
  one row, by rewriting the file's last line, and non-finite values are written as `null` (NaN
  in pandas), so every metric column is numeric. The file is reopened per write (crash-safe: a
  killed run leaves complete lines). A resumed run re-logs the steps after its checkpoint, so the
  file may then hold the same step twice; the later row is the one the resumed state produced
  (`df.drop_duplicates("step", keep="last")`).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._last_step: Optional[int] = None  # the step of this writer's last line
    self._last_row: dict = {}
    self._last_offset = 0  # where that line starts in the file

  def write_scalars(self, step, scalars):
    step = int(step)
    values = {k: _to_json_float(v) for k, v in scalars.items()}
    with self.path.open("ab+") as f:
      if step == self._last_step and f.tell() > self._last_offset:
        row = {**self._last_row, **values, "time": time.time()}
        f.truncate(self._last_offset)
      else:
        row = {"step": step, "time": time.time(), **values}
        self._last_offset = f.tell()
      f.write((json.dumps(row, allow_nan=False) + "\n").encode())
    self._last_step, self._last_row = step, row


class TensorBoardWriter(MetricWriter):
  """Writes `events.out.tfevents.<time>.<host>` in `logdir` without TensorFlow."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = pathlib.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.logdir / name
    self._f = self.path.open("ab")
    self._write_event(_event(time.time(), 0, file_version="brain.Event:2"))
    self.flush()

  def write_scalars(self, step, scalars):
    values = [_field_bytes(1, k.encode()) + _field_fixed32(2, float(v))
              for k, v in scalars.items() if _is_number(v)]
    self._write_event(_event(time.time(), step, summary_values=values))

  def write_images(self, step, images):
    values = []
    for tag, img in images.items():
      img = np.asarray(img)
      if img.dtype != np.uint8:
        raise ValueError(f"image {tag!r} must be uint8 HxW or HxWxC, got {img.dtype}")
      h, w = img.shape[:2]
      c = 1 if img.ndim == 2 else img.shape[2]
      image_proto = (_field_varint(1, h) + _field_varint(2, w) + _field_varint(3, c)
                     + _field_bytes(4, _png(img)))
      values.append(_field_bytes(1, tag.encode()) + _field_bytes(4, image_proto))
    self._write_event(_event(time.time(), step, summary_values=values))

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.flush()
      self._f.close()

  def _write_event(self, event: bytes) -> None:
    self._f.write(frame_record(event))


class MultiWriter(MetricWriter):
  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self.writers:
      w.write_images(step, images)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def make_writers(workdir: str | os.PathLike, *, process_index: int = 0) -> MetricWriter:
  """stdout + `<workdir>/metrics.jsonl` + `<workdir>/tensorboard/` on process 0; nothing elsewhere."""
  if process_index != 0:
    return MultiWriter([])
  workdir = pathlib.Path(workdir)
  return MultiWriter([LoggingWriter(), JsonlWriter(workdir / "metrics.jsonl"),
                      TensorBoardWriter(workdir / "tensorboard")])


# ---- protobuf wire format (Event: wall_time=1 double, step=2 int64, file_version=3 string,
# summary=5 Summary; Summary: value=1 repeated Value; Value: tag=1, simple_value=2 float,
# image=4 Image; Image: height=1, width=2, colorspace=3, encoded_image_string=4) ----

def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field_varint(field: int, n: int) -> bytes:
  return _varint(field << 3 | 0) + _varint(n)


def _field_bytes(field: int, data: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(data)) + data


def _field_fixed32(field: int, x: float) -> bytes:
  return _varint(field << 3 | 5) + struct.pack("<f", x)


def _field_fixed64(field: int, x: float) -> bytes:
  return _varint(field << 3 | 1) + struct.pack("<d", x)


def _event(wall_time: float, step: int, *, file_version: Optional[str] = None,
           summary_values: Sequence[bytes] = ()) -> bytes:
  out = _field_fixed64(1, wall_time) + _field_varint(2, int(step))
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if summary_values:
    out += _field_bytes(5, b"".join(_field_bytes(1, v) for v in summary_values))
  return out


def _png(img: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(img.squeeze(-1) if img.ndim == 3 and img.shape[2] == 1 else img).save(
      buf, format="PNG")
  return buf.getvalue()


def _is_number(v) -> bool:
  try:
    float(v)
    return True
  except (TypeError, ValueError):
    return False


def _to_json_float(v):
  """A float for JSON (None for NaN/inf, which pandas reads as NaN); non-numbers unchanged."""
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else None


def _fmt(v) -> str:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  return f"{f:.4g}"
