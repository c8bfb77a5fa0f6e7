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
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def _tuples(value):
  """JSON lists back to tuples (config.json stores tuples as lists; ml_collections flags override
  only tuple-valued fields, e.g. --config.eval.detection.fractions=1.0 on a list is refused).
  Lists of dicts (method.objectives) stay lists of ConfigDicts."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    items = [_tuples(v) for v in value]
    return items if any(isinstance(v, dict) for v in items) else tuple(items)
  return value
