"""CPU seconds of one training step of each method at the localisation preset's size.

COMMAND: python -m benchmarks.localisation_step_cost --methods=convirt,gloria,lovt,mgca,local_mi,place,mlip,lrclr
EXPECT:  one line per method: compile CPU-s, step CPU-s and wall-s (mean over --steps steps after
         one warm-up step), on real batches of the preset's synthetic set (made under --data once).
The step is compiled once and run on a few fixed batches, so the input pipeline is not timed.
`--budget` sets Budget fields over the preset (e.g. text_cache=false for the uncached step: the
cache needs the loop, so this benchmark always times the uncached step; see
benchmarks/text_cache.py for the cached one).
"""
from __future__ import annotations

import dataclasses
import pathlib
import resource
import time

from absl import app
from absl import flags

_METHODS = flags.DEFINE_list("methods", ["convirt", "gloria", "lovt"], "methods")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_DATA = flags.DEFINE_string("data", "runs/step_cost_data", "where the synthetic set is made")
_BUDGET = flags.DEFINE_list("budget", [], "Budget fields as name=value over the preset's")


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from experiments.comparison import budget as budget_lib  # pylint: disable=g-import-not-at-top
  from experiments.comparison import run as comparison_run  # pylint: disable=g-import-not-at-top
  from experiments.comparison import method_configs  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import distributed, mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  budget = budget_lib.budget_with(
      dataclasses.replace(budget_lib.PRESETS["localisation"], text_cache=False), _BUDGET.value)
  dataset_dir = comparison_run.prepare_synthetic(budget, pathlib.Path(_DATA.value))
  for m in _METHODS.value:
    c = method_configs.method_config(m, budget, seed=0, dataset_dir=dataset_dir)
    mesh = mesh_lib.make_mesh(c.mesh)
    state, shardings = state_lib.create_train_state(c, jax.random.key(0), mesh)
    batches = [distributed.global_batch_from_local(b, mesh) for b in pipeline.make_eval_batches(
        c.data, split="train", batch_size=int(c.train.batch_size), max_examples=64)]
    step = step_lib.make_train_step(c, mesh, shardings)
    t0 = _cpu()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = _cpu() - t0
    state, metrics = compiled(state, batches[0])
    jax.block_until_ready(metrics)
    t0, w0 = _cpu(), time.time()
    for i in range(_STEPS.value):
      state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    n = _STEPS.value
    print(f"{m}: compile_cpu_s={compile_s:.1f} step_cpu_s={(_cpu() - t0) / n:.3f} "
          f"step_wall_s={(time.time() - w0) / n:.3f}", flush=True)


if __name__ == "__main__":
  app.run(main)
