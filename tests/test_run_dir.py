"""mmrl.train.run_dir: one finder of a run's checkpoints, one reader and writer of its config.json."""
from __future__ import annotations

import json

import ml_collections
import pytest

from mmrl.train import run_dir


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 3
  c.eval = ml_collections.ConfigDict({"fractions": (0.1, 1.0)})
  c.method = ml_collections.ConfigDict({"objectives": [{"name": "convirt", "weight": 1.0}]})
  return c


def test_a_written_config_reads_back_with_its_tuples_and_its_list_of_dicts(tmp_path):
  run_dir.write_config(tmp_path, run_dir.config_json(_config()))
  assert json.loads((tmp_path / "config.json").read_text())["eval"]["fractions"] == [0.1, 1.0]
  c = run_dir.read_config(tmp_path)
  assert c.eval.fractions == (0.1, 1.0)
  assert isinstance(c.method.objectives, list)
  assert c.method.objectives[0]["name"] == "convirt"


def test_the_config_is_found_from_the_run_its_checkpoints_folder_or_the_file(tmp_path):
  run_dir.write_config(tmp_path, run_dir.config_json(_config()))
  (tmp_path / "checkpoints").mkdir()
  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "config.json"):
    assert run_dir.read_config(path).seed == 3


def test_a_run_without_config_json_is_refused_naming_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config\.json does not exist.*or pass --config"):
    run_dir.read_config(tmp_path, hint="or pass --config")
  with pytest.raises(ValueError, match="does not exist"):  # experiments/configs/from_run.py's type
    run_dir.read_config(tmp_path / "nowhere")


def test_checkpoint_dir_takes_a_run_or_its_checkpoints_folder_and_refuses_anything_else(tmp_path):
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  assert run_dir.checkpoint_dir(tmp_path) == tmp_path / "checkpoints"
  assert run_dir.checkpoint_dir(tmp_path / "checkpoints") == tmp_path / "checkpoints"
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither checkpoints/ nor numbered step folders"):
    run_dir.checkpoint_dir(tmp_path / "empty")


def test_a_run_that_saved_nothing_yet_has_no_steps(tmp_path):
  assert run_dir.saved_steps(tmp_path / "not_started") == []
