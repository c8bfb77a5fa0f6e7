"""Learning curves: one run per method with checkpoints kept at chosen steps, each evaluated
like a comparison run, then `curves.json` + `curves.png` (metric against step, one line each).

It trains (mmrl.loop), so it sits beside the comparison, above the library.
`curve_run(method, seed, budget, points, dataset_dir, nih_dir, output)` trains
`<output>/runs/<method>/seed_<k>` to `budget.steps` (resuming), keeping the checkpoint of every
point, and writes `curve_<step>.json` per point (skipped when present: resumable).
The training loss of a point is the mean of the logged losses in (previous point, point].
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.comparison import budget as budget_lib
from experiments.comparison import method_configs
from experiments.comparison import run as comparison_run


def run_dir(output: str | pathlib.Path, method: str, seed: int) -> pathlib.Path:
  return pathlib.Path(output) / "runs" / method / f"seed_{seed}"


def _logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  rows: dict[int, float] = {}
  path = workdir / "metrics.jsonl"
  if path.exists():
    for line in path.read_text().splitlines():
      row = json.loads(line)
      if row.get("loss") is not None:
        rows[int(row["step"])] = float(row["loss"])  # a resumed run's later row wins
  return rows


def curve_config(method: str, seed: int, budget: budget_lib.Budget, points: Sequence[int],
                 dataset_dir: str):
  """`method`'s comparison config with a checkpoint kept at every point."""
  points = sorted(int(p) for p in points)
  if not points or points[-1] > budget.steps:
    raise ValueError(f"points {points} must be non-empty and <= budget.steps={budget.steps}")
  config = method_configs.method_config(method, budget, seed=seed, dataset_dir=dataset_dir)
  step_gcd = int(np.gcd.reduce(np.asarray(points + [budget.steps])))
  config.train.checkpoint_every = step_gcd
  config.train.keep_every = step_gcd
  config.train.keep_last = 1
  config.train.log_every = max(1, min(100, step_gcd))
  return config


def curve_run(method: str, seed: int, budget: budget_lib.Budget, points: Sequence[int],
              dataset_dir: str, nih_dir: str, output: str) -> list[dict[str, Any]]:
  """Trains (resuming) and evaluates `method` at every step of `points` (module docstring)."""
  from mmrl import loop  # pylint: disable=g-import-not-at-top
  workdir = run_dir(output, method, seed)
  workdir.mkdir(parents=True, exist_ok=True)
  if any(not (workdir / f"curve_{int(p)}.json").exists() for p in points):
    loop.train_and_evaluate(curve_config(method, seed, budget, points, dataset_dir), workdir)
  return evaluate_points(method, seed, budget, points, dataset_dir, nih_dir, output)


def evaluate_points(method: str, seed: int, budget: budget_lib.Budget, points: Sequence[int],
                    dataset_dir: str, nih_dir: str, output: str, *,
                    available_only: bool = False) -> list[dict[str, Any]]:
  """Evaluates the run's checkpoint at each point (skipping points already evaluated; with
  `available_only`, also those not yet saved: a run still training can be followed)."""
  from mmrl.train import run_dir as run_dir_lib  # pylint: disable=g-import-not-at-top
  points = sorted(int(p) for p in points)
  workdir = run_dir(output, method, seed)
  config = curve_config(method, seed, budget, points, dataset_dir)
  losses = _logged_losses(workdir)
  out = []
  previous = 0
  for p in points:
    path = workdir / f"curve_{p}.json"
    if path.exists():
      out.append(json.loads(path.read_text()))
      previous = p
      continue
    if available_only and p not in run_dir_lib.saved_steps(workdir):
      break
    state, mesh, shardings, _ = run_dir_lib.restore_for_eval(config, workdir, step=p)
    metrics = comparison_run.evaluate_state(config, state, mesh, shardings, nih_dir=nih_dir,
                                            budget=budget, heatmap_dir=None)
    window = [v for s, v in losses.items() if previous < s <= p]
    metrics["train/loss"] = float(np.mean(window)) if window else math.nan
    row = {"method": method, "seed": seed, "step": p, "metrics": metrics}
    path.write_text(json.dumps(row, indent=1, default=float))
    out.append(row)
    previous = p
  return out


def collect_curves(output: str | pathlib.Path, methods: Sequence[str], seed: int
                   ) -> dict[str, list[dict[str, Any]]]:
  """method -> its evaluated points (by step) found under `output`."""
  curves = {}
  for m in methods:
    workdir = run_dir(output, m, seed)
    rows = sorted((json.loads(p.read_text()) for p in workdir.glob("curve_*.json")),
                  key=lambda r: r["step"])
    losses, previous = _logged_losses(workdir), 0
    for r in rows:  # from the whole log (a point evaluated while its run trained may lack it)
      window = [v for s, v in losses.items() if previous < s <= r["step"]]
      if window:
        r["metrics"]["train/loss"] = float(np.mean(window))
      previous = r["step"]
    curves[m] = rows
  return curves


def write_curves(curves: Mapping[str, list[dict[str, Any]]], results_dir: pathlib.Path,
                 metrics: Sequence[str], *, meta: Mapping[str, Any]) -> list[pathlib.Path]:
  """`curves.json` (every metric at every point) and `curves.png` (one panel per metric)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  results_dir.mkdir(parents=True, exist_ok=True)
  js = results_dir / "curves.json"
  js.write_text(json.dumps({"meta": dict(meta), "curves": curves}, indent=1, default=float))
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False)
  for ax, key in zip(axes[0], metrics):
    for m, rows in curves.items():
      xs = [r["step"] for r in rows if key in r["metrics"]]
      ys = [r["metrics"][key] for r in rows if key in r["metrics"]]
      if xs:
        ax.plot(xs, ys, marker="o", label=m)
    ax.set_title(key, fontsize=8)
    ax.set_xlabel("step")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  png = results_dir / "curves.png"
  fig.savefig(png, dpi=110)
  plt.close(fig)
  return [js, png]
