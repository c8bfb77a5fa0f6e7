"""experiments.downstream end to end on a tiny synthetic run; resume; the leaderboard."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
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
  from mmrl.evaluation import features as features_lib
  monkeypatch.setattr(features_lib, "restore_or_init", fail)
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
  from mmrl.evaluation.evaluators import segmentation  # pylint: disable=g-import-not-at-top
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


# ---------------------------------------------------------------------------------------------
# ms_cxr_grounding: each MS-CXR phrase against its own boxes.

def _ms_cxr_shards(tmp: pathlib.Path) -> pathlib.Path:
  """Converted MS-CXR fixture (official layout, test_downstream_converters' writers): img-a has
  two phrases (one with two boxes), img-b one phrase; all test. Square images, so the evaluation
  view leaves the normalised boxes as they are."""
  import test_downstream_converters as conv  # pylint: disable=g-import-not-at-top
  from data_pipeline import convert  # pylint: disable=g-import-not-at-top
  root = tmp / "mimic-cxr"
  rel_a, rel_b = "files/p10/p10000032/s50414267", "files/p11/p11000001/s51000001"
  conv.write_dicom(root / rel_a / "img-a.dcm", 40, 40, seed=1)
  conv.write_dicom(root / rel_b / "img-b.dcm", 40, 40, seed=2)
  conv.write_csv(tmp / "MS_CXR_Local_Alignment_v1.1.0.csv", conv.MS_CXR_HEADER, [
      ["img-a", "Pleural Effusion", "small left effusion", f"{rel_a}/img-a.jpg", 8, 40, 16, 20,
       80, 80, "test"],
      ["img-a", "Pleural Effusion", "small left effusion", f"{rel_a}/img-a.jpg", 40, 40, 20, 20,
       80, 80, "test"],
      ["img-a", "Cardiomegaly", "enlarged heart", f"{rel_a}/img-a.jpg", 20, 10, 40, 30, 80, 80,
       "test"],
      ["img-b", "Edema", "mild edema", f"{rel_b}/img-b.jpg", 0, 0, 40, 80, 80, 80, "test"]])
  out = tmp / "ms_cxr_shards"
  convert.convert(convert.load_layout("ms_cxr", root), out, conv.OPTIONS)
  return out


MS_CXR_BOXES = {  # phrase -> its normalised boxes (x / 80, y / 80)
    "small left effusion": [(0.1, 0.5, 0.3, 0.75), (0.5, 0.5, 0.75, 0.75)],
    "enlarged heart": [(0.25, 0.125, 0.75, 0.5)],
    "mild edema": [(0.0, 0.0, 0.5, 1.0)]}


def test_ms_cxr_grounding_pairs_each_phrase_with_exactly_its_own_boxes(tmp_path):
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.evaluators import grounding  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.metrics import localisation  # pylint: disable=g-import-not-at-top
  shards = _ms_cxr_shards(tmp_path)
  names, most = pipeline.box_label_vocabulary(shards, "test")
  assert names == ("Cardiomegaly: enlarged heart", "Edema: mild edema",
                   "Pleural Effusion: small left effusion") and most == 3
  data = convirt.get_config("smoke").data
  data.dataset_dir, data.max_boxes = str(shards), most
  size = int(data.image_size)
  pairs, unlabelled = [], 0
  for host in pipeline.make_eval_batches(data, split="test", batch_size=4,
                                         box_label_names=names):
    got, n = grounding.phrase_pairs(host, names, size)
    pairs += got
    unlabelled += n
  assert unlabelled == 0 and len(pairs) == 3
  by_phrase = {phrase: (row, gt) for row, phrase, gt in pairs}
  assert set(by_phrase) == set(MS_CXR_BOXES)
  for phrase, boxes in MS_CXR_BOXES.items():
    want = localisation.boxes_to_mask(np.asarray(boxes), size, size)
    np.testing.assert_array_equal(by_phrase[phrase][1], want, err_msg=phrase)
  rows = {p: r for p, (r, _) in by_phrase.items()}
  assert rows["small left effusion"] == rows["enlarged heart"] != rows["mild edema"]
  # Without the box-label vocabulary the phrase boxes have no label: nothing would be paired.
  host = next(iter(pipeline.make_eval_batches(data, split="test", batch_size=4)))
  assert grounding.phrase_pairs(host, names, size)[0] == []
  assert grounding.phrase_of_box_label("Edema: mild: edema") == "mild: edema"
  assert grounding.phrase_of_box_label("plain phrase") == "plain phrase"


def test_ms_cxr_grounding_task_runs_end_to_end_on_converted_shards(tiny_run):
  run_dir, _, tmp = tiny_run
  # The same weights at 96 px: the smoke tower's 32 px input gives a 1 x 1 map (no contrast);
  # its convolutions take any size, so a copy of the run with a larger image has a 3 x 3 grid.
  big = tmp / "run96"
  shutil.copytree(run_dir, big)
  config = json.loads((big / "config.json").read_text())
  config["data"]["image_size"] = 96
  (big / "config.json").write_text(json.dumps(config))
  shards = _ms_cxr_shards(tmp / "ms_cxr")
  doc = run.run_task("ms_cxr_grounding", str(big), str(shards), fractions=(1, 100),
                     seeds=(0, 1), results_dir=str(tmp / "ms_cxr_results"), command="test",
                     progress=False)
  (entry,) = doc["entries"].values()
  assert set(entry["runs"]) == {"100"} and set(entry["runs"]["100"]) == {"0"}
  one = entry["runs"]["100"]["0"]
  assert one["all"]["grounding/phrase/pairs"] == 3.0
  assert one["all"]["grounding/phrase/unlabelled_boxes"] == 0.0
  assert one["all"]["grounding/phrase/skipped_gt"] == 0.0
  assert one["metrics"]["miou"] is not None and 0.0 <= one["metrics"]["miou"] <= 1.0
  assert one["metrics"]["cnr"] is not None and one["metrics"]["cnr"] >= 0.0, one["all"]
