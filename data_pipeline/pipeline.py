"""The Grain input pipeline: converted data set -> fixed-shape numpy batches, resumable exactly.

Owns `make_train_iterator` (shuffled, repeated, sharded per process, augmented, resumable),
`make_eval_batches` (fixed order, last batch padded with valid=False rows; optionally with the
records' segmentation masks) and `dataset_info` (loads and validates a data set's
mmrl_dataset_info.json; reads the dataset_info.json of folders converted before that name).
Batches follow data_pipeline/batch_spec.py.

Train graph (per process):
  MapDataset.range(num_records) -> shuffle(seed; reshuffled each epoch) -> repeat()
  -> random_map(read record through TFRecordIndexSource + parse/augment/tokenise; seeded by the
     example's position in the global stream, so augmentation does not depend on workers)
  -> [process_index::process_count] -> to_iter_dataset -> drop + count bad records
  -> batch(global_batch_size // process_count, drop_remainder) -> mp_prefetch(num_workers)
The record number (not its bytes) flows through the shuffle so that a record that fails to read
is named '<shard>#<n>' and goes through the same skip/fail policy as one that fails to decode.
Bad records become `transforms.BadRecord` markers, dropped before batching so shapes stay
fixed; each batch carries how many were dropped, summed into `TrainIterator.num_skipped`
(which works across Grain worker processes and is part of the iterator state).
Exact resume: `TrainIterator.get_state()` is JSON-serialisable; `set_state` on an iterator built
from the same config continues with exactly the same batches. The stream depends on
num_workers (Grain slices the data set per worker), so the state records it and refuses to
restore under another value.

Over 400 lines on purpose: one job, the Grain graph and its exact-resume state; the train iterator
and the eval batches open a data set through the same steps (dataset_info, split_source, the
skip/fail policy), kept in one place so both read a record the same way.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import grain
import numpy as np

from data_pipeline import batch_spec
from data_pipeline import errors
from data_pipeline import grain_source
from data_pipeline import record_spec
from data_pipeline import records
from data_pipeline import transforms

_SKIPPED = "_num_skipped"
_STATE_VERSION = 1
_INFO_FILE = record_spec.INFO_FILE


# ---------------------------------------------------------------------------------------------
# mmrl_dataset_info.json

def info_path(dataset_dir: str | os.PathLike) -> pathlib.Path:
  """The file holding mmrl's metadata of a converted folder.

  `<dataset_dir>/mmrl_dataset_info.json`; for a folder converted before that name existed, its
  `dataset_info.json` when that is mmrl's (has "spec_version"), not TFDS's. A path that does not
  exist when the folder has neither.
  """
  d = pathlib.Path(dataset_dir)
  path = d / record_spec.INFO_FILE
  legacy = d / record_spec.LEGACY_INFO_FILE
  if not path.exists() and legacy.exists():
    try:
      if "spec_version" in json.loads(legacy.read_text()):
        return legacy
    except (OSError, ValueError):
      pass
  return path


def dataset_info(dataset_dir: str | os.PathLike) -> dict:
  """Loads and validates mmrl's metadata of a converted folder (`info_path`).

  Required: spec_version, name, label_names (list), splits: {split: {num_records, shards:
  [{path (relative to dataset_dir), num_records}]}}.

  Raises:
    FileNotFoundError: no mmrl metadata in the folder (names what is there instead).
    ValueError: invalid JSON or a missing/mistyped key (names the file and the key).
  """
  path = info_path(dataset_dir)
  if not path.exists():
    legacy = pathlib.Path(dataset_dir) / record_spec.LEGACY_INFO_FILE
    if legacy.exists():
      raise FileNotFoundError(
          f"{path} does not exist and {legacy} is not mmrl's metadata (no 'spec_version'; "
          "TensorFlow Datasets' own file?): an interrupted or foreign conversion; re-run "
          "experiments/convert.py into this folder")
    raise FileNotFoundError(f"{path} does not exist; set config.data.dataset_dir to a folder "
                            f"written by experiments/convert.py (it holds {_INFO_FILE})")
  try:
    info = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}; re-run the converter") from None

  def need(obj: Any, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
      raise ValueError(f"{path}: missing key {where}{key!r}; re-run the converter or add it")
    if not isinstance(obj[key], kind):
      raise ValueError(f"{path}: key {where}{key!r} must be {kind.__name__}, got "
                       f"{type(obj[key]).__name__}")
    return obj[key]

  need(info, "spec_version", int, "")
  need(info, "name", str, "")
  need(info, "label_names", list, "")
  splits = need(info, "splits", dict, "")
  for split, entry in splits.items():
    where = f"splits.{split}."
    need(entry, "num_records", int, where)
    shards = need(entry, "shards", list, where)
    for i, shard in enumerate(shards):
      need(shard, "path", str, f"{where}shards[{i}].")
      need(shard, "num_records", int, f"{where}shards[{i}].")
  return info


def split_source(dataset_dir: str | os.PathLike, split: str, info: Optional[dict] = None
                 ) -> grain_source.TFRecordIndexSource:
  """The TFRecordIndexSource of one split of a converted data set."""
  info = info or dataset_info(dataset_dir)
  if split not in info["splits"]:
    raise ValueError(f"split {split!r} is not in {info_path(dataset_dir)}; "
                     f"available: {sorted(info['splits'])} (config.data.train_split / "
                     "config.data.eval_split)")
  entries = info["splits"][split]["shards"]
  shards = [pathlib.Path(dataset_dir) / s["path"] for s in entries]
  source = grain_source.TFRecordIndexSource(shards)
  for i, entry in enumerate(entries):
    n = int(source.shard_num_records(i))
    if n != entry["num_records"]:
      raise ValueError(
          f"{shards[i]}: its index holds {n} records but {info_path(dataset_dir)} "
          f"says num_records={entry['num_records']}; rebuild the index with "
          "data_pipeline.tfrecord.build_index() or re-run the converter")
  if len(source) == 0:
    raise ValueError(f"split {split!r} of {dataset_dir} has no records; choose another split")
  return source


def _dataset_dir(data_cfg) -> str:
  d = str(data_cfg.get("dataset_dir", ""))
  if not d:
    raise ValueError("config.data.dataset_dir is empty; set it to a converted data set folder "
                     f"(holding {_INFO_FILE}), e.g. --config.data.dataset_dir=/data/mimic")
  return d


# ---------------------------------------------------------------------------------------------
# Dropping bad records before batching, counting them into the batch.

class _SkipBadIterator(grain.DatasetIterator):
  """Drops `transforms.BadRecord` markers; each good example carries how many it replaced."""

  def __next__(self):
    skipped = 0
    while True:
      element = next(self._parent)
      if transforms.is_bad(element):
        skipped += 1
        continue
      element = dict(element)
      element[_SKIPPED] = np.int32(skipped)
      return element

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)

  def __str__(self) -> str:
    return "SkipBadRecordsIterator"


class _SkipBadIterDataset(grain.IterDataset):

  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "SkipBadRecordsIterDataset"


# ---------------------------------------------------------------------------------------------
# Training.

class TrainIterator:
  """Infinite iterator of training batches (numpy dicts) with exact, JSON-serialisable state.

  `get_state()` after k batches, then `set_state(state)` on an iterator built from the same
  config yields exactly the batches the original yields next. `num_skipped` counts the bad
  records dropped so far (it is part of the state). Call `close()` to stop Grain workers.

  The stream depends on the settings in `signature` (Grain's mp_prefetch gives each worker a
  slice, so num_workers changes batch composition); the state records them and `set_state`
  refuses a state saved under different ones.
  """

  def __init__(self, dataset: grain.IterDataset, *, description: str,
               signature: Mapping[str, Any]):
    self._dataset = dataset
    self._it = iter(dataset)
    self.num_skipped = 0
    self.description = description
    self.signature = dict(signature)

  def __repr__(self) -> str:
    return f"TrainIterator({self.description}, num_skipped={self.num_skipped})"

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    self.num_skipped += int(np.sum(batch.pop(_SKIPPED)))
    return batch

  def get_state(self) -> dict:
    return {"version": _STATE_VERSION, "num_skipped": self.num_skipped,
            "signature": dict(self.signature), "grain": self._it.get_state()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("version") != _STATE_VERSION or "grain" not in state:
      raise ValueError(f"data iterator state has version {state.get('version')!r}, expected "
                       f"{_STATE_VERSION}; it was saved by another mmrl version — restart the "
                       "data iterator (drop the iterator state from the checkpoint)")
    saved = state.get("signature", {})
    diff = [f"{k}={saved[k]!r} (now {v!r})" for k, v in self.signature.items()
            if k in saved and saved[k] != v]
    if diff:
      raise ValueError(
          f"data iterator state was saved with {', '.join(diff)}; the batch stream depends on "
          "these, so it cannot resume exactly. Restore with the same config.data / batch size / "
          "process layout / seed, or drop the iterator state to restart the data stream")
    self._it.set_state(state["grain"])
    self.num_skipped = int(state["num_skipped"])

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close is not None:
      close()

  def __enter__(self) -> "TrainIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _random_map_seed(seed: int) -> int:
  return (int(seed) * 0x9E3779B1 + 0x5BD1E995) % (2**32)


def make_train_iterator(data_cfg, *, global_batch_size: int, process_index: int = 0,
                        process_count: int = 1, seed: int = 0,
                        read_threads: Optional[int] = None) -> TrainIterator:
  """Builds the training iterator of this process (see the module docstring for the graph).

  Args:
    data_cfg: config.data (dataset_dir, train_split, image_size, max_tokens, max_sentences,
      max_boxes, tokenizer, lowercase, num_workers, prefetch_buffer, shuffle, on_bad_record,
      mean, std, augment).
    global_batch_size: batch over all processes; each process yields
      global_batch_size // process_count examples per batch.
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()); processes see disjoint records.
    seed: shuffle and augmentation seed (config.seed).
    read_threads: threads reading+transforming inside each worker (default 1, or 2 in-process).

  Returns:
    A TrainIterator.

  Raises:
    ValueError: a bad config value (names the key, the value and the fix).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}; choose config.train.batch_size as a "
                     f"multiple of {process_count}")
  on_bad = transforms.check_on_bad_record(str(data_cfg.get("on_bad_record", "skip")))
  num_workers = int(data_cfg.get("num_workers", 0))
  if num_workers < 0:
    raise ValueError(f"config.data.num_workers={num_workers} must be >= 0 (0 = in-process)")
  prefetch = max(1, int(data_cfg.get("prefetch_buffer", 2)))
  dataset_dir = _dataset_dir(data_cfg)
  split = str(data_cfg.get("train_split", "train"))
  info = dataset_info(dataset_dir)
  source = split_source(dataset_dir, split, info)
  transform = transforms.RecordTransform(data_cfg, info["label_names"], train=True)
  _ = transform.tokenizer  # Fail here, not in a worker, on a bad config.data.tokenizer.
  loader = transforms.ExampleLoader(source, transform, on_bad)
  local_batch = global_batch_size // process_count

  ds = grain.MapDataset.range(len(source))
  if bool(data_cfg.get("shuffle", True)):
    ds = ds.shuffle(seed=int(seed) % (2**32))
  ds = ds.repeat(None)
  ds = ds.random_map(loader.load, seed=_random_map_seed(seed))
  ds = ds[process_index::process_count]
  if read_threads is None:
    read_threads = 1 if num_workers > 0 else 2
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=max(1, local_batch * prefetch)))
  it_ds = _SkipBadIterDataset(it_ds)
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch))
  signature = {"split": split, "num_records": len(source), "global_batch_size": global_batch_size,
               "process_index": process_index, "process_count": process_count,
               "seed": int(seed), "num_workers": num_workers,
               "shuffle": bool(data_cfg.get("shuffle", True))}
  return TrainIterator(it_ds, signature=signature, description=(
      f"{dataset_dir}:{split}, {len(source)} records, batch {local_batch} of "
      f"{global_batch_size}, process {process_index}/{process_count}, seed {seed}, "
      f"workers {num_workers}"))


# ---------------------------------------------------------------------------------------------
# Evaluation.

def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
  keys = batch_spec.BATCH_KEYS + tuple(k for k in batch_spec.MASK_KEYS if k in examples[0])
  return {k: np.stack([e[k] for e in examples]) for k in keys}


class EvalBatches:
  """Iterator of evaluation batches in record order; `num_skipped` counts bad records dropped."""

  def __init__(self, loader: transforms.ExampleLoader, num_examples: int, batch_size: int,
               read_threads: int = 2):
    self._loader = loader
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.num_skipped = 0
    ds = grain.MapDataset.range(num_examples).map(loader.load)
    self._it = iter(ds.to_iter_dataset(grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=2 * batch_size)))
    self._done = False

  def __iter__(self) -> "EvalBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._done:
      raise StopIteration
    examples = []
    while len(examples) < self.batch_size:
      try:
        element = next(self._it)
      except StopIteration:
        self._done = True
        break
      if transforms.is_bad(element):
        self.num_skipped += 1
        continue
      examples.append(element)
    if not examples:
      raise StopIteration
    pad = self._loader.transform.padding_example()
    examples += [pad] * (self.batch_size - len(examples))
    return _stack(examples)


def box_label_vocabulary(dataset_dir: str | os.PathLike, split: str,
                         info: Optional[dict] = None) -> tuple[tuple[str, ...], int]:
  """(sorted distinct `boxes/label` strings of a split's records, most boxes in one record).

  For data sets whose box labels are not class names but phrases (MS-CXR's
  '<category>: <phrase>', one string per phrase shared by its boxes): pass the names to
  `make_eval_batches(box_label_names=...)` and `box_labels` index into them; the count tells
  the config.data.max_boxes that keeps every box. Unreadable records are skipped here (the
  batches report them under config.data.on_bad_record)."""
  source = split_source(dataset_dir, split, info)
  names: set[str] = set()
  most = 0
  for i in range(len(source)):
    try:
      rec = records.parse_record(source[i], item=source.item_name(i))
    except errors.InputError:
      continue
    names.update(b.label for b in rec.boxes)
    most = max(most, len(rec.boxes))
  return tuple(sorted(names)), most


def make_eval_batches(data_cfg, *, split: str, batch_size: int,
                      max_examples: Optional[int] = None, with_masks: bool = False,
                      max_masks: int = 4, box_label_names: Optional[Sequence[str]] = None
                      ) -> EvalBatches:
  """Evaluation batches: no augmentation or shuffle, record order, last batch padded.

  Args:
    data_cfg: config.data.
    split: the split to read (e.g. config.data.eval_split).
    batch_size: rows per batch; padding rows have valid=False (and empty masks).
    max_examples: read only the first this many records (None = all).
    with_masks: also return the records' segmentation masks (batch_spec.MASK_KEYS: masks
      f32[B, max_masks, S, S] in the image's evaluation view, mask_labels, mask_present).
    max_masks: masks kept per example (the first ones of the record).
    box_label_names: the vocabulary `box_labels` index into (default the data set's
      label_names; `box_label_vocabulary` for phrase labels).

  Returns:
    An iterator of batch dicts (batch_spec.BATCH_KEYS [+ MASK_KEYS]), with `.num_skipped`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1 (config.eval.batch_size)")
  on_bad = transforms.check_on_bad_record(str(data_cfg.get("on_bad_record", "skip")))
  dataset_dir = _dataset_dir(data_cfg)
  info = dataset_info(dataset_dir)
  source = split_source(dataset_dir, split, info)
  n = len(source) if max_examples is None else min(len(source), int(max_examples))
  transform = transforms.RecordTransform(data_cfg, info["label_names"], train=False,
                                         box_label_names=box_label_names)
  if with_masks:
    transform.enable_masks(max_masks)
  _ = transform.tokenizer  # Fail here on a bad config.data.tokenizer.
  loader = transforms.ExampleLoader(source, transform, on_bad)
  return EvalBatches(loader, n, batch_size)
