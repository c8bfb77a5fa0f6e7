"""The learning-curve picture of a run directory (mmrl.viz.run_curves)."""
import json

import numpy as np

from mmrl.viz import run_curves


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_series_keeps_the_later_row_of_a_step_logged_twice_and_skips_nulls(tmp_path):
  _write(tmp_path / "metrics.jsonl", [
      {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0, "retrieval/i2t_R@1": None},
      {"step": 20, "loss": 1.5}, {"step": 30, "loss": 1.0, "retrieval/i2t_R@1": 0.25}])
  rows = run_curves.read_metrics(tmp_path / "metrics.jsonl")
  assert run_curves.series(rows, "loss") == ([10, 20, 30], [3.0, 1.5, 1.0])
  assert run_curves.series(rows, "retrieval/i2t_R@1") == ([30], [0.25])


def test_write_run_curves_draws_a_png_with_one_panel_per_logged_metric(tmp_path):
  _write(tmp_path / "metrics.jsonl", [{"step": s, "loss": 3.0 - s / 100,
                                       "retrieval/i2t_R@1": s / 400} for s in range(10, 110, 10)])
  out = run_curves.write_run_curves(tmp_path)
  assert out == tmp_path / "curves.png"
  import matplotlib.image as mpimg
  img = mpimg.imread(out)
  assert img.shape[1] > 1.5 * img.shape[0]  # two panels side by side
  assert np.asarray(img).std() > 0.01


def test_write_run_curves_returns_none_without_metrics(tmp_path):
  assert run_curves.write_run_curves(tmp_path) is None
  _write(tmp_path / "metrics.jsonl", [{"step": 1, "other": 1.0}])
  assert run_curves.write_run_curves(tmp_path) is None
