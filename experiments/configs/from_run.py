"""The config a run directory was made with (its config.json), e.g. an imported checkpoint.

USE: python -m experiments.evaluate --config=experiments/configs/from_run.py:runs/gloria \
       --config.data.dataset_dir=/data/shards --checkpoint=runs/gloria
The argument is the run directory (or its config.json); flags override keys as usual.
"""
from __future__ import annotations

import ml_collections

from mmrl.train import run_dir


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if not arg:
    raise ValueError("from_run.py needs the run directory: --config=experiments/configs/"
                     "from_run.py:runs/NAME")
  return run_dir.read_config(arg)
