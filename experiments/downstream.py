"""Downstream protocols on one task: one command fills results/downstream/<task>.{md,json}.

python -m experiments.downstream --task=nih_detection --checkpoint=runs/demo \
    --data_dir=/data/nih_shards --fractions=1,10,100 --seeds=0,1,2
python -m experiments.downstream --task=covid_lung_segmentation --checkpoint=runs/demo \
    --init=random --data_dir=/data/covid_shards [--finetune] [--set=dense_steps=100]
--checkpoint is a run directory (experiments.pretrain's --workdir or an imported one from
experiments.import_checkpoint); --init=random scores a fresh init of the same architecture.
Tasks, converter commands, split sources and metrics: docs/downstream.md. Resumable: a finished
(fraction, seed) in the JSON is kept and not run again. Thin: mmrl.evaluation.downstream.run.
"""
from __future__ import annotations

import json
import logging

from absl import app
from absl import flags

from mmrl.evaluation.downstream import tasks

_TASK = flags.DEFINE_enum("task", None, sorted(tasks.TASKS), "Downstream task.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory (or its checkpoints/).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted shards of the task's layout.")
_FRACTIONS = flags.DEFINE_list("fractions", ["1", "10", "100"], "Training subset percentages.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (subset, head init, batch order).")
_FINETUNE = flags.DEFINE_bool("finetune", False, "Train the image tower too (else frozen).")
_INIT = flags.DEFINE_enum("init", "checkpoint", ["checkpoint", "random"],
                          "The checkpoint's weights, or a random init of its architecture.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_RESULTS = flags.DEFINE_string("results", "results/downstream", "Folder of <task>.{md,json}.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE of config.eval.<the task's evaluator> "
                                 "(JSON value, else a string), e.g. --set=steps=100.")
_SPLIT_SOURCE = flags.DEFINE_string("split_source", "", "Where the split came from (default: "
                                    "the task's; recorded in the results).")
_BUDGET = flags.DEFINE_string("budget", "", "Free text recorded with the results (e.g. steps).")
flags.mark_flags_as_required(["task", "checkpoint", "data_dir"])


def _overrides(items):
  out = {}
  for item in items:
    if "=" not in item:
      raise app.UsageError(f"--set={item!r}: use KEY=VALUE")
    key, value = item.split("=", 1)
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
    if isinstance(out[key], list):
      out[key] = tuple(out[key])
  return out


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  from mmrl.evaluation.downstream import results  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.downstream import run  # pylint: disable=g-import-not-at-top
  doc = run.run_task(_TASK.value, _CHECKPOINT.value, _DATA_DIR.value,
                     fractions=[float(f) for f in _FRACTIONS.value],
                     seeds=[int(s) for s in _SEEDS.value], finetune=_FINETUNE.value,
                     init=_INIT.value, results_dir=_RESULTS.value, step=_STEP.value,
                     overrides=_overrides(_SET.value), split_source=_SPLIT_SOURCE.value,
                     budget=_BUDGET.value)
  json_path, md_path = results.paths(_RESULTS.value, doc["task"])
  print(results.render_markdown(doc).split("\n## ")[0])
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  app.run(main)
