"""experiments.downstream end to end on a tiny synthetic run; resume; the leaderboard."""
from __future__ import annotations

import json
import pathlib

import pytest

from data_pipeline import subsets
from data_pipeline import synthetic_dataset
from experiments.configs import convirt
from mmrl.evaluation.downstream import leaderboard
from mmrl.evaluation.downstream import results
from mmrl.evaluation.downstream import run
from mmrl.evaluation.downstream import tasks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_cache):
  """A run directory holding a tiny model's initial state (step 0; no training: the runner only
  needs a checkpoint) and the synthetic shards (boxes and masks)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("downstream")
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(synthetic_cache)
  c.data.synthetic.workers = 1
  run_dir = tmp / "run"
  run_dir.mkdir()
  data_dir = synthetic_dataset.resolve_dataset_dir(c.data, run_dir, make=True)
  config_json = json.loads(c.to_json_best_effort())
  (run_dir / "config.json").write_text(json.dumps(config_json))
  state, _ = state_lib.create_train_state(c, jax.random.key(0), mesh_lib.make_mesh(c.mesh))
  ckpt = ckpt_lib.Checkpointer(run_dir / "checkpoints", async_save=False)
  ckpt.save(0, state, data_iter=None, config=config_json)
  ckpt.wait_until_finished()
  ckpt.close()
  return run_dir, data_dir, tmp


@pytest.mark.slow
def test_downstream_writes_tables_resumes_and_draws_nested_subsets(tiny_run, monkeypatch):
  run_dir, data_dir, tmp = tiny_run
  out = tmp / "results"
  kwargs = dict(results_dir=str(out), overrides={"steps": 2, "batch_size": 4},
                command="test", progress=False)
  doc = run.run_task("nih_detection", str(run_dir), str(data_dir), fractions=(100,),
                     seeds=(0,), **kwargs)
  (key, entry), = doc["entries"].items()
  assert set(entry["runs"]) == {"100"} and set(entry["runs"]["100"]) == {"0"}
  first = json.loads(json.dumps(entry["runs"]["100"]["0"]))
  # A second call with another fraction runs only the missing (10 %, seed 0).
  doc = run.run_task("nih_detection", str(run_dir), str(data_dir), fractions=(10, 100),
                     seeds=(0,), **kwargs)
  entry = doc["entries"][key]
  assert entry["runs"]["100"]["0"] == first  # kept, not run again
  assert set(entry["runs"]) == {"10", "100"} and set(entry["runs"]["10"]) == {"0"}

  # Structure of the JSON and the markdown.
  json_path, md_path = results.paths(out, "nih_detection")
  assert json.loads(json_path.read_text()) == doc
  assert key == "run@0/checkpoint/frozen"
  assert entry["provenance"]["method"] == "convirt" and entry["provenance"]["step"] == 0
  assert entry["commands"] == ["test"] and entry["machine"]
  row = entry["summary"]["10"]
  assert row["seeds"] == [0] and set(row) >= {"map", "map@0.5", "froc", "num_train"}
  assert set(row["map"]) >= {"mean", "std", "n", "values"} and len(row["map"]["values"]) == 1
  md = md_path.read_text()
  assert "| run@0 | convirt | checkpoint | frozen | 10 |" in md and "- commands:" in md

  # The subsets file next to the shards: nested, with the counts the runs trained on.
  sdoc = subsets.read_subsets(data_dir)
  small = set(subsets.subset_ids(sdoc, 10, 0))
  assert small < set(subsets.subset_ids(sdoc, 100, 0)) and sdoc["seeds"] == [0]
  assert entry["runs"]["10"]["0"]["num_train"] == len(small)
  assert entry["runs"]["100"]["0"]["num_train"] == sdoc["num_examples"]

  # Resume: a call whose runs are all done restores nothing.
  def fail(*a, **k):
    raise AssertionError("a finished (fraction, seed) was run again")
  monkeypatch.setattr(run, "_restore", fail)
  again = run.run_task("nih_detection", str(run_dir), str(data_dir), fractions=(10, 100),
                       seeds=(0,), **kwargs)
  assert again["entries"][key]["runs"] == entry["runs"]


def test_task_config_sets_the_task_and_refuses_unknown_keys(tiny_run):
  run_dir, data_dir, _ = tiny_run
  from experiments.configs import from_run
  base = from_run.get_config(str(run_dir))
  task = tasks.get_task("covid_lung_segmentation")
  cfg = run.task_config(base, task, str(data_dir), finetune=True)
  assert cfg.eval.segmentation.enabled and cfg.eval.segmentation.finetune
  assert cfg.eval.segmentation.head == "dense" and not cfg.eval.retrieval.enabled
  one = run.unit_config(cfg, task, 0.1, 3)
  assert one.seed == 3 and tuple(one.eval.segmentation.fractions) == (0.1,)
  with pytest.raises(ValueError, match="no key 'nope'"):
    run.task_config(base, task, str(data_dir), finetune=False, overrides={"nope": 1})
  with pytest.raises(ValueError, match="unknown downstream task"):
    tasks.get_task("nope")


def _fake_result(path: pathlib.Path, task: str, run_name: str, method: str, values):
  t = tasks.get_task(task)
  doc = results.new_document(t)
  prov = {"run_dir": f"/runs/{run_name}", "run_name": run_name, "step": 10,
          "init": "checkpoint", "method": method}
  entry = {"provenance": prov, "mode": "frozen", "runs": {}, "metrics": list(t.metrics),
           "commands": ["x"], "data_dir": "/d", "train_split": "train", "test_split": "test",
           "split_source": "s", "machine": "m", "updated": "now"}
  for seed, v in enumerate(values):
    results.record_run(entry, 100, seed, {"metrics": {t.metrics[0]: v}, "num_train": 5})
  doc["entries"][results.entry_key(prov, "frozen")] = entry
  path.mkdir(parents=True, exist_ok=True)
  results.save(path, doc)


def test_leaderboard_gathers_methods_by_tasks_with_mean_and_sample_std(tmp_path):
  _fake_result(tmp_path / "a", "nih_detection", "gloria", "gloria", [0.1, 0.3])
  _fake_result(tmp_path / "b", "covid_lung_segmentation", "mgca", "mgca", [0.5, 0.7, 0.9])
  files = leaderboard.find_result_files([tmp_path / "a", tmp_path / "b"])
  rows, cols = leaderboard.gather(files)
  assert cols == [("covid_lung_segmentation", "100", "dice"), ("nih_detection", "100", "map")]
  by = {r["method"]: r for r in rows}
  g = by["gloria"]["cells"][("nih_detection", "100", "map")]
  assert g["mean"] == pytest.approx(0.2) and g["std"] == pytest.approx(0.1414213, rel=1e-5)
  assert ("covid_lung_segmentation", "100", "dice") not in by["gloria"]["cells"]
  md = leaderboard.render_markdown(rows, cols)
  assert "0.700 ± 0.200 (n=3)" in md and "| gloria | gloria@10 |" in md and "—" in md
  assert leaderboard.plot(rows, cols, tmp_path / "lb.png").stat().st_size > 0
  with pytest.raises(ValueError, match="in both"):
    leaderboard.gather(files + [tmp_path / "a" / "nih_detection.json"])


def test_segmentation_subsets_from_the_file_leave_out_rows_without_a_mask():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import segmentation  # pylint: disable=g-import-not-at-top
  c = convirt.get_config("smoke")
  c.eval.segmentation.fractions = (0.5,)
  ev = segmentation.SegmentationEvaluator(c, label_names=("A",))
  calls = []
  ev.subset_fn = lambda f, seed, n: calls.append((f, seed, n)) or np.array([0, 1, 3])
  kept = np.array([True, False, True, True, False])  # whole-split rows with a mask
  runs = ev.runs(np.ones((3, 2, 2), bool), kept)
  rows, seed = runs[0.5][0]
  assert calls == [(0.5, c.seed, 5)] and seed == c.seed
  np.testing.assert_array_equal(rows, [0, 2])  # split rows 0 and 3 are kept rows 0 and 2
  ev.subset_fn = lambda f, seed, n: np.array([1, 4])  # no masked row in the subset
  with pytest.raises(ValueError, match="no training image with a target mask"):
    ev.runs(np.ones((3, 2, 2), bool), kept)


def test_provenance_names_the_method_step_and_import_source(tmp_path):
  from mmrl.evaluation.downstream import provenance  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / "gloria_released"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps(
      {"method": {"name": "gloria"}, "model": {"image": {"name": "resnet50"}}}))
  (run_dir / "import_report.json").write_text(json.dumps(
      {"format": "gloria", "source": "/w/chexpert_resnet50.ckpt", "counts": {"imported": 3},
       "notes": ["x"]}))
  p = provenance.checkpoint_provenance(run_dir / "checkpoints", 0, init="checkpoint")
  assert p["run_dir"] == str(run_dir) and p["run_name"] == "gloria_released"
  assert (p["method"], p["image_tower"], p["step"]) == ("gloria", "resnet50", 0)
  assert p["imported"] == {"format": "gloria", "source": "/w/chexpert_resnet50.ckpt",
                           "counts": {"imported": 3}}
