"""The conversion driver: a converter's Dataset -> sharded TFRecord files + index + metadata.

Owns everything between "a converter listed the inputs" and "the shards are on disk":
* `convert`: splits by patient (the input's split, else a deterministic hash of the patient id,
  80/10/10), assigns items to shards deterministically, converts shards in parallel (each worker
  writes whole shards), skips shards that are already finished, and writes
  `<out>/<split>-SSSSS-of-NNNNN.tfrecord` (+ `.index`, `.done`), `<out>/errors.jsonl`, TFDS's
  `<out>/dataset_info.json` + `features.json` (data_pipeline/tfds_metadata.py: the folder is a
  TFDS dataset directory) and, last, mmrl's `<out>/mmrl_dataset_info.json`
  (record_spec.INFO_FILE). A failed item is logged and counted; it never stops the conversion.
* `load_layout`: layout name (one of LAYOUTS: mimic | manifest | nih_cxr14 | covid_cxr |
  chexpert, and the downstream layouts rsna_pneumonia | siim_acr | object_cxr | vindr_cxr |
  chexpert_5x200 | ms_cxr | covidx, which take split_source / split_seed) -> Dataset.
What a converter produces (`Item`, `SourceBox`, `Dataset`, `error_entry`) and the LAYOUTS table
live in data_pipeline/converters/base.py; one Item -> one record (`convert_item`,
`ConvertOptions`) in data_pipeline/item_record.py. Both are re-exported here.
Format documentation: docs/data_format.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Optional, Sequence

import numpy as np

from data_pipeline import errors
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import tfds_metadata
from data_pipeline import tfrecord
from data_pipeline.converters.base import LAYOUTS, SPLIT_LAYOUTS, Dataset, Item, SourceBox
from data_pipeline.converters.base import error_entry, normalise_split
from data_pipeline.item_record import ConvertOptions, ViewFiltered, convert_item

__all__ = ["LAYOUTS", "SPLIT_LAYOUTS", "SPLIT_FRACTIONS", "RECORDS_PER_SHARD", "ConvertOptions",
           "Dataset", "Item", "SourceBox", "ViewFiltered", "convert", "convert_item", "done_path",
           "error_entry", "hash_split", "load_layout", "normalise_split"]

RECORDS_PER_SHARD = 1024  # Target size of a shard when num_shards is 0 (auto).
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validate / test when the input has no split.


def hash_split(patient_id: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
  """Deterministic patient-level split from sha256(patient_id): 80/10/10 by default."""
  h = int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  for split, edge in zip(record_spec.SPLITS, edges):
    if h < edge:
      return split
  return record_spec.SPLITS[-1]


# ---------------------------------------------------------------------------------------------
# Shards.

@dataclasses.dataclass
class _ShardTask:
  out_dir: str
  split: str
  index: int
  count: int
  items: list[Item]
  options: ConvertOptions
  require_report: bool
  label_names: tuple[str, ...]

  @property
  def name(self) -> str:
    return f"{self.split}-{self.index:05d}-of-{self.count:05d}.tfrecord"

  @property
  def path(self) -> pathlib.Path:
    return pathlib.Path(self.out_dir) / self.name

  def fingerprint(self) -> str:
    o = self.options
    payload = json.dumps({
        "spec": record_spec.SPEC_VERSION, "short_side": o.short_side, "bit_depth": o.bit_depth,
        "views": list(o.views), "require_report": self.require_report,
        "label_names": list(self.label_names),
        "items": [_item_key(it) for it in self.items]}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_LATER_FIELDS = ("rle_masks", "shape_masks")  # Item fields added after the first shards


def _item_key(item: Item) -> tuple:
  """The item's fields for the shard fingerprint. Fields added later (_LATER_FIELDS, the last
  ones) are left out while empty, so shards converted before they existed keep their
  fingerprints."""
  key = dataclasses.astuple(item)
  if not any(getattr(item, name) for name in _LATER_FIELDS):
    key = key[:-len(_LATER_FIELDS)]
  return key


def done_path(shard_path) -> pathlib.Path:
  p = pathlib.Path(shard_path)
  return p.with_name(p.name + ".done")


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
  os.replace(tmp, path)


def _read_done(task: _ShardTask) -> Optional[dict]:
  """The shard's summary if it is finished with the same inputs and options, else None."""
  dp = done_path(task.path)
  if not (dp.exists() and tfrecord.index_path(task.path).exists() and task.path.exists()):
    return None
  try:
    done = json.loads(dp.read_text())
  except (OSError, ValueError):
    return None
  return done if done.get("fingerprint") == task.fingerprint() else None


def _convert_shard(task: _ShardTask) -> dict:
  """Writes one shard (+ index + .done) and returns its summary (also stored in .done)."""
  label_names = task.label_names
  views: dict[str, int] = {}
  positives = np.zeros(len(label_names), np.int64)
  problems: list[dict] = []
  n_records = filtered = fallbacks = 0
  with tfrecord.TFRecordWriter(task.path) as writer:
    for item in task.items:
      try:
        rec, warnings = convert_item(item, task.options, split=task.split,
                                     require_report=task.require_report)
        if rec.labels is not None and label_names and rec.labels.shape != (len(label_names),):
          raise errors.InputError(item.item_id, f"{rec.labels.size} label values, expected "
                                  f"{len(label_names)} (one per label name)")
        data = records.serialize_record(rec)
      except ViewFiltered:
        filtered += 1
        continue
      except errors.InputError as e:
        path = (item.report_path if isinstance(e, errors.ReportError) and item.report_path
                else item.image)
        problems.append(error_entry(e.item or item.item_id, e.kind, e.reason, path,
                                    split=task.split))
        continue
      except Exception as e:  # pylint: disable=broad-except  # Never stop the conversion.
        tb = traceback.extract_tb(e.__traceback__)[-1]
        problems.append(error_entry(
            item.item_id, "unexpected_error", f"{type(e).__name__}: {e} (at {tb.filename}:"
            f"{tb.lineno}; please report this with the input file)", item.image,
            split=task.split))
        continue
      writer.write(data)
      n_records += 1
      views[rec.view] = views.get(rec.view, 0) + 1
      if rec.labels is not None and label_names:
        positives += rec.labels == 1
      for w in warnings:
        w["split"] = task.split
        fallbacks += w["kind"] == "report_fallback"
      problems.extend(warnings)
  done = {"fingerprint": task.fingerprint(), "shard": task.name, "split": task.split,
          "num_items": len(task.items), "num_records": n_records, "filtered_by_view": filtered,
          "report_fallbacks": fallbacks, "views": dict(sorted(views.items())),
          "labels_positive": positives.tolist(), "problems": problems}
  _write_json_atomic(done_path(task.path), done)
  return done


def _num_shards(n: int, options: ConvertOptions) -> int:
  if n == 0:
    return 0
  if options.num_shards:
    return min(options.num_shards, n)
  return max(1, math.ceil(n / RECORDS_PER_SHARD))


def _plan(dataset: Dataset, options: ConvertOptions, out_dir: pathlib.Path,
          require_report: bool) -> tuple[list[_ShardTask], list[dict]]:
  """Deterministic split + shard assignment; returns (tasks, listing problems)."""
  problems = [dict(e, skipped=e.get("skipped", True)) for e in dataset.listing_errors]
  seen: set[str] = set()
  by_split: dict[str, list[Item]] = {s: [] for s in record_spec.SPLITS}
  items = sorted(dataset.items, key=lambda it: (it.patient_id or it.item_id,
                                                it.study_id or it.item_id, it.item_id))
  kept = 0
  for it in items:
    view = it.view.strip().upper()
    if options.views and view and view not in options.views:
      continue
    if options.max_items and kept >= options.max_items:
      break
    if it.item_id in seen:
      problems.append(error_entry(it.item_id, "duplicate_id", "a second input has this id; ids "
                                  "must be unique in a data set (kept the first)", it.image))
      continue
    try:
      split = normalise_split(it.split) or hash_split(it.patient_id or it.item_id)
    except ValueError as e:
      problems.append(error_entry(it.item_id, "bad_split", f"{e}; fix the split column",
                                  it.image))
      continue
    seen.add(it.item_id)
    by_split[split].append(it)
    kept += 1
  tasks = []
  for split, split_items in by_split.items():
    count = _num_shards(len(split_items), options)
    for k in range(count):
      lo, hi = len(split_items) * k // count, len(split_items) * (k + 1) // count
      tasks.append(_ShardTask(str(out_dir), split, k, count, split_items[lo:hi], options,
                              require_report, tuple(dataset.label_names)))
  return tasks, problems


def _remove_stale_shards(out_dir: pathlib.Path, tasks: list[_ShardTask]) -> None:
  """Deletes shards of an earlier run with another shard count (they would be read too) and the
  temporary files of an interrupted run."""
  keep = {t.name for t in tasks}
  pattern = re.compile(r"^(train|validate|test)-\d{5}-of-\d{5}\.tfrecord$")
  copy = re.compile(r"^(train|validate|test)-\d{5}-of-\d{5}\.array_record$")
  leftover = re.compile(
      r"^(train|validate|test)-\d{5}-of-\d{5}\.(tfrecord|array_record).*\.(partial|tmp)\d+$")
  for p in sorted(out_dir.iterdir()):
    if leftover.match(p.name):  # Temp file of an interrupted run.
      p.unlink()
      continue
    if copy.match(p.name):  # ArrayRecord copy (tfds_metadata): goes with its shard.
      if p.name.removesuffix(".array_record") + ".tfrecord" not in keep:
        p.unlink()
      continue
    base = p.name
    for suffix in (".index", ".done"):
      if base.endswith(suffix):
        base = base[:-len(suffix)]
    if pattern.match(base) and base not in keep:
      p.unlink()


def _run_tasks(tasks: list[_ShardTask], workers: int, progress: bool) -> list[dict]:
  """Shard summaries in task order; finished shards are read back, the rest converted."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  results: list[Optional[dict]] = [None] * len(tasks)
  for i, t in enumerate(tasks):
    done = _read_done(t)
    if done is not None:
      results[i] = dict(done, skipped_existing=True)
  pending = [i for i, r in enumerate(results) if r is None]
  bar = tqdm(total=sum(len(t.items) for t in tasks), unit="item", desc="convert",
             disable=not progress, file=sys.stderr,
             initial=sum(len(tasks[i].items) for i, r in enumerate(results) if r is not None))
  try:
    if workers <= 1 or len(pending) <= 1:
      for i in pending:
        results[i] = _convert_shard(tasks[i])
        bar.update(len(tasks[i].items))
    else:
      # 'spawn': safe when the parent has imported JAX or other threaded libraries.
      ctx = multiprocessing.get_context("spawn")
      with ctx.Pool(min(workers, len(pending))) as pool:
        for i, res in pool.imap_unordered(_indexed_shard, [(i, tasks[i]) for i in pending]):
          results[i] = res
          bar.update(len(tasks[i].items))
  finally:
    bar.close()
  assert all(r is not None for r in results)
  return results  # type: ignore[return-value]


def _indexed_shard(arg: tuple[int, _ShardTask]) -> tuple[int, dict]:
  i, task = arg
  return i, _convert_shard(task)


def convert(dataset: Dataset, output_dir: str | os.PathLike,
            options: ConvertOptions = ConvertOptions()) -> dict:
  """Converts a Dataset to shards under output_dir; returns mmrl's dataset info dict.

  Re-running with the same inputs and options skips finished shards (a shard is finished when
  its .index and .done exist and the .done fingerprint matches the shard's items and options).
  """
  options.validate()
  options = dataclasses.replace(options, views=tuple(v.strip().upper() for v in options.views
                                                     if v.strip()))
  require_report = (dataset.require_report if options.require_report is None
                    else options.require_report)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  tasks, listing_problems = _plan(dataset, options, out, require_report)
  _remove_stale_shards(out, tasks)
  results = _run_tasks(tasks, options.workers, options.progress)

  problems = list(listing_problems)
  label_names = list(dataset.label_names)
  splits = {s: {"num_records": 0, "shards": []} for s in record_spec.SPLITS}
  counts = {s: {"records": 0, "views": {}, "labels_positive": dict.fromkeys(label_names, 0)}
            for s in record_spec.SPLITS}
  fallbacks = filtered = reused = reused_records = 0
  for task, res in zip(tasks, results):
    problems.extend(res["problems"])
    fallbacks += res["report_fallbacks"]
    filtered += res["filtered_by_view"]
    reused += bool(res.get("skipped_existing"))
    reused_records += res["num_records"] if res.get("skipped_existing") else 0
    s = splits[task.split]
    s["num_records"] += res["num_records"]
    s["shards"].append({"path": task.name, "num_records": res["num_records"]})
    c = counts[task.split]
    c["records"] += res["num_records"]
    for v, n in res["views"].items():
      c["views"][v] = c["views"].get(v, 0) + n
    for name, n in zip(label_names, res["labels_positive"]):
      c["labels_positive"][name] += n
  for c in counts.values():
    c["views"] = dict(sorted(c["views"].items()))
  failures = [p for p in problems if p.get("skipped", True)]
  by_kind: dict[str, int] = {}
  for p in failures:
    by_kind[p["kind"]] = by_kind.get(p["kind"], 0) + 1
  with open(out / "errors.jsonl.tmp", "w", encoding="utf-8") as f:
    for p in problems:
      f.write(json.dumps(p, ensure_ascii=False) + "\n")
  os.replace(out / "errors.jsonl.tmp", out / "errors.jsonl")
  info = {
      "spec_version": record_spec.SPEC_VERSION,
      "name": dataset.name,
      "source": dataset.source,
      "label_names": label_names,
      "image": {"format": "png", "short_side": options.short_side, "bit_depth": options.bit_depth,
                "upsampled": False},
      "splits": splits,
      "num_records": sum(s["num_records"] for s in splits.values()),
      "counts": counts,
      "report_fallbacks": fallbacks,
      "filtered_by_view": filtered,
      "errors": {"count": len(failures), "by_kind": dict(sorted(by_kind.items())),
                 "warnings": len(problems) - len(failures), "file": "errors.jsonl"},
      "shards_reused": reused,
      "records_reused": reused_records,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "converter": {**dataset.args, "short_side": options.short_side,
                    "bit_depth": options.bit_depth, "num_shards": options.num_shards,
                    "views": list(options.views), "max_items": options.max_items,
                    "require_report": require_report, "array_record": options.array_record},
  }
  if options.array_record:
    tfds_metadata.write_array_record_copies(out, info)
  tfds_metadata.write_tfds_metadata(out, info, array_record=options.array_record)
  _write_json_atomic(out / record_spec.INFO_FILE, info)  # last: marks the folder complete
  return info


# ---------------------------------------------------------------------------------------------
# Layouts.

def load_layout(layout: str, input_path: str | os.PathLike, **kwargs) -> Dataset:
  """Lists the items of `input_path` read as `layout` (one of LAYOUTS).

  kwargs go to the layout's lister; split_source / split_seed only to SPLIT_LAYOUTS (a ValueError
  names the layout otherwise)."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
  split_keys = {"split_source", "split_seed"} & set(kwargs)
  if split_keys and layout not in SPLIT_LAYOUTS:
    raise ValueError(f"layout {layout!r} takes no {'/'.join(sorted(split_keys))} (its split is "
                     f"its own); only {', '.join(SPLIT_LAYOUTS)} do")
  entry = LAYOUTS[layout]
  # The converter is imported only when used (some need optional packages).
  module = importlib.import_module(f"data_pipeline.converters.{entry.module}")
  return getattr(module, entry.function)(str(input_path), **kwargs)
