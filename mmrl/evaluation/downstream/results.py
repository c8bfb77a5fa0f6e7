"""The downstream result file of one task (`<results>/<task>.json`) and its markdown table.

One JSON per task holds every checkpoint variant scored on it ("entries", keyed by
`entry_key`: run name, step, init, mode), each with its provenance, the commands that filled it,
the machine, and the runs: runs[<fraction %>][<seed>] = {metrics, num_train, seconds, date}.
A (fraction, seed) present there is finished: the runner does not run it again (resume).
`summarise` turns the runs into mean ± sample std over seeds per fraction and metric
(`mmrl.evaluation.metrics.statistics.describe`: ddof 1, NaN dropped, the t-interval), with the seeds;
`render_markdown` writes the table next to the JSON.

- `load`, `save` (atomic; also writes the .md), `entry_key`, `is_done`, `record_run`,
  `summarise`, `render_markdown`, `format_mean_std`.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

from mmrl.evaluation.metrics import statistics

FORMAT = "mmrl_downstream"
VERSION = 1


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def paths(results_dir: str | os.PathLike, task: str) -> tuple[pathlib.Path, pathlib.Path]:
  base = pathlib.Path(results_dir) / task
  return base.with_suffix(".json"), base.with_suffix(".md")


def load(results_dir: str | os.PathLike, task: str) -> Optional[dict]:
  """The task's result document, or None when there is none yet."""
  path = paths(results_dir, task)[0]
  if not path.is_file():
    return None
  doc = json.loads(path.read_text())
  if doc.get("format") != FORMAT or doc.get("task") != task:
    raise ValueError(f"{path} is not a downstream result of task {task!r} (format "
                     f"{doc.get('format')!r}, task {doc.get('task')!r}); move it away")
  return doc


def new_document(task: Any) -> dict:
  return {"format": FORMAT, "version": VERSION, "task": task.name, "layout": task.layout,
          "evaluator": task.evaluator, "metrics": list(task.metrics),
          "metric_doc": task.metric_doc, "description": task.description, "entries": {}}


def entry_key(provenance: Mapping[str, Any], mode: str) -> str:
  """'<run name>@<step>/<init>/<mode>', e.g. 'demo600@600/checkpoint/frozen'."""
  return f"{provenance['run_name']}@{provenance['step']}/{provenance['init']}/{mode}"


def is_done(entry: Mapping[str, Any], fraction: float, seed: int) -> bool:
  return str(seed) in entry.get("runs", {}).get(_fkey(fraction), {})


def record_run(entry: dict, fraction: float, seed: int, run: Mapping[str, Any]) -> None:
  entry.setdefault("runs", {}).setdefault(_fkey(fraction), {})[str(seed)] = dict(run)
  entry["summary"] = summarise(entry["runs"], entry.get("metrics", ()))


def _fkey(fraction: float) -> str:
  return f"{float(fraction):g}"


def summarise(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
  """{fraction: {metric: {mean, std, n, ci_low, ci_high, seeds, values}, 'num_train': ...}}."""
  out = {}
  for f, per_seed in sorted(runs.items(), key=lambda kv: float(kv[0])):
    seeds = sorted(per_seed, key=int)
    row: dict[str, Any] = {"seeds": [int(s) for s in seeds]}
    for m in metrics:
      values = [per_seed[s]["metrics"].get(m, float("nan")) for s in seeds]
      values = [float("nan") if v is None else float(v) for v in values]
      d = statistics.describe(values).as_dict()
      row[m] = {**{k: _json_float(v) for k, v in d.items()}, "values": [_json_float(v)
                                                                         for v in values]}
    n_train = [per_seed[s].get("num_train") for s in seeds if per_seed[s].get("num_train")]
    row["num_train"] = (sum(n_train) / len(n_train)) if n_train else None
    out[f] = row
  return out


def paired_lines(doc: Mapping[str, Any]) -> list[str]:
  """'Checkpoint vs random init' paired t-tests over the shared seeds (same seed = same subset,
  head init and batch order on both sides), per fraction and metric; [] when there is no pair."""
  out = []
  entries = doc["entries"]
  for key, a in entries.items():
    pa = a["provenance"]
    if pa["init"] != "checkpoint":
      continue
    b = entries.get(f"{pa['run_name']}@{pa['step']}/random/{a['mode']}")
    if b is None:
      continue
    for f in sorted(set(a.get("runs", {})) & set(b.get("runs", {})), key=float):
      seeds = sorted(set(a["runs"][f]) & set(b["runs"][f]), key=int)
      for m in doc["metrics"]:
        va = [_nan(a["runs"][f][s]["metrics"].get(m)) for s in seeds]
        vb = [_nan(b["runs"][f][s]["metrics"].get(m)) for s in seeds]
        test = statistics.paired_t_test(va, vb)
        out.append(f"| {pa['run_name']}@{pa['step']} {a['mode']} | {f} | {m} | "
                   f"{statistics.format_test(test)} | {','.join(seeds)} |")
  if not out:
    return []
  return (["Checkpoint minus random init, paired by seed (statistics.paired_t_test, two-sided, "
           "alpha 0.05):", "", "| checkpoint | train % | metric | difference | seeds |",
           "|---|---|---|---|---|"] + out + [""])


def _nan(v: Any) -> float:
  return float("nan") if v is None else float(v)


def _json_float(v: Any) -> Any:
  return None if isinstance(v, float) and math.isnan(v) else v


def format_mean_std(cell: Mapping[str, Any], digits: int = 3) -> str:
  """'0.412 ± 0.031' (sample std; '± n/a' with one seed; '—' when nothing was scored)."""
  mean, std = cell.get("mean"), cell.get("std")
  if mean is None:
    return "—"
  return f"{mean:.{digits}f} ± " + ("n/a" if std is None else f"{std:.{digits}f}")


def save(results_dir: str | os.PathLike, doc: dict) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes <task>.json (atomically) and <task>.md."""
  json_path, md_path = paths(results_dir, doc["task"])
  json_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = json_path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
  tmp.replace(json_path)
  md_path.write_text(render_markdown(doc))
  return json_path, md_path


def render_markdown(doc: Mapping[str, Any]) -> str:
  """The task's table: one row per (entry, fraction), mean ± sample std over the seeds."""
  metrics = list(doc["metrics"])
  lines = [f"# Downstream: {doc['task']}", "",
           f"{doc.get('description', '')}.", "",
           f"- converter layout: `{doc['layout']}`; evaluator: `{doc['evaluator']}`",
           f"- metric: {doc['metric_doc']}",
           "- numbers: mean ± sample std (ddof 1) over the seeds listed; n = seeds; each seed "
           "draws its own nested training subset (data_pipeline/subsets.py) and head init", ""]
  header = ("| checkpoint | method | init | mode | train % | n train | "
            + " | ".join(metrics) + " | seeds |")
  lines += [header, "|" + "---|" * (header.count("|") - 1)]
  for key, entry in doc["entries"].items():
    prov = entry["provenance"]
    for f, row in entry.get("summary", {}).items():
      cells = [format_mean_std(row[m]) for m in metrics]
      n_train = "—" if row.get("num_train") is None else f"{row['num_train']:.0f}"
      lines.append(f"| {prov['run_name']}@{prov['step']} | {prov.get('method', '?')} | "
                   f"{prov['init']} | {entry['mode']} | {f} | {n_train} | "
                   + " | ".join(cells) + f" | {','.join(map(str, row['seeds']))} |")
  lines.append("")
  lines += paired_lines(doc)
  for key, entry in doc["entries"].items():
    prov = entry["provenance"]
    seconds = sum(r.get("seconds", 0) for per in entry.get("runs", {}).values()
                  for r in per.values())
    lines += [f"## {key}", "",
              f"- checkpoint: `{prov['run_dir']}` (method {prov.get('method', '?')}, image tower "
              f"{prov.get('image_tower', '?')}, step {prov['step']}, init {prov['init']})"]
    if "imported" in prov:
      imp = prov["imported"]
      lines.append(f"- imported by experiments/import_checkpoint.py: format "
                   f"{imp.get('format')}, source `{imp.get('source')}`")
    lines += [f"- data: `{entry['data_dir']}` (train split `{entry['train_split']}`, test split "
              f"`{entry['test_split']}`); split source: {entry['split_source']}",
              f"- subsets: `{entry.get('subsets_file') or 'none (no trained head)'}`",
              f"- budget: {entry.get('budget', '')}",
              f"- machine: {entry['machine']}",
              f"- updated: {entry['updated']}; wall seconds of its runs: {seconds:.0f}",
              "- commands:"]
    lines += [f"  - `{c}`" for c in entry.get("commands", [])]
    lines.append("")
  return "\n".join(lines)


__all__ = ["load", "save", "new_document", "entry_key", "is_done", "record_run", "summarise",
           "render_markdown", "format_mean_std", "paths", "now"]
