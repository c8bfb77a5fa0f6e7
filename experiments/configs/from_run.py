"""The config a run directory was made with (its config.json), e.g. an imported checkpoint.

USE: python -m experiments.evaluate --config=experiments/configs/from_run.py:runs/gloria \
       --config.data.dataset_dir=/data/shards --checkpoint=runs/gloria
The argument is the run directory (or its config.json); flags override keys as usual.
"""
from __future__ import annotations

import json
import pathlib

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if not arg:
    raise ValueError("from_run.py needs the run directory: --config=experiments/configs/"
                     "from_run.py:runs/NAME")
  path = pathlib.Path(arg).expanduser()
  if path.is_dir():
    path = path / "config.json"
  if not path.is_file():
    raise ValueError(f"{path} does not exist; give a run directory holding config.json "
                            "(written by experiments.pretrain or experiments.import_checkpoint)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
