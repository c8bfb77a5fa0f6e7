"""Metric writers: JSON lines and TensorBoard event files written without TensorFlow."""
import json

import numpy as np
import pytest

from data_pipeline import tfrecord
from mmrl.train import metric_writers


def test_jsonl_writer_appends_one_row_per_step_with_nonfinite_as_null(tmp_path):
  w = metric_writers.JsonlWriter(tmp_path / "m.jsonl")
  w.write_scalars(1, {"loss": 2.5})
  w.write_scalars(2, {"loss": float("nan"), "acc": np.float32(0.5)})
  rows = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[0]["loss"] == 2.5 and rows[1]["loss"] is None and rows[1]["acc"] == 0.5


def test_jsonl_writes_of_the_same_step_merge_into_one_row(tmp_path):
  w = metric_writers.JsonlWriter(tmp_path / "m.jsonl")
  w.write_scalars(0, {"compile_s": 3.0})
  w.write_scalars(2, {"loss": 2.0})
  w.write_scalars(2, {"retrieval/i2t_R@1": 0.25})
  w.write_scalars(4, {"loss": 1.5})
  rows = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 2, 4]
  assert rows[1]["loss"] == 2.0 and rows[1]["retrieval/i2t_R@1"] == 0.25


def test_metrics_jsonl_is_one_pandas_call_with_numeric_columns(tmp_path):
  pd = pytest.importorskip("pandas", reason="pandas not installed (pip install pandas)")
  w = metric_writers.make_writers(tmp_path)
  w.write_scalars(0, {"compile_s": 1.5, "memory/temp_size_mib": 2.0})
  for step in (2, 4, 6):
    w.write_scalars(step, {"loss": 3.0 / step, "lr": 1e-3, "nonfinite": False})
  w.write_scalars(6, {"retrieval/i2t_R@1": 0.5, "zero_shot/mean_auc": float("nan")})
  w.close()
  df = pd.read_json(tmp_path / "metrics.jsonl", lines=True)
  assert df["step"].tolist() == [0, 2, 4, 6]
  for column in df.columns:
    assert pd.api.types.is_numeric_dtype(df[column]), (column, df[column].dtype)
  assert df.set_index("step").loc[6, "retrieval/i2t_R@1"] == 0.5
  assert np.isnan(df.set_index("step").loc[6, "zero_shot/mean_auc"])
  assert df["loss"].iloc[1:].tolist() == pytest.approx([1.5, 0.75, 0.5])


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
