"""Metric writers: JSON lines and TensorBoard event files written without TensorFlow."""
import json

import numpy as np
import pytest

from data_pipeline import tfrecord
from mmrl.train import metric_writers


def test_jsonl_writer_appends_one_row_per_write_with_step(tmp_path):
  w = metric_writers.JsonlWriter(tmp_path / "m.jsonl")
  w.write_scalars(1, {"loss": 2.5})
  w.write_scalars(2, {"loss": float("nan"), "acc": np.float32(0.5)})
  rows = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[0]["loss"] == 2.5 and rows[1]["loss"] == "nan" and rows[1]["acc"] == 0.5


def test_tensorboard_file_is_valid_tfrecords_of_events(tmp_path):
  w = metric_writers.TensorBoardWriter(tmp_path)
  w.write_scalars(3, {"loss": 1.25})
  w.close()
  records = list(tfrecord.iterate_records(w.path, verify_crc=True))
  assert len(records) == 2  # file_version event + one scalar event
  assert b"brain.Event:2" in records[0] and b"loss" in records[1]


def test_tensorboard_reads_our_scalars_and_images(tmp_path):
  ea_mod = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator",
      reason="tensorboard not installed (pip install tensorboard) — format parity check only")
  w = metric_writers.TensorBoardWriter(tmp_path)
  for step in range(1, 4):
    w.write_scalars(step, {"loss": 1.0 / step, "retrieval/i2t_R@1": 0.1 * step})
  w.write_images(3, {"heatmap": np.arange(64, dtype=np.uint8).reshape(8, 8)})
  w.close()
  acc = ea_mod.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
  acc.Reload()
  assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
  assert acc.Scalars("loss")[1].value == pytest.approx(0.5)
  assert acc.Scalars("retrieval/i2t_R@1")[2].value == pytest.approx(0.3)
  img = acc.Images("heatmap")[0]
  assert (img.width, img.height) == (8, 8)
