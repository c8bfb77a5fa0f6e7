"""Pretrains every method on the same synthetic data with the same budget and seeds, evaluates
each (global metrics and localisation) plus a random-initialisation baseline, and writes results/.

COMMAND: python -m experiments.compare --output=runs/compare
SHORT:   python -m experiments.compare --methods=convirt,lovt --seeds=0 --steps=20 \
           --output=/tmp/compare --results=/tmp/compare/results
EXPECT:  about 30 min on an idle 2-core CPU for 8 methods x 3 seeds at the defaults (estimate
         from timed short runs; docs/localisation.md); writes results/comparison.md,
         results/comparison.json, results/comparison_*.png and results/heatmaps/.
Runs already finished under --output are not repeated (delete a run's result.json to redo it).
Everything is in mmrl.evaluation.comparison.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from mmrl.evaluation import comparison

_METHODS = flags.DEFINE_list("methods", list(comparison.ALL_METHODS), "methods to compare")
_SEEDS = flags.DEFINE_integer("seeds", 3, "number of seeds (0, 1, ..., seeds-1)")
_STEPS = flags.DEFINE_integer("steps", comparison.Budget.steps, "training steps per run")
_BATCH = flags.DEFINE_integer("batch_size", comparison.Budget.batch_size, "global batch size")
_IMAGE = flags.DEFINE_integer("image_size", comparison.Budget.image_size, "image size (px)")
_PATIENTS = flags.DEFINE_integer("patients", comparison.Budget.patients, "synthetic patients")
_LR = flags.DEFINE_float("lr", comparison.Budget.lr, "peak learning rate (every method)")
_EVAL = flags.DEFINE_integer("eval_examples", comparison.Budget.eval_examples,
                             "held-out synthetic examples evaluated per run")
_OUTPUT = flags.DEFINE_string("output", "runs/compare", "data and run directories")
_RESULTS = flags.DEFINE_string("results", "results", "where the tables and plots go")
_SHARED = flags.DEFINE_string("shared_data", os.environ.get("MMRL_SHARED_DATA", "../shared/data"),
                              "../shared/data (for NIH ChestX-ray14 boxes); '' = skip NIH")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  budget = comparison.Budget(steps=_STEPS.value, batch_size=_BATCH.value,
                             image_size=_IMAGE.value, patients=_PATIENTS.value, lr=_LR.value,
                             warmup_steps=min(comparison.Budget.warmup_steps, _STEPS.value // 10),
                             eval_examples=_EVAL.value)
  command = "python -m experiments.compare " + " ".join(sys.argv[1:])
  out = comparison.run_comparison(_METHODS.value, list(range(_SEEDS.value)), budget,
                                  output=_OUTPUT.value, results_dir=_RESULTS.value,
                                  shared_data=_SHARED.value, command=command.strip())
  print(f"\nwrote {_RESULTS.value}/comparison.md ({out['meta']['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
  app.run(main)
