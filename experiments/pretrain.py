"""Pretraining entry point.

python -m experiments.pretrain --config=experiments/configs/demo.py --workdir=runs/demo
python -m experiments.pretrain --config=experiments/configs/convirt.py \
    --config.data.dataset_dir=/data/mimic_shards --config.train.batch_size=256 --workdir=runs/convirt
Re-running with the same --workdir resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  # Orbax and Grain log through absl at INFO on every save/read; keep mmrl's own lines visible.
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("mmrl").setLevel(logging.INFO)
  # Imported here so that `--help` is fast and absl has parsed flags before Grain reads them.
  from mmrl.train import loop  # pylint: disable=g-import-not-at-top
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except loop.NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
