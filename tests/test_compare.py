"""The comparison end to end at test size: 2 methods x 1 seed x 2 steps + the random baseline."""
from __future__ import annotations

import json

import pytest

from mmrl.evaluation import comparison

from conftest import shared_data_dir


@pytest.mark.slow
def test_compare_writes_table_json_plots_and_heatmaps_and_resumes(tmp_path, synthetic_cache):
  shared = shared_data_dir()
  budget = comparison.Budget(steps=2, batch_size=8, image_size=32, patients=24, warmup_steps=1,
                             eval_examples=16, synthetic_image_size=96, synthetic_short_side=48,
                             nih_items=8, nih_splits=("train", "validate", "test"))
  results = tmp_path / "results"
  out = comparison.run_comparison(["convirt", "gloria"], [0], budget, output=tmp_path / "out",
                                  results_dir=results, shared_data=str(shared or ""),
                                  command="pytest compare", data_root=str(synthetic_cache),
                                  progress=lambda _: None)
  md = (results / "comparison.md").read_text()
  for text in ("pytest compare", "| convirt |", "| gloria |", "| random_init |",
               "loc/synthetic/pointing", "WE WROTE", "jax "):
    assert text in md, text
  data = json.loads((results / "comparison.json").read_text())
  assert sorted(r["method"] for r in data["runs"]) == ["convirt", "gloria", "random_init"]
  for r in data["runs"]:
    m = r["metrics"]
    assert 0.0 <= m["loc/synthetic/pointing"] <= 1.0 or m["loc/synthetic/pairs"] == 0
    assert "retrieval/i2t_R@1" in m
    if shared is not None:
      assert m["loc/nih_templated/pairs"] > 0
  assert {r["step"] for r in data["runs"] if r["method"] != "random_init"} == {2}
  for name in ("comparison_localisation.png", "comparison_global.png"):
    assert (results / name).stat().st_size > 0
  assert list((results / "heatmaps" / "convirt").glob("*.png"))

  # A second call finds every run finished and only rewrites the tables.
  done = tmp_path / "out" / "runs" / "gloria" / "seed_0" / "result.json"
  before = done.stat().st_mtime_ns
  again = comparison.run_comparison(["convirt", "gloria"], [0], budget, output=tmp_path / "out",
                                    results_dir=results, shared_data=str(shared or ""),
                                    data_root=str(synthetic_cache), progress=lambda _: None)
  assert done.stat().st_mtime_ns == before
  assert again["summary"].keys() == out["summary"].keys()


def _entry(mean, std, n=3):
  return {"mean": mean, "std": std, "n": n}


def test_analysis_calls_a_difference_only_beyond_the_seed_spread():
  summary = {
      "convirt": {"loc/synthetic/pointing": _entry(0.20, 0.02),
                  "retrieval/i2t_R@1": _entry(0.10, 0.01)},
      "lovt": {"loc/synthetic/pointing": _entry(0.40, 0.03),
               "retrieval/i2t_R@1": _entry(0.05, 0.01)},
      "gloria": {"loc/synthetic/pointing": _entry(0.21, 0.02),
                 "retrieval/i2t_R@1": _entry(0.10, 0.02)},
  }
  text = "\n".join(comparison.analysis(summary))
  assert "1 of 2 local methods localise clearly better than ConVIRT: lovt." in text
  assert "clearly worse: lovt." in text
  assert "gloria vs ConVIRT**: `loc/synthetic/pointing` +0.010 (within the seed spread" in text
