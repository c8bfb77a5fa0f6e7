"""Scores one checkpoint on one downstream task, one (fraction, seed) at a time, resumably.

`run_task(task, checkpoint, data_dir, ...)`:
1. The checkpoint's config (its run directory's config.json; an imported run works the same),
   every periodic evaluator switched off, the data set, splits and `config.eval.<block>` set for
   the task (`tasks.Task.overrides`, then the caller's `overrides`), every split read whole.
2. The state: the checkpoint's (latest step unless `step`), or a fresh random init of the same
   architecture (`init='random'`, seed config.seed: the random-init baseline).
3. The training subsets: `data_pipeline.subsets.ensure_subsets` next to the shards (written when
   missing); the evaluators' `subset_fn` maps their ids to train rows.
4. For each (fraction, seed) not yet in `<results>/<task>.json`: the task's evaluator (the same
   class experiments/evaluate.py runs) with that one fraction and seed (config.seed = seed: the
   head init, batch order and anchors), features shared between runs (`EvalRunner.run_one`);
   its metrics saved at once, so an interrupted call resumes where it stopped.
Returns the task's result document (`results`).
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
import shlex
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from data_pipeline import subsets as subsets_lib
from mmrl.evaluation.downstream import provenance as prov_lib
from mmrl.evaluation.downstream import results as results_lib
from mmrl.evaluation.downstream import tasks as tasks_lib
from mmrl.evaluation.evaluators.protocol import fraction_tag

log = logging.getLogger(__name__)

ALL_ROWS = 1 << 30  # max_examples that reads a whole split


def task_config(base: Any, task: tasks_lib.Task, data_dir: str, *, finetune: bool,
                overrides: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """The checkpoint's config set up for `task` (module docstring, step 1)."""
  cfg = ml_collections.ConfigDict(json.loads(base.to_json_best_effort()))
  for name in list(cfg.eval.keys()):
    if isinstance(cfg.eval[name], ml_collections.ConfigDict) and "enabled" in cfg.eval[name]:
      cfg.eval[name].enabled = False
  cfg.data.dataset_dir = str(data_dir)
  cfg.data.train_split = task.train_split
  cfg.data.eval_split = task.test_split
  cfg.eval.max_examples = ALL_ROWS
  block = cfg.eval[task.config_block]
  from mmrl.config import schema as base_lib  # pylint: disable=g-import-not-at-top
  for key, value in base_lib.base_config().eval[task.config_block].items():
    if key not in block:  # a run made before the key existed: the schema's default
      block[key] = value
  for key in ("max_train", "max_test", "max_examples"):
    if key in block:
      block[key] = 0
  for key in ("train_split", "test_split", "split"):
    if key in block:
      block[key] = ""
  if task.evaluator == "detection":
    block.mode = "finetune" if finetune else "frozen"
  elif task.evaluator == "segmentation":
    block.finetune = bool(finetune)
  elif task.evaluator == "classification":
    block.finetune = bool(finetune)
  elif finetune:
    raise ValueError(f"task {task.name} ({task.evaluator}) trains no head: --finetune does not "
                     "apply")
  for key, value in {**dict(task.overrides), **dict(overrides or {})}.items():
    if key not in block:
      raise ValueError(f"config.eval.{task.config_block} has no key {key!r} (task {task.name}); "
                       f"known: {', '.join(sorted(block.keys()))}")
    block[key] = value
  block.enabled = True
  return cfg


def unit_config(cfg: ml_collections.ConfigDict, task: tasks_lib.Task, fraction: float,
                seed: int) -> ml_collections.ConfigDict:
  """`cfg` for one run: the one fraction (in (0, 1]) and seed."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.seed = int(seed)
  block = out.eval[task.config_block]
  if "fractions" in block:
    block.fractions = (float(fraction),)
  for key in ("seeds", "num_seeds", "finetune_seeds"):
    if key in block:
      block[key] = 1
  return out


def metric_prefix(task: tasks_lib.Task, cfg: Any, evaluator: Any, fraction: float) -> str:
  """The key prefix of the evaluator's numbers for one fraction."""
  block = cfg.eval[task.config_block]
  tag = fraction_tag(fraction)
  if task.evaluator == "detection":
    return f"detection/{block.mode}/{tag}"
  if task.evaluator == "segmentation":
    dense = evaluator.head not in ("linear", "mlp")
    return f"segmentation/{evaluator.head}{'_finetune' if dense and block.finetune else ''}/{tag}"
  if task.evaluator == "classification":
    return f"linear_probe/finetune/{tag}" if block.finetune else f"linear_probe/{tag}"
  if task.evaluator == "zero_shot":
    return "zero_shot"
  return f"grounding/{block.get('source', 'synthetic')}"


def make_evaluator(task: tasks_lib.Task, cfg: Any, label_names: Sequence[str], mesh, shardings):
  """(EvalRunner name, evaluator) of the task's kind, built with `cfg`."""
  if task.evaluator == "detection":
    from mmrl.evaluation.evaluators import detection  # pylint: disable=g-import-not-at-top
    return "detection", detection.DetectionEvaluator(cfg, label_names)
  if task.evaluator == "segmentation":
    from mmrl.evaluation.evaluators import segmentation  # pylint: disable=g-import-not-at-top
    return "segmentation", segmentation.SegmentationEvaluator(cfg, label_names)
  if task.evaluator == "classification":
    from mmrl.evaluation.evaluators import linear_probe  # pylint: disable=g-import-not-at-top
    return "linear_probe", linear_probe.LinearProbeEvaluator(cfg, label_names)
  if task.evaluator == "zero_shot":
    from mmrl.evaluation.evaluators import zero_shot  # pylint: disable=g-import-not-at-top
    return "zero_shot", zero_shot.ZeroShotEvaluator(cfg, label_names)
  from mmrl.evaluation.evaluators import grounding  # pylint: disable=g-import-not-at-top
  return "grounding", grounding.GroundingEvaluator(cfg, mesh, shardings, label_names=label_names)


def subset_rows_fn(doc: Mapping[str, Any], split_ids: Sequence[str]
                   ) -> Callable[[float, int, int], np.ndarray]:
  """The evaluators' `subset_fn`: (fraction in (0, 1], seed, n train rows) -> sorted rows.

  Rows are positions in the split's record order (`split_ids`), which is the order the
  evaluators read; a split read short (bad records skipped) breaks that and is refused."""
  position = {i: r for r, i in enumerate(split_ids)}

  def fn(fraction: float, seed: int, n: int) -> np.ndarray:
    if n != len(split_ids):
      raise ValueError(f"the evaluator read {n} training examples but the split has "
                       f"{len(split_ids)} records (bad records skipped?); the subsets file names "
                       "examples by position in the split: fix or re-convert the shards")
    ids = subsets_lib.subset_ids(doc, round(100 * float(fraction), 6), seed)
    missing = [i for i in ids if i not in position]
    if missing:
      raise ValueError(f"subset ids {missing[:3]} are not in the split; the subsets file is "
                       "stale: delete it to draw new subsets")
    return np.sort(np.asarray([position[i] for i in ids], np.int64))
  return fn


def run_task(task: tasks_lib.Task | str, checkpoint: str, data_dir: str, *,
             fractions: Sequence[float] = (1, 10, 100), seeds: Sequence[int] = (0, 1, 2),
             finetune: bool = False, init: str = "checkpoint",
             results_dir: str = "results/downstream",
             step: Optional[int] = None, overrides: Optional[Mapping[str, Any]] = None,
             split_source: str = "", budget: str = "", command: Optional[str] = None,
             progress: bool = True) -> dict:
  """Scores `checkpoint` on `task` (module docstring). Fractions are percentages."""
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import runner as runner_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import run_dir  # pylint: disable=g-import-not-at-top
  task = tasks_lib.get_task(task) if isinstance(task, str) else task
  data_dir = str(pathlib.Path(data_dir).expanduser().absolute())
  info = pipeline.dataset_info(data_dir)
  if info.get("converter", {}).get("layout") not in (None, task.layout):
    log.warning("task %s expects layout %s; %s was converted from layout %s", task.name,
                task.layout, data_dir, info["converter"]["layout"])
  cfg = task_config(run_dir.read_config(str(checkpoint)), task, data_dir, finetune=finetune,
                    overrides=overrides)
  fractions = [float(f) for f in fractions] if task.trains else [100.0]
  seeds = [int(s) for s in seeds] if task.trains else [int(seeds[0])]
  mode = "finetune" if finetune else "frozen"

  # Results so far: decide what is left before paying for a restore.
  doc = results_lib.load(results_dir, task.name) or results_lib.new_document(task)
  from mmrl.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top
  ckpt_step = step
  if ckpt_step is None:
    ckpt_step = run_dir.latest_step(checkpoint)
  prov = prov_lib.checkpoint_provenance(checkpoint, ckpt_step, init=init)
  key = results_lib.entry_key(prov, mode)
  entry = doc["entries"].setdefault(key, {"provenance": prov, "mode": mode, "runs": {},
                                          "metrics": list(task.metrics), "commands": []})
  todo = [(f, s) for f in fractions for s in seeds if not results_lib.is_done(entry, f, s)]
  if not todo:
    log.info("%s / %s: every (fraction, seed) is done; nothing to run", task.name, key)
    return doc
  command = command if command is not None else " ".join(
      ["python -m experiments.downstream"] + [shlex.quote(a) for a in sys.argv[1:]])
  if command and command not in entry["commands"]:
    entry["commands"].append(command)
  settings = {k: v for k, v in {**dict(task.overrides), **dict(overrides or {})}.items()}
  if entry.get("overrides", settings) != settings:
    log.warning("%s: earlier runs of this entry used config.eval.%s overrides %s, these use %s; "
                "each run records its own", key, task.config_block, entry["overrides"], settings)
  entry.update(data_dir=data_dir, train_split=task.train_split, test_split=task.test_split,
               split_source=split_source or task.split_source, machine=prov_lib.machine(),
               updated=results_lib.now(), budget=budget or entry.get("budget", ""),
               overrides=settings)
  subset_fn = None
  if task.trains:
    sdoc = subsets_lib.ensure_subsets(data_dir, fractions, seeds, split=task.train_split)
    entry["subsets_file"] = str(subsets_lib.subsets_path(data_dir, task.train_split))
    counts = entry.setdefault("subset_counts", {})
    for f in fractions:
      counts.setdefault(f"{f:g}", {}).update(
          {str(s): sdoc["subsets"][str(s)][f"{f:g}"]["count"] for s in seeds})
    split_ids, _ = subsets_lib.read_split_examples(data_dir, task.train_split)
    subset_fn = subset_rows_fn(sdoc, split_ids)
  results_lib.save(results_dir, doc)

  state, mesh, shardings, _ = features_lib.restore_or_init(cfg, checkpoint, step=ckpt_step,
                                                           init=init)
  runner = runner_lib.EvalRunner(cfg, mesh, shardings)
  label_names = runner.label_names
  bar = _progress(len(todo), f"{task.name} {mode} {init}", progress)
  try:
    for fraction, seed in todo:
      ucfg = unit_config(cfg, task, fraction / 100, seed)
      name, evaluator = make_evaluator(task, ucfg, label_names, mesh, shardings)
      if subset_fn is not None:
        evaluator.subset_fn = subset_fn
      t0 = time.time()
      scalars, _ = runner.run_one(name, evaluator, state)
      prefix = metric_prefix(task, ucfg, evaluator, fraction / 100)
      metrics = {m: _num(scalars.get(f"{prefix}/{m}")) for m in task.metrics}
      run = {"metrics": metrics, "num_train": _num(scalars.get(f"{prefix}/num_train")),
             "seconds": round(time.time() - t0, 2), "date": results_lib.now(),
             "overrides": settings,
             "all": {k: _num(v) for k, v in sorted(scalars.items()) if k.startswith(prefix)}}
      results_lib.record_run(entry, fraction, seed, run)
      entry["updated"] = results_lib.now()
      results_lib.save(results_dir, doc)
      bar.update(1, f"{fraction:g}% seed {seed}: "
                 + ", ".join(f"{m} {v:.3f}" for m, v in metrics.items() if v is not None))
  finally:
    bar.close()
    runner.clear()
  return doc


def _num(v: Any) -> Optional[float]:
  if v is None:
    return None
  v = float(v)
  return None if math.isnan(v) else v


class _progress:
  """tqdm when installed and asked for, else one plain line per finished run."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self._bar = None
    self.total, self.desc, self.done, self.enabled = total, desc, 0, enabled
    if enabled:
      try:
        import tqdm  # pylint: disable=g-import-not-at-top
        self._bar = tqdm.tqdm(total=total, desc=desc, unit="run")
      except ImportError:
        pass

  def update(self, n: int, text: str) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.set_postfix_str(text)
      self._bar.update(n)
    elif self.enabled:
      print(f"{self.desc}: {self.done}/{self.total} runs ({text})", flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


__all__ = ["run_task", "task_config", "unit_config", "metric_prefix", "make_evaluator",
           "subset_rows_fn"]
