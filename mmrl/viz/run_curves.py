"""The learning-curve picture of one run directory: `<workdir>/curves.png` from its
`metrics.jsonl` (training loss against step, and each held-out metric that was logged).

    write_run_curves(workdir, metrics=("loss", "retrieval/i2t_R@1")) -> path or None

A resumed run logs some steps twice; the later row wins (as `JsonlWriter` documents).
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Optional, Sequence

DEFAULT_METRICS = ("loss", "retrieval/i2t_R@1", "retrieval/i2t_R@10", "zero_shot/mean_auc")


def read_metrics(path: pathlib.Path) -> dict[int, dict]:
  """step -> the last row logged for it (non-finite values are null in the file)."""
  rows: dict[int, dict] = {}
  for line in path.read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      rows[int(row["step"])] = {**rows.get(int(row["step"]), {}), **row}
  return rows


def series(rows: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
  xs, ys = [], []
  for step in sorted(rows):
    v = rows[step].get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
      xs.append(step)
      ys.append(float(v))
  return xs, ys


def write_run_curves(workdir: str | pathlib.Path,
                     metrics: Sequence[str] = DEFAULT_METRICS) -> Optional[pathlib.Path]:
  """Writes `<workdir>/curves.png` with one panel per metric that the run logged; returns its
  path, or None when metrics.jsonl is missing or holds none of `metrics`."""
  workdir = pathlib.Path(workdir)
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return None
  rows = read_metrics(path)
  panels = [(k, *series(rows, k)) for k in metrics]
  panels = [p for p in panels if p[1]]
  if not panels:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.9), squeeze=False)
  for ax, (key, xs, ys) in zip(axes[0], panels):
    ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.suptitle(workdir.name, fontsize=9)
  fig.tight_layout()
  out = workdir / "curves.png"
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
