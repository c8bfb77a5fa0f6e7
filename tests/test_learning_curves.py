"""Learning curves (experiments/comparison/curves.py): points collected per method with the
training loss of each point's window, the config keeps a checkpoint at every point, and the
picture and JSON are written."""
import json

import pytest

from experiments.comparison import budget as budget_lib
from experiments.comparison import curves as lc


def _fake_run(root, method, points, losses):
  d = lc.run_dir(root, method, 0)
  d.mkdir(parents=True)
  (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n"
                                           for s, v in losses.items()))
  for p in points:
    (d / f"curve_{p}.json").write_text(json.dumps(
        {"method": method, "seed": 0, "step": p, "metrics": {"retrieval/i2t_R@1": p / 1000}}))


def test_collect_curves_orders_points_and_takes_each_window_mean_loss(tmp_path):
  _fake_run(tmp_path, "convirt", [200, 100], {50: 4.0, 100: 2.0, 150: 1.0, 200: 0.5})
  rows = lc.collect_curves(tmp_path, ["convirt"], 0)["convirt"]
  assert [r["step"] for r in rows] == [100, 200]
  assert rows[0]["metrics"]["train/loss"] == pytest.approx(3.0)   # steps 50, 100
  assert rows[1]["metrics"]["train/loss"] == pytest.approx(0.75)  # steps 150, 200


def test_curve_config_keeps_a_checkpoint_at_every_point():
  budget = budget_lib.Budget(steps=600)
  c = lc.curve_config("convirt", 0, budget, [100, 300, 600], dataset_dir="")
  assert (c.train.checkpoint_every, c.train.keep_every, c.train.num_steps) == (100, 100, 600)
  with pytest.raises(ValueError, match="<= budget.steps"):
    lc.curve_config("convirt", 0, budget, [700], dataset_dir="")


def test_write_curves_writes_json_and_png(tmp_path):
  _fake_run(tmp_path, "lovt", [100, 200], {100: 2.0, 200: 1.0})
  curves = lc.collect_curves(tmp_path, ["lovt"], 0)
  js, png = lc.write_curves(curves, tmp_path / "out", ("train/loss", "retrieval/i2t_R@1"),
                            meta={"command": "cmd"})
  assert json.loads(js.read_text())["meta"]["command"] == "cmd"
  assert png.stat().st_size > 1000
