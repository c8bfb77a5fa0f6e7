"""Pretraining entry point.

python -m experiments.pretrain --config=experiments/configs/demo.py --workdir=runs/demo
python -m experiments.pretrain --config=experiments/configs/convirt.py \
    --config.data.dataset_dir=/data/mimic_shards --config.train.batch_size=256 --workdir=runs/convirt
Re-running with the same --workdir resumes from its last checkpoint.

Exit codes: 0 done; 2 bad config (the message names the key and the fix, before anything is
built); 3 non-finite loss; 4 a checkpoint could not be written; 75 preempted (SIGTERM: a final
checkpoint was written, run the same command again to resume).
"""
from __future__ import annotations

import logging
import pathlib
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE = 3
EXIT_CHECKPOINT_WRITE = 4
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (schedulers may requeue on it)


def apply_compilation_cache(config) -> None:
  """Turns on JAX's persistent compilation cache in config.train.compilation_cache_dir ('' = off).

  Must run before anything compiles. Every program is cached (no minimum compile time), so the
  sharded train step, the evaluation step and the state initialiser all load on a re-run.
  """
  path = str(config.train.get("compilation_cache_dir", ""))
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  pathlib.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logging.info("JAX persistent compilation cache: %s", path)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  # Orbax and Grain log through absl at INFO on every save/read; keep mmrl's own lines visible.
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("mmrl").setLevel(logging.INFO)
  # Imported here so that `--help` is fast and absl has parsed flags before Grain reads them.
  from mmrl.train import validation as config_validation  # pylint: disable=g-import-not-at-top
  from mmrl.config_errors import ConfigError  # pylint: disable=g-import-not-at-top
  from mmrl.train import checkpoint  # pylint: disable=g-import-not-at-top
  from mmrl import loop  # pylint: disable=g-import-not-at-top
  apply_compilation_cache(_CONFIG.value)
  try:
    config_validation.validate_config(_CONFIG.value)  # before anything is built or compiled
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if _CONFIG.value.train.get("plot_curves", False):
      from mmrl.viz import run_curves  # pylint: disable=g-import-not-at-top
      picture = run_curves.write_run_curves(_WORKDIR.value)
      if picture is not None:
        print(f"  curves:      {picture}", flush=True)
  except ConfigError as e:
    logging.error("ConfigError: %s", e)
    sys.exit(EXIT_CONFIG_ERROR)
  except loop.NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(EXIT_NONFINITE)
  except checkpoint.CheckpointWriteError as e:
    logging.error("%s", e)
    sys.exit(EXIT_CHECKPOINT_WRITE)
  except loop.Preempted as e:
    logging.warning("%s", e)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
