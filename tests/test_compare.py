"""The comparison end to end at test size: 2 methods x 1 seed x 2 steps + the random baseline."""
from __future__ import annotations

import json

import pytest

from experiments.comparison import budget as budget_lib
from experiments.comparison import run as comparison_run
from experiments.comparison import method_configs
from experiments.comparison import report

from conftest import shared_data_dir


@pytest.mark.slow
def test_compare_writes_table_json_plots_and_heatmaps_and_resumes(tmp_path, synthetic_cache):
  shared = shared_data_dir()
  budget = budget_lib.Budget(steps=2, batch_size=8, image_size=32, patients=24, warmup_steps=1,
                             eval_examples=16, synthetic_image_size=96, synthetic_short_side=48,
                             nih_items=8, nih_splits=("train", "validate", "test"))
  results = tmp_path / "results"
  out = comparison_run.run_comparison(["convirt", "gloria"], [0], budget, output=tmp_path / "out",
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
  again = comparison_run.run_comparison(["convirt", "gloria"], [0], budget, output=tmp_path / "out",
                                    results_dir=results, shared_data=str(shared or ""),
                                    data_root=str(synthetic_cache), progress=lambda _: None)
  assert done.stat().st_mtime_ns == before
  assert again["summary"].keys() == out["summary"].keys()


def _entry(*per_seed):
  from mmrl.evaluation.metrics import statistics as st
  d = st.describe(per_seed).as_dict()
  return {**d, "by_seed": {str(i): v for i, v in enumerate(per_seed)}}


def test_analysis_calls_a_difference_only_when_the_paired_test_says_so():
  summary = {
      "convirt": {"loc/synthetic/pointing": _entry(0.20, 0.22, 0.18),
                  "retrieval/i2t_R@1": _entry(0.10, 0.11, 0.09)},
      "lovt": {"loc/synthetic/pointing": _entry(0.40, 0.43, 0.37),
               "retrieval/i2t_R@1": _entry(0.05, 0.055, 0.04)},
      "gloria": {"loc/synthetic/pointing": _entry(0.25, 0.19, 0.19),
                 "retrieval/i2t_R@1": _entry(0.10, 0.12, 0.08)},
  }
  text = "\n".join(report.analysis(summary))
  assert "1 of 2 local methods localise better than ConVIRT by the paired t-test" in text
  assert ": lovt." in text
  assert "worse than ConVIRT by the paired t-test: lovt." in text
  assert "not distinguishable with 3 seeds" in text
  assert "paired t-test p=" in text


def test_summary_uses_the_sample_std_and_keeps_the_seeds_for_pairing():
  runs = [{"method": "lovt", "seed": s, "metrics": {"m": v}} for s, v in enumerate([1., 2., 3.])]
  got = report.summarise(runs)["lovt"]["m"]
  assert got["std"] == 1.0 and got["n"] == 3 and got["by_seed"] == {"0": 1., "1": 2., "2": 3.}
  assert got["ci_low"] < 2.0 < got["ci_high"]


def test_every_method_reads_the_whole_report_in_the_comparison():
  budget = budget_lib.PRESETS["localisation"]
  for m in budget_lib.PRESET_METHODS["localisation"]:
    c = method_configs.method_config(m, budget, seed=0)
    assert c.data.sentence_sampling == "all", m
    assert c.data.synthetic.variant == "calibrated"
  assert any("sentence" in f for f in method_configs.fallbacks("convirt", budget))
  assert any("uniform" in f for f in method_configs.fallbacks("mgca", budget))


def test_every_methods_comparison_config_passes_validation():
  """Each method's config at the common size trains: the validation the loop runs first accepts
  it (local MI's one-sentence feature needs one sampled sentence; the comparison reads the whole
  report, so its sentence is pooled from the report and fallbacks() says so)."""
  from mmrl.train import validation  # pylint: disable=g-import-not-at-top
  budget = budget_lib.PRESETS["localisation"]
  for m in budget_lib.ALL_METHODS:
    validation.validate_config(method_configs.method_config(m, budget, seed=0))
  assert any("sentence_in_report" in f for f in method_configs.fallbacks("local_mi", budget))


def test_reanalyse_rewrites_a_stored_comparison_with_paired_tests_and_keeps_its_runs(tmp_path):
  runs = []
  for seed, (a, b) in enumerate([(0.10, 0.30), (0.12, 0.33), (0.11, 0.31)]):
    runs.append({"method": "convirt", "seed": seed, "step": 8,
                 "metrics": {"loc/synthetic/pointing": a}})
    runs.append({"method": "gloria", "seed": seed, "step": 8,
                 "metrics": {"loc/synthetic/pointing": b}})
  meta = {"command": "old command", "start": "2026-11-23 17:52", "end": "2026-11-23 18:15",
          "wall_s": 60.0, "nproc": 2, "cpu": "cpu", "load_start": "0", "load_end": "0",
          "jax": "0", "budget": {"steps": 8}, "seeds": [0, 1, 2],
          "methods": ["convirt", "gloria"], "nih": "not used", "plots": []}
  (tmp_path / "comparison.json").write_text(json.dumps({"meta": meta, "summary": {}, "runs": runs}))
  report.reanalyse(tmp_path, command="reanalyse cmd", note="an old run")
  md = (tmp_path / "comparison.md").read_text()
  assert "reanalyse cmd" in md and "an old run" in md and "old command" in md
  assert "gloria vs ConVIRT" in md and "paired t-test" in md and "): better" in md
  assert "Identical inputs" not in md  # today's protocol lines do not describe an old run
  data = json.loads((tmp_path / "comparison.json").read_text())
  assert data["runs"] == runs
  assert data["summary"]["gloria"]["loc/synthetic/pointing"]["n"] == 3


@pytest.mark.slow
def test_compare_with_one_worker_per_seed_gives_the_runs_a_single_process_gives(
    tmp_path, synthetic_cache):
  budget = budget_lib.Budget(steps=2, batch_size=8, image_size=32, patients=24, warmup_steps=1,
                             eval_examples=16, synthetic_image_size=96, synthetic_short_side=48,
                             nih_splits=())
  results = tmp_path / "results"
  out = comparison_run.run_comparison(["convirt"], [0, 1], budget, output=tmp_path / "par",
                                  results_dir=results, data_root=str(synthetic_cache),
                                  progress=lambda _: None, jobs=2)
  assert sorted((r["method"], r["seed"]) for r in out["results"]) == [
      ("convirt", 0), ("convirt", 1), ("random_init", 0), ("random_init", 1)]
  assert list((results / "heatmaps" / "convirt").glob("*.png"))  # seed 0's heat maps
  # Seed 1 again, in this process: the same training and the same metrics.
  ds = comparison_run.prepare_synthetic(budget, synthetic_cache)
  alone = comparison_run.run_one("convirt", 1, budget, dataset_dir=ds, nih_dir="",
                             workdir=tmp_path / "alone", heatmap_dir=None)["metrics"]
  par = next(r for r in out["results"] if r["method"] == "convirt" and r["seed"] == 1)["metrics"]
  assert alone["train/final_loss"] == pytest.approx(par["train/final_loss"], abs=1e-5)
  for k in ("loc/synthetic/pointing", "retrieval/i2t_R@10"):
    assert alone[k] == pytest.approx(par[k], abs=1e-6), k


def test_budget_fields_can_be_set_by_name_with_their_types_and_a_bad_name_is_refused():
  preset = budget_lib.PRESETS["localisation"]
  b = budget_lib.budget_with(preset, ["text_lr_mult=1", "gloria_exact=false", "steps=40",
                                      "nih_splits=validate+test", "variant=realistic"])
  assert (b.text_lr_mult, b.gloria_exact, b.steps, b.nih_splits, b.variant) == (
      1.0, False, 40, ("validate", "test"), "realistic")
  assert b.image_tower == preset.image_tower  # untouched fields keep the preset's values
  with pytest.raises(ValueError, match="name one of"):
    budget_lib.budget_with(preset, ["text_lr=1"])
  with pytest.raises(ValueError, match="true or false"):
    budget_lib.budget_with(preset, ["gloria_exact=maybe"])
