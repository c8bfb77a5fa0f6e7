"""The method comparison: same data, towers, budget and seeds for every method; then evaluation.

`run_comparison(methods, seeds, budget, output, results_dir)`:
  1. makes the synthetic data set once (`data.synthetic`, shared by every run through
     `data.dataset_dir`) and, when ../shared/data is found, converts the NIH ChestX-ray14 subset
     once (layout nih_cxr14, same image size);
  2. for every method and seed builds `method_configs.method_config` (the method's own tiny
     heads, then one common size: resnet_small image tower, the first 2 layers of the pretrained
     MiniLM text tower, frozen, mean-token pooling, embed_dim 64, projection_hidden 128, the same
     steps / batch / lr / warm-up / seed for everyone), pretrains it with
     `mmrl.loop.train_and_evaluate` in `<output>/runs/<method>/seed_<k>` and evaluates the
     final checkpoint;
  3. evaluates a random-initialisation baseline per seed (ConVIRT's model, no training: random
     image tower and heads, the same frozen pretrained text tower);
  4. writes `<results_dir>/comparison.md` (mean +- std over seeds per metric per method, the
     command, date, machine, jax version, and an analysis written from the numbers;
     experiments/comparison/report.py), `comparison.json` (every metric of every run) and PNG
     plots, plus heat maps of seed 0.
A run whose `result.json` exists is not trained or evaluated again (the comparison resumes);
`jobs > 1` runs the seeds in that many spawned worker processes.

Global metrics come from `mmrl.evaluation.runner.EvalRunner` (retrieval, zero-shot, linear
probe, and the papers' frozen lenses when `budget.lenses`); localisation from
`mmrl.evaluation.evaluators.localisation.LocalisationEvaluator`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import pathlib
import resource
import time
from typing import Any, Callable, Optional, Sequence

from experiments.comparison import method_configs
from experiments.comparison import report
from experiments.comparison.budget import ALL_METHODS, BASELINE, Budget
from mmrl.machine_info import cpu_model

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def prepare_synthetic(budget: Budget, root: pathlib.Path) -> str:
  """The shared synthetic shards folder (generated and converted once under root)."""
  from data_pipeline import synthetic_dataset  # pylint: disable=g-import-not-at-top
  c = method_configs.method_config("convirt", budget, seed=0)
  return str(synthetic_dataset.prepare_synthetic_dataset(c.data.synthetic, root, progress=False))


def prepare_nih(shared_dir: str, root: pathlib.Path, short_side: int, max_items: int = 0) -> str:
  """NIH ChestX-ray14 shards converted once under root ('' when shared_dir is '' or missing)."""
  if not shared_dir or not (pathlib.Path(shared_dir) / "nih_cxr14").is_dir():
    return ""
  from data_pipeline import convert as convert_lib  # pylint: disable=g-import-not-at-top
  out = root / f"nih_cxr14_{short_side}_{max_items or 'all'}"
  if not (out / "dataset_info.json").exists():
    dataset = convert_lib.load_layout("nih_cxr14", shared_dir)
    convert_lib.convert(dataset, out, convert_lib.ConvertOptions(
        short_side=int(short_side), bit_depth=8, max_items=int(max_items), progress=False))
  return str(out)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _global_metrics(config, state, mesh, shardings, budget: Optional[Budget] = None
                    ) -> dict[str, float]:
  """Retrieval, zero-shot and linear probe through the runner (+ the frozen segmentation and
  detection lenses when budget.lenses)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation import runner as runner_lib  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(config.to_dict())
  method_configs.set_in_loop_eval(c, True)
  if budget is not None and budget.lenses:
    method_configs.set_lenses(c, budget)
  names = [n for n in ("retrieval", "zero_shot", "linear_probe")
           if n in c.eval and not isinstance(c.eval[n], bool)]
  names += [n for n in ("segmentation", "detection") if c.eval[n].enabled]
  scalars, _ = runner_lib.EvalRunner(c, mesh, shardings)(state, names)
  return scalars


def evaluate_state(config, state, mesh, shardings, *, nih_dir: str, budget: Budget,
                   heatmap_dir: Optional[pathlib.Path]) -> dict[str, float]:
  """Global + localisation metrics of one state (heat maps written when heatmap_dir is set)."""
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from mmrl.viz import heatmaps  # pylint: disable=g-import-not-at-top
  from mmrl.evaluation.evaluators.localisation import LocalisationEvaluator  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  metrics = dict(_global_metrics(config, state, mesh, shardings, budget))
  t1 = time.time()
  loc = LocalisationEvaluator(
      config, mesh, shardings,
      label_names=pipeline.dataset_info(config.data.dataset_dir)["label_names"],
      nih_dataset_dir=nih_dir, nih_splits=budget.nih_splits,
      num_heatmaps=1 if heatmap_dir is not None else 0)

  def batches():
    return pipeline.make_eval_batches(config.data, split=config.data.eval_split,
                                      batch_size=int(config.eval.batch_size),
                                      max_examples=int(config.eval.max_examples))
  scalars, images = loc(state, batches)
  metrics.update(scalars)
  if heatmap_dir is not None and images:
    heatmaps.write_heatmap_pngs(heatmap_dir, images)
  metrics["time/global_eval_s"] = t1 - t0
  metrics["time/localisation_eval_s"] = time.time() - t1
  return metrics


def _cpu_s() -> float:
  """CPU seconds of this process so far (all threads, user + system): a cost that holds on a
  shared machine, where wall-clock time does not."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_one(method: str, seed: int, budget: Budget, *, dataset_dir: str, nih_dir: str,
            workdir: pathlib.Path, heatmap_dir: Optional[pathlib.Path]) -> dict[str, Any]:
  """Pretrains (unless BASELINE) and evaluates one (method, seed); cached in result.json."""
  done = workdir / "result.json"
  if done.exists():
    return json.loads(done.read_text())
  from mmrl import loop  # pylint: disable=g-import-not-at-top
  from mmrl.train import run_dir  # pylint: disable=g-import-not-at-top
  workdir.mkdir(parents=True, exist_ok=True)
  config = method_configs.method_config("convirt" if method == BASELINE else method, budget,
                                        seed=seed, dataset_dir=dataset_dir)
  t0, c0 = time.time(), _cpu_s()
  train_metrics: dict[str, Any] = {}
  if method != BASELINE:
    train_metrics = loop.train_and_evaluate(config, workdir)
  train_s, train_cpu_s = time.time() - t0, _cpu_s() - c0
  c1 = _cpu_s()
  if method == BASELINE:
    (state, mesh, shardings), step = run_dir.random_init(config), 0
  else:
    state, mesh, shardings, step = run_dir.restore_for_eval(config, workdir)
  metrics = evaluate_state(config, state, mesh, shardings, nih_dir=nih_dir, budget=budget,
                           heatmap_dir=heatmap_dir)
  metrics["time/train_s"] = train_s
  metrics["time/train_cpu_s"] = train_cpu_s
  metrics["time/eval_cpu_s"] = _cpu_s() - c1
  if "loss" in train_metrics:
    metrics["train/final_loss"] = float(train_metrics["loss"])
  result = {"method": method, "seed": seed, "step": int(step), "metrics": metrics}
  done.write_text(json.dumps(result, indent=1, default=float))
  return result


def _run_seed(runs: Sequence[str], seed: int, budget: Budget, dataset_dir: str, nih_dir: str,
              output: str, heat_root: str) -> None:
  """A worker process of run_comparison(jobs > 1): every run of one seed, in order."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # Grain reads absl flags; a spawned worker has not parsed them
    flags.FLAGS.mark_as_parsed()
  for method in runs:
    run_one(method, seed, budget, dataset_dir=dataset_dir, nih_dir=nih_dir,
            workdir=pathlib.Path(output) / "runs" / method / f"seed_{seed}",
            heatmap_dir=pathlib.Path(heat_root) / "heatmaps" / method if heat_root else None)


def run_comparison(methods: Sequence[str], seeds: Sequence[int], budget: Budget, *,
                   output: str | pathlib.Path, results_dir: str | pathlib.Path,
                   shared_data: str = "", command: str = "", data_root: str = "",
                   progress: Callable[[str], None] = print, only_existing: bool = False,
                   jobs: int = 1) -> dict:
  """Runs everything (module docstring); returns {'summary', 'results', 'meta'}.

  only_existing=True trains and evaluates nothing: it summarises the runs under `output` that
  have a result.json (e.g. runs made by several processes side by side) and lists the missing
  (method, seed) pairs in the table's header. jobs > 1 runs the seeds in that many worker
  processes side by side (the same run_one per (method, seed); results identical to jobs=1)."""
  import jax  # pylint: disable=g-import-not-at-top
  unknown = [m for m in methods if m not in ALL_METHODS]
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(ALL_METHODS)}")
  output, results_dir = pathlib.Path(output).absolute(), pathlib.Path(results_dir).absolute()
  results_dir.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  start = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
  load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  root = pathlib.Path(data_root) if data_root else output / "data"
  progress(f"data: synthetic ({budget.patients} patients) under {root}")
  dataset_dir = prepare_synthetic(budget, root)
  nih_dir = prepare_nih(shared_data, root, budget.image_size, budget.nih_items)
  results, missing = [], []
  runs = list(methods) + [BASELINE]
  if jobs > 1 and not only_existing:
    # One worker process per seed (spawned: a forked JAX runtime is not safe). Each worker
    # trains and evaluates its seed's runs in order and caches them in result.json, so the
    # loop below only reads them back.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(int(jobs), mp_context=ctx) as pool:
      futures = {pool.submit(_run_seed, runs, int(seed), budget, dataset_dir, nih_dir,
                             str(output), str(results_dir) if seed == seeds[0] else ""): seed
                 for seed in seeds}
      for f in concurrent.futures.as_completed(futures):
        f.result()
        progress(f"seed {futures[f]}: done ({time.time() - t_start:.0f}s since start)")
  for seed in seeds:
    for method in runs:
      t0 = time.time()
      if only_existing and not (output / "runs" / method / f"seed_{seed}" /
                                "result.json").exists():
        missing.append(f"{method} seed {seed}")
        continue
      heat = results_dir / "heatmaps" / method if seed == seeds[0] else None
      r = run_one(method, int(seed), budget, dataset_dir=dataset_dir, nih_dir=nih_dir,
                  workdir=output / "runs" / method / f"seed_{seed}", heatmap_dir=heat)
      results.append(r)
      progress(f"{method} seed {seed}: {time.time() - t0:.0f}s; " + ", ".join(
          f"{k} {v:.3f}" for k, v in r["metrics"].items()
          if k in ("loc/synthetic/pointing", "loc/nih_templated/pointing", "retrieval/i2t_R@1")))
  summary = report.summarise(results)
  meta = {"command": command, "start": start,
          "end": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
          "wall_s": time.time() - t_start, "nproc": os.cpu_count(), "cpu": cpu_model(),
          "load_start": load_start,
          "load_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()), "jax": jax.__version__,
          "budget": dataclasses.asdict(budget), "seeds": list(seeds), "methods": list(methods),
          "budget_obj": budget, "missing": missing,
          "nih": (f"converted from {shared_data} (splits {'+'.join(budget.nih_splits)})"
                  if nih_dir else
                  "not found (set --shared_data or MMRL_SHARED_DATA); NIH rows are missing")}
  meta["plots"] = [str(p.relative_to(results_dir))
                   for p in report.plots(summary, list(methods) + [BASELINE], results_dir)]
  (results_dir / "comparison.md").write_text(report.markdown(summary, methods, meta))
  meta.pop("budget_obj")
  (results_dir / "comparison.json").write_text(json.dumps(
      {"meta": meta, "summary": summary, "runs": results}, indent=1, default=float))
  return {"summary": summary, "results": results, "meta": meta}
