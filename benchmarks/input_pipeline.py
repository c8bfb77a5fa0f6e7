"""Input-pipeline throughput: decode + augment + tokenise, samples/s in total and per worker.

COMMAND: python benchmarks/input_pipeline.py --workers=0,1,2 --batches=20
         python benchmarks/input_pipeline.py --dataset_dir=/data/mimic_tfrecords --image_size=224
SMOKE:   python benchmarks/input_pipeline.py --batches=2 --records=32 --workers=0   (~7 s; each
         worker count > 0 adds ~2-3 s of process start per output size)
Without --dataset_dir it writes a synthetic data set (chest-like 8-bit 512² PNG records with short
reports, through TFRecordWriter) to a temporary folder. Two measurements per output size:
  1. per-core cost: one thread, no Grain, CPU ms per sample (thread CPU time, robust to a busy
     host) of read+parse, PNG decode, augment+resize, tokenise (the number to extrapolate);
  2. the real training iterator (data_pipeline.pipeline.make_train_iterator) with W Grain workers
     (0 = in-process), samples/s in total and per worker.
Prints a markdown table with the machine (nproc, CPU model), date and command.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from data_pipeline import augment
from data_pipeline import grain_source
from data_pipeline import image_codec
from data_pipeline import pipeline
from data_pipeline import records
from data_pipeline import tfrecord
from data_pipeline import tokenization
from data_pipeline.record_spec import CHEXPERT_LABELS, Box, StudyRecord
from experiments.configs import base
from mmrl.machine_info import cpu_model

_DATASET_DIR = flags.DEFINE_string("dataset_dir", "", "converted data set; '' = synthetic")
_SPLIT = flags.DEFINE_string("split", "train", "split to read")
_IMAGE_SIZE = flags.DEFINE_list("image_size", ["224", "512"], "output sides to measure")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to measure")
_BATCHES = flags.DEFINE_integer("batches", 20, "timed batches per configuration")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "batch size")
_RECORDS = flags.DEFINE_integer("records", 512, "synthetic records to write")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 512, "synthetic image side")
_PER_CORE_SAMPLES = flags.DEFINE_integer("per_core_samples", 0,
                                         "samples for the per-core timing (0 = min(128, records))")
_TARGET = 3500.0  # samples/s at 224² on a 16-core host (design target).

_SENTENCES = [
    "The lungs are clear without focal consolidation.", "There is no pleural effusion.",
    "No pneumothorax is seen.", "Heart size is normal.", "Mild cardiomegaly is unchanged.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Median sternotomy wires are intact.", "No acute cardiopulmonary process.",
    "Right internal jugular catheter tip in the mid SVC.", "Stable mediastinal contours.",
]


def chest_like_image(rng: np.random.Generator, side: int) -> np.ndarray:
  """A float [0,1] image with chest-radiograph structure: dark lungs, bright body and spine."""
  yy, xx = np.mgrid[0:side, 0:side] / side
  body = np.exp(-(((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2) ** 2)
  img = 0.15 + 0.6 * body
  for cx in (0.32, 0.68):
    cx += rng.normal(0, 0.02)
    lung = np.exp(-(((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2) ** 1.5)
    img -= 0.45 * lung
  img += 0.35 * np.exp(-((xx - 0.5) / 0.05) ** 2) * (yy > 0.2)  # Spine / mediastinum.
  img += 0.25 * np.exp(-(((xx - 0.56) / 0.1) ** 2 + ((yy - 0.62) / 0.1) ** 2))  # Heart.
  img += rng.normal(0, 0.03, img.shape)  # Quantum noise: makes PNG sizes realistic.
  return np.clip(img, 0, 1).astype(np.float32)


def write_synthetic_dataset(root: pathlib.Path, num_records: int, side: int,
                            num_shards: int = 4) -> pathlib.Path:
  """Writes num_records chest-like PNG records with 2-5 sentence reports; returns the folder."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  k = len(CHEXPERT_LABELS)
  per_shard = -(-num_records // num_shards)
  shards = []
  for s in range(num_shards):
    ids = range(s * per_shard, min(num_records, (s + 1) * per_shard))
    name = f"train-{s:05d}-of-{num_shards:05d}.tfrecord"
    with tfrecord.TFRecordWriter(root / name) as w:
      for i in ids:
        n = int(rng.integers(2, 6))
        sentences = list(rng.choice(_SENTENCES, n, replace=False))
        labels = rng.choice([1.0, 0.0, -1.0, np.nan], k).astype(np.float32)
        rec = StudyRecord(
            image_png=image_codec.encode_png(chest_like_image(rng, side), 8), height=side,
            width=side, bit_depth=8, original_height=side, original_width=side,
            image_id=f"img{i}", study_id=f"{50000000 + i}", patient_id=f"{10000000 + i // 3}",
            report_text=" ".join(sentences), sentences=sentences,
            sentence_sections=["findings"] * n, labels=labels,
            boxes=[Box("Cardiomegaly", 0.4, 0.5, 0.75, 0.8)] if i % 4 == 0 else [])
        w.write(records.serialize_record(rec))
    shards.append({"path": name, "num_records": len(ids)})
  info = {"spec_version": 1, "name": "synthetic-benchmark", "label_names": list(CHEXPERT_LABELS),
          "splits": {"train": {"num_records": num_records, "shards": shards}}}
  (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
  return root




def per_core_costs(data_cfg, dataset_dir: str, samples: int) -> dict[str, float]:
  """CPU ms per sample of each stage, one thread, no Grain.

  Thread CPU time, not wall time: on a shared host, time spent descheduled is not a cost of
  the pipeline, and the per-core number is what extrapolates to another host.
  """
  info = pipeline.dataset_info(dataset_dir)
  source = pipeline.split_source(dataset_dir, data_cfg.train_split, info)
  tok = tokenization.ReportTokenizer(data_cfg.tokenizer)
  rng = np.random.default_rng(0)
  n = samples
  t = {"read+parse": 0.0, "decode": 0.0, "augment": 0.0, "tokenise": 0.0, "crc": 0.0}
  for i in range(-8, n):  # 8 untimed warm-up samples.
    if i == 0:
      t = dict.fromkeys(t, 0.0)
    i %= len(source)
    t0 = time.thread_time()
    rec = records.parse_record(source[i])
    t1 = time.thread_time()
    img = augment.decode_png(rec.image_png)
    t2 = time.thread_time()
    x, _, _ = augment.train_view(img, np.zeros([0, 4]), rng, data_cfg.image_size,
                                 data_cfg.augment)
    _ = (x - data_cfg.mean) / data_cfg.std
    t3 = time.thread_time()
    tok.encode(rec.sentences, data_cfg.max_tokens, data_cfg.max_sentences)
    t4 = time.thread_time()
    tfrecord.crc32c(source[i])  # Measured apart: the share of read+parse spent in CRC32C.
    t5 = time.thread_time()
    tfrecord.crc32c(rec.image_png)
    t6 = time.thread_time()
    for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5)):
      t[key] += dt
  return {k: 1e3 * v / n for k, v in t.items()}


def _total(costs: dict[str, float]) -> float:
  return sum(v for k, v in costs.items() if k != "crc")  # crc is inside read+parse.


def pipeline_rate(data_cfg, batches: int, batch_size: int) -> float:
  """Samples/s of the training iterator after 2 warm-up batches."""
  with pipeline.make_train_iterator(data_cfg, global_batch_size=batch_size) as it:
    for _ in range(2):
      next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def main(argv):
  del argv
  command = "python " + " ".join(sys.argv)
  tmp = None
  dataset_dir = _DATASET_DIR.value
  if not dataset_dir:
    tmp = tempfile.TemporaryDirectory(prefix="mmrl_bench_")
    t0 = time.perf_counter()
    dataset_dir = str(write_synthetic_dataset(pathlib.Path(tmp.name), _RECORDS.value,
                                              _SOURCE_SIZE.value))
    print(f"wrote {_RECORDS.value} synthetic {_SOURCE_SIZE.value}² records to {dataset_dir} in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
  source = grain_source.TFRecordIndexSource(
      [pathlib.Path(dataset_dir) / s["path"] for s in
       pipeline.dataset_info(dataset_dir)["splits"][_SPLIT.value]["shards"]])
  mean_bytes = float(np.mean([len(source[i]) for i in range(min(32, len(source)))]))

  rows = []
  per_core = {}
  for size in [int(s) for s in _IMAGE_SIZE.value]:
    cfg = base.base_config().data
    cfg.dataset_dir = dataset_dir
    cfg.train_split = _SPLIT.value
    cfg.image_size = size
    costs = per_core_costs(cfg, dataset_dir, _PER_CORE_SAMPLES.value or min(128, len(source)))
    per_core[size] = costs
    for w in [int(x) for x in _WORKERS.value]:
      cfg.num_workers = w
      rate = pipeline_rate(cfg, _BATCHES.value, _BATCH_SIZE.value)
      rows.append((size, w, rate, rate / max(w, 1)))
      print(f"size {size} workers {w}: {rate:.1f} samples/s", file=sys.stderr)

  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"\nMachine: {os.cpu_count()} cores (nproc), {cpu_model()}, Python "
        f"{platform.python_version()}; load average {load}; date {now}")
  print(f"Command: `{command}`")
  print(f"Data: {dataset_dir if _DATASET_DIR.value else 'synthetic'}, {len(source)} records, "
        f"mean record {mean_bytes / 1024:.0f} KiB; batch {_BATCH_SIZE.value}, "
        f"{_BATCHES.value} timed batches after 2 warm-up\n")
  print("Per-core cost, one thread, CPU ms/sample (thread CPU time):\n")
  crc_impl = "C" if tfrecord.FAST_CRC32C is not None else "numpy"
  print(f"| output | read+parse (of which CRC32C, {crc_impl}) | PNG decode | augment+resize | "
        "tokenise | total | samples/s/core |")
  print("|---|---|---|---|---|---|---|")
  for size, c in per_core.items():
    total = _total(c)
    print(f"| {size}² | {c['read+parse']:.2f} ({c['crc']:.2f}) | {c['decode']:.2f} | "
          f"{c['augment']:.2f} | {c['tokenise']:.2f} | {total:.2f} | {1e3 / total:.0f} |")
  print("\nTraining iterator (make_train_iterator):\n")
  print("| output | workers | samples/s total | samples/s per worker |")
  print("|---|---|---|---|")
  for size, w, rate, per in rows:
    print(f"| {size}² | {w} | {rate:.0f} | {per:.0f} |")
  if 224 in per_core:
    core_rate = 1e3 / _total(per_core[224])
    est = core_rate * 15  # 16 cores, one left for the training loop.
    verdict = "meets" if est >= _TARGET else "misses"
    print(f"\nExtrapolation: {core_rate:.0f} samples/s/core x 15 worker cores = {est:.0f} "
          f"samples/s at 224² on a 16-core host; {verdict} the {_TARGET:.0f} samples/s target "
          "(assumes linear scaling across workers; per-core costs measured on this machine).")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  app.run(main)
