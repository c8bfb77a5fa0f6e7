"""Evaluation entry point: frozen-encoder evaluators on a pretraining checkpoint.

python -m experiments.evaluate --config=experiments/configs/convirt.py:smoke --checkpoint=runs/smoke
python -m experiments.evaluate --config=experiments/configs/convirt.py \
    --config.data.dataset_dir=/data/shards --checkpoint=runs/convirt \
    --evaluators=linear_probe,zero_shot,retrieval,segmentation --output=runs/convirt/eval.json
python -m experiments.evaluate --config=experiments/configs/demo.py --init=random \
    --config.data.dataset_dir=/data/shards --evaluators=detection --output=runs/random.json
--init=random evaluates a freshly initialised model (seed config.seed) instead of the checkpoint's:
the random-init baseline of the downstream protocols, on the same data, splits and seeds. With
--checkpoint it uses that run's data (and synthetic data set); without, it needs
--config.data.dataset_dir and --output.
Prints a table of the metrics and writes them as JSON (default <run>/eval/step_<N>.json), with the
evaluators' pictures as PNGs next to it. Protocols: docs/evaluation.md.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:arg]).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory or its checkpoints/ folder.")
_EVALUATORS = flags.DEFINE_list("evaluators", None, "Evaluators to run (default: all): "
                                "retrieval, zero_shot, linear_probe, segmentation, detection, "
                                "grounding, localisation.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output path (default <run>/eval/step_<N>.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_INIT = flags.DEFINE_enum(
    "init", "checkpoint", ["checkpoint", "random"],
    "Evaluate the checkpoint's state, or a fresh random init (seed config.seed: the random-init "
    "baseline; without --checkpoint it needs --output and --config.data.dataset_dir).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import runner  # pylint: disable=g-import-not-at-top
  from mmrl.train import run_dir  # pylint: disable=g-import-not-at-top

  if _INIT.value == "random" and not _CHECKPOINT.value:
    if not _OUTPUT.value:
      raise app.UsageError("--init=random without --checkpoint needs --output")
    scalars, images, step = runner.evaluate_random_init(_CONFIG.value, _EVALUATORS.value)
    source = "random_init"
  else:
    if not _CHECKPOINT.value:
      raise app.UsageError("--checkpoint is required (or --init=random with "
                           "--config.data.dataset_dir)")
    scalars, images, step = runner.evaluate_checkpoint(
        _CONFIG.value, _CHECKPOINT.value, _EVALUATORS.value, step=_STEP.value, init=_INIT.value)
    source = str(run_dir.checkpoint_dir(_CHECKPOINT.value))
  output = pathlib.Path(_OUTPUT.value or pathlib.Path(source).parent / "eval" / f"step_{step}.json")
  output.parent.mkdir(parents=True, exist_ok=True)
  doc = {"checkpoint": source, "step": step, "init": _INIT.value,
         "metrics": {k: (None if math.isnan(v) else v) for k, v in sorted(scalars.items())}}
  output.write_text(json.dumps(doc, indent=1) + "\n")
  for tag, img in images.items():
    Image.fromarray(img).save(output.with_name(f"{output.stem}_{tag.replace('/', '_')}.png"))
  width = max((len(k) for k in scalars), default=10)
  print(f"\n{'metric':<{width}}  value\n{'-' * width}  -----")
  for k, v in sorted(scalars.items()):
    print(f"{k:<{width}}  {v:.4f}")
  print(f"\nwrote {output}" + (f" and {len(images)} image(s) next to it" if images else ""))


if __name__ == "__main__":
  app.run(main)
