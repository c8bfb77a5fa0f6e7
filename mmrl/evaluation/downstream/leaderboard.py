"""Methods x tasks: every downstream result file gathered into one BenchX-style table and plot.

`find_result_files(paths)`: the `<task>.json` downstream results (format `mmrl_downstream`) in
each path: a result file, a results folder, or a run directory (its `downstream/` or
`results/downstream/`). `gather(files)` -> rows: one per checkpoint variant (run@step, init,
mode) with, per (task, fraction), the task's headline metric (its first) as mean, sample std
and seeds, taken from the files' summaries (`results.summarise`, statistics.describe).
`render_markdown(rows)` and `plot(rows, path)` (grouped bars, std error bars, as
results/comparison_*.png) present them. A (row, column) given by two files is an error naming
both, never a silent pick.
"""
from __future__ import annotations

import json
import os
import pathlib
import textwrap
from typing import Any, Iterable, Sequence

import numpy as np

from mmrl.evaluation.downstream import results as results_lib


def find_result_files(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  out: list[pathlib.Path] = []
  for p in paths:
    p = pathlib.Path(p)
    if p.is_file():
      candidates = [p]
    elif p.is_dir():
      dirs = [d for d in (p, p / "downstream", p / "results" / "downstream") if d.is_dir()]
      candidates = sorted(f for d in dirs for f in d.glob("*.json"))
    else:
      raise FileNotFoundError(f"--runs: {p} is neither a result file nor a folder")
    for f in candidates:
      try:
        doc = json.loads(f.read_text())
      except (OSError, json.JSONDecodeError):
        continue
      if isinstance(doc, dict) and doc.get("format") == results_lib.FORMAT and f not in out:
        out.append(f)
  return out


def gather(files: Sequence[str | os.PathLike]) -> tuple[list[dict], list[tuple[str, str, str]]]:
  """(rows, columns). Row: {'label', 'method', 'init', 'mode', 'cells': {(task, fraction):
  {mean, std, n, seeds, metric}}}; columns: sorted (task, fraction, metric)."""
  rows: dict[str, dict] = {}
  sources: dict[tuple[str, str, str], str] = {}
  columns = set()
  for f in files:
    doc = json.loads(pathlib.Path(f).read_text())
    metric = doc["metrics"][0]
    for key, entry in doc["entries"].items():
      prov = entry["provenance"]
      label = f"{prov['run_name']}@{prov['step']}"
      row_key = f"{label}/{prov['init']}/{entry['mode']}"
      row = rows.setdefault(row_key, {"label": label, "method": prov.get("method", "?"),
                                      "init": prov["init"], "mode": entry["mode"], "cells": {}})
      for fraction, summary in entry.get("summary", {}).items():
        col = (doc["task"], fraction, metric)
        where = (row_key,) + col[:2]
        if where in sources:
          raise ValueError(f"{row_key} on {doc['task']} at {fraction} % is in both "
                           f"{sources[where]} and {f}; pass only one of them")
        sources[where] = str(f)
        cell = summary[metric]
        row["cells"][col] = {"mean": cell.get("mean"), "std": cell.get("std"),
                             "n": cell.get("n"), "seeds": summary["seeds"]}
        columns.add(col)
  cols = sorted(columns, key=lambda c: (c[0], float(c[1])))
  return sorted(rows.values(), key=lambda r: (r["method"], r["label"], r["init"], r["mode"])), cols


def render_markdown(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
  head = "| method | checkpoint | init | mode | " + " | ".join(
      f"{t} {f} % ({m})" for t, f, m in columns) + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    cells = []
    for c in columns:
      cell = r["cells"].get(c)
      cells.append("—" if cell is None else
                   f"{results_lib.format_mean_std(cell)} (n={len(cell['seeds'])})")
    lines.append(f"| {r['method']} | {r['label']} | {r['init']} | {r['mode']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]],
         path: str | os.PathLike) -> pathlib.Path:
  """Grouped bars: one group per (task, fraction), one bar per row, sample-std error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(columns) * max(1, len(rows)) / 2 + 2), 4))
  width = 0.8 / max(1, len(rows))
  x = np.arange(len(columns))
  for i, r in enumerate(rows):
    mean = [np.nan if r["cells"].get(c, {}).get("mean") is None else r["cells"][c]["mean"]
            for c in columns]
    std = [0.0 if r["cells"].get(c, {}).get("std") is None else r["cells"][c]["std"]
           for c in columns]
    ax.bar(x + i * width, mean, width, yerr=std, capsize=2,
           label=f"{r['method']} {r['label']} {r['init']} {r['mode']}")
  names = ["\n".join(textwrap.wrap(t.replace("_", " "), 14)) for t, _, _ in columns]
  ax.set_xticks(x + 0.4 - width / 2, [f"{n}\n{f} % {m}" for n, (_, f, m) in zip(names, columns)],
                fontsize=7)
  ax.set_ylabel("mean ± sample std over seeds")
  ax.set_title("downstream tasks")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


__all__ = ["find_result_files", "gather", "render_markdown", "plot"]
