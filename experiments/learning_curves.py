"""Learning curves of the localisation benchmark: one run per method trained to --steps with a
checkpoint kept at every --points step, each evaluated like a comparison run (global metrics,
each method's own maps, the papers' frozen lenses when enabled), then one plot.

COMMAND: python -m experiments.learning_curves --methods=convirt,gloria,lovt \
           --points=500,1000,2000,3000,4000,6000 --steps=6000 --output=runs/curves \
           --results=results/localisation --budget=text_layers=6,freeze_text=true
EXPECT:  about 0.1-0.2 CPU-s per training step per method on the 2-core CPU plus about a minute
         of evaluation per point; writes <results>/curves.json and <results>/curves.png.
One learning-rate schedule (warm-up + cosine to --steps) per run: the value at an intermediate
point is that of a run still at a higher learning rate, not of a run trained to that budget.
Resumable: training resumes from the last checkpoint, a point whose curve_<step>.json exists is
not evaluated again; --follow evaluates the points of runs another process is
training as their checkpoints appear. --jobs runs the methods in that many processes side by side.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time

from absl import app
from absl import flags

from experiments.comparison import budget as budget_lib
from experiments.comparison import curves as curves_lib
from experiments.comparison import run as comparison_run

_METHODS = flags.DEFINE_list("methods", ["convirt", "gloria", "lovt"], "methods")
_POINTS = flags.DEFINE_list("points", ["500", "1000", "2000", "3000", "4000", "6000"],
                            "steps at which the run is evaluated")
_STEPS = flags.DEFINE_integer("steps", 6000, "training steps (the schedule's length)")
_SEED = flags.DEFINE_integer("seed", 0, "seed")
_PRESET = flags.DEFINE_enum("preset", "localisation", sorted(budget_lib.PRESETS), "budget")
_BUDGET = flags.DEFINE_list("budget", [], "Budget fields as name=value over the preset's")
_OUTPUT = flags.DEFINE_string("output", "runs/curves", "data and run directories")
_RESULTS = flags.DEFINE_string("results", "results/localisation", "where curves.* go")
_JOBS = flags.DEFINE_integer("jobs", 1, "methods trained side by side")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "train nothing; plot what exists")
_FOLLOW = flags.DEFINE_bool("follow", False, "train nothing: evaluate each point as soon as its "
                            "checkpoint exists (runs trained by another process), until all are")
_SHARED = flags.DEFINE_string("shared_data", os.environ.get("MMRL_SHARED_DATA", "../shared/data"),
                              "../shared/data (NIH boxes); '' = skip NIH")

CURVE_METRICS = ("train/loss", "retrieval/i2t_R@1", "loc/synthetic/pointing",
                 "loc/synthetic_templated/pointing", "loc/nih_templated/pointing")


def _budget() -> budget_lib.Budget:
  b = dataclasses.replace(budget_lib.PRESETS[_PRESET.value], steps=int(_STEPS.value))
  return budget_lib.budget_with(b, _BUDGET.value)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  points = sorted(int(p) for p in _POINTS.value)
  budget = _budget()
  out = pathlib.Path(_OUTPUT.value)
  if _FOLLOW.value:
    dataset_dir = comparison_run.prepare_synthetic(budget, out / "data")
    nih_dir = comparison_run.prepare_nih(_SHARED.value, out / "data", budget.image_size,
                                     budget.nih_items)
    while True:
      done = [len(curves_lib.evaluate_points(m, int(_SEED.value), budget, points, dataset_dir,
                                             nih_dir, str(out), available_only=True))
              for m in _METHODS.value]
      if all(n == len(points) for n in done):
        break
      time.sleep(30)
  elif not _REPORT_ONLY.value:
    dataset_dir = comparison_run.prepare_synthetic(budget, out / "data")
    nih_dir = comparison_run.prepare_nih(_SHARED.value, out / "data", budget.image_size,
                                     budget.nih_items)
    args = [(m, int(_SEED.value), budget, points, dataset_dir, nih_dir, str(out))
            for m in _METHODS.value]
    if _JOBS.value > 1:
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(int(_JOBS.value), mp_context=ctx) as pool:
        for f in [pool.submit(curves_lib.curve_run, *a) for a in args]:
          f.result()
    else:
      for a in args:
        curves_lib.curve_run(*a)
  command = "python -m experiments.learning_curves " + " ".join(sys.argv[1:])
  curves = curves_lib.collect_curves(out, _METHODS.value, int(_SEED.value))
  written = curves_lib.write_curves(curves, pathlib.Path(_RESULTS.value), CURVE_METRICS,
                                    meta={"command": command.strip(),
                                          "budget": dataclasses.asdict(budget)})
  print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
  app.run(_main)
