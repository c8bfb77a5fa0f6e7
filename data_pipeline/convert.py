"""The conversion driver: items -> StudyRecords -> sharded TFRecord files + index + metadata.

Owns everything between "a converter listed the inputs" and "the shards are on disk":
* `Item` / `SourceBox` / `Dataset`: what a converter (data_pipeline/converters/*) produces: cheap,
  picklable descriptions of each input (paths, ids, labels, boxes in source pixels); no pixels.
* `convert_item`: one Item -> one StudyRecord (decode, resize, PNG, report -> sentences, boxes
  normalised, masks resized like the image). Bad input raises `errors.InputError` subclasses.
* `convert`: splits by patient (the input's split, else a deterministic hash of the patient id,
  80/10/10), assigns items to shards deterministically, converts shards in parallel (each worker
  writes whole shards), skips shards that are already finished, and writes
  `<out>/<split>-SSSSS-of-NNNNN.tfrecord` (+ `.index`, `.done`), `<out>/errors.jsonl`, TFDS's
  `<out>/dataset_info.json` + `features.json` (data_pipeline/tfds_metadata.py: the folder is a
  TFDS dataset directory) and, last, mmrl's `<out>/mmrl_dataset_info.json`
  (record_spec.INFO_FILE). A failed item is logged and counted; it never stops the conversion.
* `load_layout`: layout name (mimic | manifest | nih_cxr14 | covid_cxr | chexpert, and the
  downstream layouts rsna_pneumonia | siim_acr | object_cxr | vindr_cxr | chexpert_5x200 | ms_cxr
  | covidx, which take split_source / split_seed) -> Dataset.
Format documentation: docs/data_format.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import math
import multiprocessing
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from data_pipeline import errors
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import tfds_metadata
from data_pipeline import tfrecord
from data_pipeline.record_spec import Box, StudyRecord

RECORDS_PER_SHARD = 1024  # Target size of a shard when num_shards is 0 (auto).
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validate / test when the input has no split.
_SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                  "valid": "validate", "validation": "validate", "dev": "validate",
                  "test": "test", "testing": "test"}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


# ---------------------------------------------------------------------------------------------
# What converters produce.

@dataclasses.dataclass(frozen=True)
class SourceBox:
  """A box in pixels of the source image (or of Item.box_frame)."""
  label: str
  xmin: float
  ymin: float
  xmax: float
  ymax: float


@dataclasses.dataclass(frozen=True)
class Item:
  """One input image and everything needed to turn it into a record (no pixels loaded)."""
  item_id: str                      # image/id: dicom_id or image file stem; unique
  image: str                        # path of the source image: DICOM, PNG, JPEG, ...
  source: str = ""                  # image/source: path relative to the input root
  patient_id: str = ""              # '' -> item_id
  study_id: str = ""                # '' -> item_id
  split: str = ""                   # '' -> hash of patient id; aliases like 'val' accepted
  view: str = ""                    # '' -> the DICOM ViewPosition (if any)
  report_path: str = ""             # a report file (UTF-8 text), or
  report_text: Optional[str] = None  # free text, or
  findings: Optional[str] = None    # pre-split sections
  impression: Optional[str] = None
  labels: Optional[tuple[float, ...]] = None   # one per Dataset.label_names; NaN = blank
  boxes: tuple[SourceBox, ...] = ()
  box_frame: Optional[tuple[int, int]] = None  # (height, width) of the boxes' pixel frame;
                                               # None = the source image as decoded
  masks: tuple[tuple[str, str], ...] = ()      # (label, path of a binary PNG mask)
  rle_masks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (label, SIIM RLE strings, OR-ed;
                                               # () or '-1' = empty) in the source image frame
  shape_masks: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...] = ()  # (label, polygons
                                               # (x1, y1, x2, y2, ...) in source pixels, filled
                                               # and OR-ed; () = empty): data_pipeline.mask_shapes


@dataclasses.dataclass
class Dataset:
  """A converter's output: the items, the label vocabulary and problems found while listing."""
  name: str
  source: str
  items: list[Item]
  label_names: tuple[str, ...] = ()
  listing_errors: list[dict] = dataclasses.field(default_factory=list)  # errors.jsonl entries
  require_report: bool = True       # the layout's default (False for image-only data sets)
  args: dict = dataclasses.field(default_factory=dict)  # converter arguments, for dataset_info


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """How to convert. See docs/data_format.md."""
  short_side: int = 512         # images larger than this are resized (never upsampled)
  bit_depth: int = 8            # PNG bit depth: 8 or 16
  num_shards: int = 0           # shards per split (capped at the split's item count); 0 = auto
  workers: int = 1              # processes; each writes whole shards
  views: tuple[str, ...] = ()   # keep only these views (upper-case, e.g. ('PA', 'AP')); () = all
  max_items: int = 0            # keep the first N items (stable order); 0 = all
  require_report: Optional[bool] = None  # None = the layout's default
  progress: bool = True         # tqdm progress bar on stderr
  array_record: bool = False    # also an ArrayRecord copy of each shard (TFDS random access)

  def validate(self) -> None:
    if self.bit_depth not in (8, 16):
      raise ValueError(f"bit_depth={self.bit_depth} is not supported; use 8 or 16")
    if self.short_side <= 0:
      raise ValueError(f"short_side={self.short_side} must be a positive number of pixels")
    if self.num_shards < 0 or self.workers < 1 or self.max_items < 0:
      raise ValueError(f"num_shards={self.num_shards}, workers={self.workers}, "
                       f"max_items={self.max_items}: need num_shards >= 0 (0 = auto), "
                       "workers >= 1, max_items >= 0 (0 = all)")


def error_entry(item: str, kind: str, reason: str, path: str = "", *, skipped: bool = True,
                split: str = "") -> dict:
  """One line of errors.jsonl. skipped=False marks a warning (the record was still written)."""
  return {"item": item, "kind": kind, "reason": reason, "path": path, "split": split,
          "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# One item -> one record.

def normalise_split(value: str) -> str:
  """Maps split names to record_spec.SPLITS ('val' -> 'validate'); '' stays ''."""
  v = str(value or "").strip().lower()
  if not v:
    return ""
  if v not in _SPLIT_ALIASES:
    raise ValueError(f"split {value!r} is not one of {sorted(_SPLIT_ALIASES)}")
  return _SPLIT_ALIASES[v]


def hash_split(patient_id: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
  """Deterministic patient-level split from sha256(patient_id): 80/10/10 by default."""
  h = int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  for split, edge in zip(record_spec.SPLITS, edges):
    if h < edge:
      return split
  return record_spec.SPLITS[-1]


def _is_dicom(path: pathlib.Path) -> bool:
  if path.suffix.lower() in _DICOM_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def _load_source(item: Item) -> tuple[np.ndarray, str]:
  """(float32 [H, W] in [0, 1], DICOM ViewPosition or '')."""
  from data_pipeline import image_codec  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(item.image)
  if not path.is_file():
    raise errors.MissingFileError(item.item_id, f"image file {str(path)!r} does not exist")
  if _is_dicom(path):
    from data_pipeline import dicom_decode  # pylint: disable=import-outside-toplevel
    decoded = dicom_decode.decode_dicom(path, item_id=item.item_id)
    return decoded.image, decoded.view
  return image_codec.load_image(path, item_id=item.item_id), ""


def _report(item: Item, require_report: bool):
  """ParsedReport, or None when the item has no report and none is required."""
  from data_pipeline import reports  # pylint: disable=import-outside-toplevel
  if item.report_path:
    p = pathlib.Path(item.report_path)
    if not p.is_file():
      if not require_report:
        return None
      raise errors.MissingFileError(item.item_id, f"report file {str(p)!r} does not exist")
    return reports.parse_report(p.read_bytes(), item_id=item.item_id)
  if item.report_text is not None and str(item.report_text).strip():
    return reports.parse_report(item.report_text, item_id=item.item_id)
  has_sections = any(s is not None and str(s).strip() for s in (item.findings, item.impression))
  if has_sections:
    return reports.report_from_sections(item.findings, item.impression, item_id=item.item_id)
  if require_report:
    raise errors.ReportError(item.item_id, "no report: the report text / findings / impression "
                             "are missing or empty (use require_report=False for image-only "
                             "data sets)")
  return None


def _normalise_boxes(item: Item, frame: tuple[int, int], warnings: list[dict]) -> list[Box]:
  h, w = frame
  out = []
  for b in item.boxes:
    x0, x1 = sorted((float(b.xmin) / w, float(b.xmax) / w))
    y0, y1 = sorted((float(b.ymin) / h, float(b.ymax) / h))
    x0, x1, y0, y1 = (min(max(v, 0.0), 1.0) for v in (x0, x1, y0, y1))
    if not all(math.isfinite(v) for v in (x0, x1, y0, y1)) or x1 <= x0 or y1 <= y0:
      warnings.append(error_entry(item.item_id, "bad_box", f"box {b} lies outside the "
                                  f"{w}x{h} frame or is empty; dropped", item.image,
                                  skipped=False))
      continue
    out.append(Box(b.label, x0, y0, x1, y1))
  return out


def _mask_png(item: Item, label: str, path: str, size: tuple[int, int]) -> bytes:
  """Binary mask file -> 8-bit 0/255 PNG of `size` (width, height), nearest-neighbour."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise errors.MissingFileError(item.item_id, f"mask file {str(p)!r} (label {label!r}) does "
                                  "not exist")
  try:
    with Image.open(p) as pil:
      grey = np.asarray(pil.convert("L"))
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.BadImageError(item.item_id, f"cannot read mask file {str(p)!r}: "
                               f"{type(e).__name__}: {e}") from e
  binary = Image.fromarray(np.where(grey > 127, 255, 0).astype(np.uint8), mode="L")
  if binary.size != size:
    binary = binary.resize(size, resample=Image.Resampling.NEAREST)
  buf = io.BytesIO()
  binary.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def _rle_mask_png(item: Item, rles: Sequence[str], frame: tuple[int, int],
                  size: tuple[int, int]) -> bytes:
  """SIIM RLE strings (data_pipeline.mask_rle) decoded in the source `frame` (height, width), OR-ed
  -> 8-bit 0/255 PNG of `size` (width, height), nearest-neighbour."""
  from data_pipeline import mask_rle  # pylint: disable=import-outside-toplevel
  return _binary_png(mask_rle.decode_union(rles, *frame, item=item.item_id), size)


def _shape_mask_png(shapes: Sequence[Sequence[float]], frame: tuple[int, int],
                    size: tuple[int, int]) -> bytes:
  """Polygons (data_pipeline.mask_shapes) filled in the source `frame` (height, width) -> 8-bit
  0/255 PNG of `size` (width, height), nearest-neighbour."""
  from data_pipeline import mask_shapes  # pylint: disable=import-outside-toplevel
  return _binary_png(mask_shapes.rasterise(shapes, *frame), size)


def _binary_png(mask: np.ndarray, size: tuple[int, int]) -> bytes:
  binary = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
  if binary.size != size:
    binary = binary.resize(size, resample=Image.Resampling.NEAREST)
  buf = io.BytesIO()
  binary.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


class ViewFiltered(Exception):
  """The item's view (known only after decoding) is not among the requested views."""


def convert_item(item: Item, options: ConvertOptions, *, split: str,
                 require_report: bool = True) -> tuple[StudyRecord, list[dict]]:
  """Converts one Item; returns (record, warnings). Raises errors.InputError for bad input."""
  from data_pipeline import image_codec  # pylint: disable=import-outside-toplevel
  report = _report(item, require_report)  # First: cheap, and spares decoding a useless image.
  image, dicom_view = _load_source(item)
  view = (item.view or dicom_view or "").strip().upper()
  if options.views and view not in options.views:
    raise ViewFiltered(view)
  original_h, original_w = image.shape
  resized = image_codec.resize_short_side(image, options.short_side)
  height, width = resized.shape
  warnings: list[dict] = []
  if report is not None and report.used_fallback:
    warnings.append(error_entry(item.item_id, "report_fallback", "no FINDINGS/IMPRESSION section; "
                                "used the last paragraphs as the report text",
                                item.report_path or item.image, skipped=False))
  boxes = _normalise_boxes(item, item.box_frame or (original_h, original_w), warnings)
  masks = [_mask_png(item, label, path, (width, height)) for label, path in item.masks]
  masks += [_rle_mask_png(item, rles, (original_h, original_w), (width, height))
            for _, rles in item.rle_masks]
  masks += [_shape_mask_png(shapes, (original_h, original_w), (width, height))
            for _, shapes in item.shape_masks]
  rec = StudyRecord(
      image_png=image_codec.encode_png(resized, options.bit_depth),
      height=height, width=width, bit_depth=options.bit_depth,
      original_height=original_h, original_width=original_w,
      image_id=item.item_id,
      study_id=item.study_id or item.item_id,
      patient_id=item.patient_id or item.item_id,
      view=view, source=item.source, split=split,
      report_text=report.text if report else "",
      findings=report.findings if report else "",
      impression=report.impression if report else "",
      sentences=list(report.sentences) if report else [],
      sentence_sections=list(report.sentence_sections) if report else [],
      labels=None if item.labels is None else np.asarray(item.labels, np.float32),
      boxes=boxes,
      mask_labels=[label for label, _ in item.masks + item.rle_masks + item.shape_masks],
      masks_png=masks)
  return rec, warnings


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

def _mimic(input_path: str, **kw) -> Dataset:
  from data_pipeline.converters import mimic  # pylint: disable=import-outside-toplevel
  return mimic.list_mimic(input_path, **kw)


def _manifest(input_path: str, **kw) -> Dataset:
  from data_pipeline.converters import manifest  # pylint: disable=import-outside-toplevel
  return manifest.list_manifest(input_path, **kw)


def _nih(input_path: str, **kw) -> Dataset:
  from data_pipeline.converters import shared_data  # pylint: disable=import-outside-toplevel
  return shared_data.nih_cxr14(input_path, **kw)


def _covid(input_path: str, **kw) -> Dataset:
  from data_pipeline.converters import shared_data  # pylint: disable=import-outside-toplevel
  return shared_data.covid_cxr(input_path, **kw)


def _chexpert(input_path: str, **kw) -> Dataset:
  from data_pipeline.converters import chexpert  # pylint: disable=import-outside-toplevel
  return chexpert.list_chexpert(input_path, **kw)


def _downstream(module: str, function: str) -> Callable[..., Dataset]:
  """A downstream layout (data_pipeline/converters/<module>.py), imported when used."""
  def lister(input_path: str, **kw) -> Dataset:
    import importlib  # pylint: disable=import-outside-toplevel
    mod = importlib.import_module(f"data_pipeline.converters.{module}")
    return getattr(mod, function)(input_path, **kw)
  lister.__name__ = f"_{module}"
  return lister


LAYOUTS: dict[str, Callable[..., Dataset]] = {
    "mimic": _mimic, "manifest": _manifest, "nih_cxr14": _nih, "covid_cxr": _covid,
    "chexpert": _chexpert,
    "rsna_pneumonia": _downstream("rsna_pneumonia", "list_rsna_pneumonia"),
    "siim_acr": _downstream("siim_acr", "list_siim_acr"),
    "object_cxr": _downstream("object_cxr", "list_object_cxr"),
    "vindr_cxr": _downstream("vindr_cxr", "list_vindr_cxr"),
    "chexpert_5x200": _downstream("chexpert_5x200", "list_chexpert_5x200"),
    "ms_cxr": _downstream("ms_cxr", "list_ms_cxr"),
    "covidx": _downstream("covidx", "list_covidx")}
# Layouts that take split_source= / split_seed= (data_pipeline/splits.py).
SPLIT_LAYOUTS = ("rsna_pneumonia", "siim_acr", "object_cxr", "vindr_cxr", "chexpert_5x200",
                 "ms_cxr", "covidx")


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
  return LAYOUTS[layout](str(input_path), **kwargs)
