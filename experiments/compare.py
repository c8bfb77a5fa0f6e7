"""Pretrains every method on the same synthetic data with the same budget and seeds, evaluates
each (global metrics and localisation) plus a random-initialisation baseline, and writes results/.

COMMAND: python -m experiments.compare --output=runs/compare
LOCALISATION: python -m experiments.compare --preset=localisation --output=runs/compare_loc \
           --results=results/localisation --jobs=3   (calibrated synthetic set, 128 px,
           stride-16 tower, 6 frozen MiniLM layers with cached features, 2,000 steps, every
           method x 3 seeds + random init, scored also by frozen segmentation and detection;
           ConVIRT and LoVT x 3 seeds took about 75 min on the shared 2-core CPU; one run costs
           about 0.1-0.36 CPU-s per step (MLIP 1.6, uncached) plus ~220 CPU-s of evaluation;
           docs/localisation.md, round 3)
SHORT:   python -m experiments.compare --methods=convirt,lovt --seeds=1 --steps=20 \
           --output=/tmp/compare --results=/tmp/compare/results
EXPECT:  about 30-35 min on an idle 2-core CPU for 8 methods x 3 seeds at the defaults (80 steps;
         extrapolated from the CPU seconds of timed short runs, docs/localisation.md); writes results/comparison.md,
         results/comparison.json, results/comparison_*.png and results/heatmaps/.
Runs already finished under --output are not repeated (delete a run's result.json to redo it).
Everything is in experiments/comparison/ (budget, method_configs, run, report).
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from experiments.comparison import budget as budget_lib
from experiments.comparison import run as comparison_run
from experiments.comparison import report

_PRESET = flags.DEFINE_enum("preset", "default", sorted(budget_lib.PRESETS),
                            "named budget (and method list); flags given explicitly override it")
_METHODS = flags.DEFINE_list("methods", list(budget_lib.ALL_METHODS), "methods to compare")
_VARIANT = flags.DEFINE_enum("variant", None, ["realistic", "calibrated"],
                             "synthetic finding sizes (default: the preset's)")
_SEEDS = flags.DEFINE_integer("seeds", 3, "number of seeds (0, 1, ..., seeds-1)")
_STEPS = flags.DEFINE_integer("steps", budget_lib.Budget.steps, "training steps per run")
_BATCH = flags.DEFINE_integer("batch_size", budget_lib.Budget.batch_size, "global batch size")
_IMAGE = flags.DEFINE_integer("image_size", budget_lib.Budget.image_size, "image size (px)")
_PATIENTS = flags.DEFINE_integer("patients", budget_lib.Budget.patients, "synthetic patients")
_LR = flags.DEFINE_float("lr", budget_lib.Budget.lr, "peak learning rate (every method)")
_EVAL = flags.DEFINE_integer("eval_examples", budget_lib.Budget.eval_examples,
                             "held-out synthetic examples evaluated per run")
_OUTPUT = flags.DEFINE_string("output", "runs/compare", "data and run directories")
_RESULTS = flags.DEFINE_string("results", "results", "where the tables and plots go")
_ONLY_EXISTING = flags.DEFINE_bool(
    "only_existing", False, "train nothing: summarise the finished runs under --output and "
    "list the missing ones")
_REANALYSE = flags.DEFINE_bool(
    "reanalyse", False, "train nothing: rewrite --results/comparison.md from the per-seed runs "
    "stored in --results/comparison.json with the current statistics")
_NOTE = flags.DEFINE_string("note", "", "with --reanalyse: a note for the table's header")
_BUDGET = flags.DEFINE_list(
    "budget", [], "other Budget fields as name=value (e.g. text_lr_mult=1,gloria_exact=false) "
    "over the preset's: the ablations of docs/localisation.md")
_JOBS = flags.DEFINE_integer("jobs", 1, "worker processes, one seed each, side by side (a "
                             "single run leaves a 2-core CPU partly idle: input pipeline, "
                             "evaluation)")
_SHARED = flags.DEFINE_string("shared_data", os.environ.get("MMRL_SHARED_DATA", "../shared/data"),
                              "../shared/data (for NIH ChestX-ray14 boxes); '' = skip NIH")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import dataclasses  # pylint: disable=g-import-not-at-top
  command = "python -m experiments.compare " + " ".join(sys.argv[1:])
  if _REANALYSE.value:
    report.reanalyse(_RESULTS.value, command=command.strip(), note=_NOTE.value)
    print(f"\nrewrote {_RESULTS.value}/comparison.md from {_RESULTS.value}/comparison.json")
    return
  preset = budget_lib.PRESETS[_PRESET.value]
  given = {name for name in ("steps", "batch_size", "image_size", "patients", "lr",
                             "eval_examples", "variant", "methods")
           if flags.FLAGS[name].present}
  pick = lambda name, flag: flag.value if name in given else getattr(preset, name)
  steps = pick("steps", _STEPS)
  budget = dataclasses.replace(
      preset, steps=steps, batch_size=pick("batch_size", _BATCH),
      image_size=pick("image_size", _IMAGE), patients=pick("patients", _PATIENTS),
      lr=pick("lr", _LR), eval_examples=pick("eval_examples", _EVAL),
      variant=pick("variant", _VARIANT),
      warmup_steps=min(preset.warmup_steps, max(steps // 10, 1)))
  budget = budget_lib.budget_with(budget, _BUDGET.value)
  methods = (_METHODS.value if "methods" in given
             else list(budget_lib.PRESET_METHODS[_PRESET.value]))
  out = comparison_run.run_comparison(methods, list(range(_SEEDS.value)), budget,
                                  output=_OUTPUT.value, results_dir=_RESULTS.value,
                                  shared_data=_SHARED.value, command=command.strip(),
                                  only_existing=_ONLY_EXISTING.value, jobs=_JOBS.value)
  print(f"\nwrote {_RESULTS.value}/comparison.md ({out['meta']['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
  app.run(main)
