"""mmrl's jitted, sharded train step: samples/s, step time, MFU, peak memory and compile time.

COMMAND (GPU): python benchmarks/step.py --methods=convirt,lovt --image_towers=resnet50 \
                 --batch_sizes=64,128,256 --json_out=/tmp/step.jsonl
               python benchmarks/step.py --methods=lovt,gloria,place --batch_sizes=512 --time_local_loss
               (benchmarks/gpu_run.sh runs the whole issue-6 set next to the PyTorch reference)
SMOKE (CPU):   JAX_PLATFORMS=cpu python benchmarks/step.py --tiny --methods=convirt --steps=2 --warmup=1

For each method x image tower x batch size it builds the method's config
(experiments/configs/<method>.py) with a random-init BERT-base text tower (12 layers, 768 wide, 12
heads, 3072 MLP, --seq_len tokens) and the chosen image tower at --image_size, creates the
TrainState sharded on a mesh of all devices (mmrl.train.state) and compiles mmrl.train.step's
train step. Batches are synthetic, built with numpy in the data contract's shapes and dtypes
(data_pipeline/batch_spec.py: random token ids, right padding, ~12-token sentences, two word-pieces
per word) and put on the devices once: the measurement is the step alone. No grain, pydicom or
data set is needed (ml_collections is: see benchmarks/gpu_run.sh for carrying its wheel).

By default the methods' text-layer freezing is switched off (--keep_freeze keeps it), so every
parameter trains, as in benchmarks/torch_reference.py.

One JSON line per measurement on stdout (and appended to --json_out):
  samples_per_s, step_ms (mean over --steps after --warmup, one block at the end: no host sync
  inside the timed loop), compile_s (lower + compile; with --compilation_cache_dir a warm cache
  makes it the load time), flops_per_step (benchmarks/flops.py, analytic, 2 FLOPs per MAC),
  tflops_per_s, mfu (flops / step time / (peak x devices); peak from --peak_tflops or the table in
  flops.py by device kind; null on CPU), peak_memory_gib (device.memory_stats()
  'peak_bytes_in_use', the process's peak so far: batch sizes run in increasing order, so each
  row's value is that batch's peak; null where the backend has no statistics), the compiled
  step's temp/argument sizes, loss after the timed steps.
Modes:
  --time_local_loss     also times the step with the method's local objectives removed (only
                        'clip_nce' kept); local_loss_share = 1 - t_global / t_full. The local heads'
                        forward still runs in both (BatchNorm statistics), so this is the cost of the
                        local losses and their backward.
  --with_input_pipeline also feeds real pipeline batches (data_pipeline.pipeline.make_train_iterator
                        over --dataset_dir, or a synthetic data set made by
                        data_pipeline.synthetic_dataset), prefetched to the devices by a background
                        thread, and reports pipeline_ratio = t_device_resident / t_pipeline (target
                        >= 0.9). Needs grain + pydicom; when they are missing the row says
                        'skipped' and the run goes on.
  --tiny                CPU smoke sizes: each method's tiny config (tiny towers, 32-64 px, batch 8,
                        float32) with 1 text layer (and 1 PLACE decoder / predictor layer).

Over 400 lines on purpose: one job, one benchmark script (config building, synthetic batches,
timing, MFU and memory read-outs) that must run standalone on a bare GPU machine; its parts only
make sense together.
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import pathlib
import queue
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Iterator

from absl import app
from absl import flags
import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks import flops as flops_lib  # noqa: E402

ALL_METHODS = ("convirt", "lovt", "gloria", "place")
GLOBAL_OBJECTIVES = ("clip_nce",)
_TINY_ARG = {"convirt": "smoke"}
_TINY_TOWER = {"resnet50": "resnet_tiny", "resnet18": "resnet_tiny", "vit_b16": "vit_tiny",
               "vit_s16": "vit_tiny"}

_METHODS = flags.DEFINE_list("methods", list(ALL_METHODS), "methods (experiments/configs/<m>.py)")
_TOWERS = flags.DEFINE_list("image_towers", [],
                            "image towers (resnet50, vit_b16, ...); empty = each method's own")
_BATCHES = flags.DEFINE_list("batch_sizes", ["64", "128", "256", "512"], "global batch sizes")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "image side")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "text length (data.max_tokens, multiple of 64)")
_SENTENCES = flags.DEFINE_integer("max_sentences", 32, "data.max_sentences")
_TEXT_LAYERS = flags.DEFINE_integer("text_layers", 12, "BERT layers (random init)")
_TEXT_HIDDEN = flags.DEFINE_integer("text_hidden", 768, "BERT hidden size")
_TEXT_HEADS = flags.DEFINE_integer("text_heads", 12, "BERT heads")
_TEXT_MLP = flags.DEFINE_integer("text_intermediate", 3072, "BERT intermediate size")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
_DTYPE = flags.DEFINE_enum("dtype", "", ["", "bfloat16", "float32", "float16"],
                           "config.model.dtype (compute; params and loss math stay float32); "
                           "'' = bfloat16, or the tiny config's float32 with --tiny")
_REMAT = flags.DEFINE_boolean("remat", False, "config.model.{image,text}.remat")
_IMAGE_NORM = flags.DEFINE_string("image_norm", "", "config.model.image.norm ('' = method's)")
_ATTENTION = flags.DEFINE_string(
    "attention_impl", "", "config.model.text.attention_impl when the config has that key "
    "('' = config default; ignored, with a note in the row, when the key does not exist)")
_KEEP_FREEZE = flags.DEFINE_boolean("keep_freeze", False, "keep the methods' text freezing")
_LOCAL = flags.DEFINE_boolean("time_local_loss", False, "also time without local objectives")
_PIPELINE = flags.DEFINE_boolean("with_input_pipeline", False,
                                 "also time with the real input pipeline (needs grain)")
_DATASET_DIR = flags.DEFINE_string("dataset_dir", "", "converted shards for --with_input_pipeline"
                                   " ('' = a synthetic data set)")
_WORKERS = flags.DEFINE_integer("pipeline_workers", -1,
                                "data.num_workers for --with_input_pipeline (-1 = cores - 1)")
_PATIENTS = flags.DEFINE_integer("synthetic_patients", 64,
                                 "synthetic patients when --dataset_dir is ''")
_CACHE = flags.DEFINE_string("compilation_cache_dir", "",
                             "JAX persistent compilation cache ('' = off)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "peak TFLOP/s per device (0 = by device kind)")
_TINY = flags.DEFINE_boolean("tiny", False, "CPU smoke sizes (tiny towers and batches)")
_JSON_OUT = flags.DEFINE_string("json_out", "", "append each JSON line to this file too")


# ---------------------------------------------------------------------------------------------
# Config and batch
# ---------------------------------------------------------------------------------------------


def bench_config(method: str, image_tower: str, batch_size: int, *, tiny: bool = False,
                 image_size: int = 224, seq_len: int = 128, max_sentences: int = 32,
                 text_layers: int = 12, text_hidden: int = 768, text_heads: int = 12,
                 text_intermediate: int = 3072, dtype: str = "", remat: bool = False,
                 image_norm: str = "", attention_impl: str = "", keep_freeze: bool = False,
                 global_only: bool = False):
  """The method's config at benchmark sizes (see the module docstring); '' tower = method's."""
  module = importlib.import_module(f"experiments.configs.{method}")
  if tiny:
    c = module.get_config(_TINY_ARG.get(method, "tiny"))
    c.model.text.num_layers = 1  # smoke: the smallest graph that still has every part
    if "place" in c.method:
      c.method.place.decoder_layers = c.method.place.predictor_layers = 1
    if image_tower:
      c.model.image.name = _TINY_TOWER.get(image_tower, image_tower)
  else:
    c = module.get_config()
    c.model.image.weights = "none"  # step time does not depend on the initial values
    if image_tower:
      c.model.image.name = image_tower
    c.data.image_size = image_size
    c.data.max_tokens = seq_len
    c.data.max_sentences = max_sentences
    c.model.text.weights = ""
    c.model.text.num_layers = text_layers
    c.model.text.hidden_size = text_hidden
    c.model.text.num_heads = text_heads
    c.model.text.intermediate_size = text_intermediate
  if dtype or not tiny:
    c.model.dtype = dtype or "bfloat16"
  c.model.image.remat = remat
  c.model.text.remat = remat
  if image_norm:
    c.model.image.norm = image_norm
  if attention_impl and "attention_impl" in c.model.text:
    c.model.text.attention_impl = attention_impl
  if not keep_freeze:
    c.optim.freeze.text_embeddings = False
    c.optim.freeze.text_first_n_layers = 0
  if global_only:
    c.method.objectives = [o for o in c.method.objectives if o["name"] in GLOBAL_OBJECTIVES]
  c.train.batch_size = batch_size
  c.eval.batch_size = batch_size
  c.train.num_steps = 1_000_000
  c.optim.warmup_steps = 10
  c.data.num_workers = 0
  return c


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A numpy batch in the data contract (data_pipeline/batch_spec.py) for `config.data`.

  Right-padded reports of L/2..L tokens ([CLS]=101 ... [SEP]=102, ids from the text vocabulary),
  sentences of 12 word-pieces, words of 2 pieces; standard-normal images; every example valid.
  """
  d = config.data
  rng = np.random.default_rng(seed)
  b, h, length, s = batch_size, int(d.image_size), int(d.max_tokens), int(d.max_sentences)
  vocab = int(config.model.text.get("vocab_size", 30522))
  lengths = rng.integers(length // 2, length + 1, size=b)
  pos = np.arange(length)[None, :]
  attention_mask = (pos < lengths[:, None]).astype(np.int32)
  content = (pos >= 1) & (pos < lengths[:, None] - 1)
  input_ids = rng.integers(1000, vocab, size=(b, length)).astype(np.int32)
  input_ids = np.where(content, input_ids, 0)
  input_ids[:, 0] = 101
  input_ids[np.arange(b), lengths - 1] = 102
  sentence = np.minimum((pos - 1) // 12, s - 1)
  token_to_sentence = np.where(content, sentence, -1).astype(np.int32)
  token_to_word = np.where(content, (pos - 1) // 2, -1).astype(np.int32)
  n_sentences = np.minimum(-(-(lengths - 2) // 12), s).astype(np.int32)
  k, nb = 14, int(d.get("max_boxes", 8))
  return {
      "image": rng.standard_normal((b, h, h, 1), dtype=np.float32),
      "input_ids": input_ids.astype(np.int32),
      "attention_mask": attention_mask,
      "token_to_sentence": token_to_sentence,
      "token_to_word": token_to_word,
      "sentence_mask": np.arange(s)[None, :] < n_sentences[:, None],
      "n_sentences": n_sentences,
      "labels": rng.choice([0.0, 1.0], size=(b, k)).astype(np.float32),
      "label_mask": np.ones((b, k), bool),
      "study_id": np.arange(b, dtype=np.int32),
      "patient_id": np.arange(b, dtype=np.int32),
      "boxes": np.tile(np.array([0.25, 0.25, 0.75, 0.75], np.float32), (b, nb, 1)),
      "box_labels": np.full((b, nb), -1, np.int32),
      "box_mask": np.zeros((b, nb), bool),
      "valid": np.ones((b,), bool),
  }


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def device_info() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "num_devices": jax.device_count(), "jax_version": jax.__version__}


def peak_memory_gib() -> float | None:
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


class DevicePrefetch:
  """Iterates `to_device(next(source))` computed `size` batches ahead on a background thread, so
  host work (decode, augment, tokenise, the host-to-device copy) overlaps the device step."""

  def __init__(self, source: Iterator[Any], to_device, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()

    def run():
      try:
        while not self._stop.is_set():
          self._queue.put(to_device(next(source)))
      except BaseException as e:  # pylint: disable=broad-except
        self._queue.put(e)

    self._thread = threading.Thread(target=run, daemon=True)
    self._thread.start()

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass


def run_steps(config, batch_source, *, steps: int, warmup: int) -> dict[str, Any]:
  """Compiles the train step for `config` and times `steps` steps after `warmup`.

  `batch_source`: a dict of device arrays (reused every step) or an iterator of them.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from mmrl.train import step as step_lib  # pylint: disable=g-import-not-at-top

  mesh = mesh_lib.make_mesh(config.mesh)
  next_batch = ((lambda: batch_source) if isinstance(batch_source, dict)
                else (lambda: next(batch_source)))
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  train_step = step_lib.make_train_step(config, mesh, shardings)
  first = next_batch()
  t0 = time.perf_counter()
  compiled = train_step.lower(state, first).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  metrics = None
  batch = first
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
    batch = next_batch()
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
    batch = next_batch()
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  host = jax.device_get(metrics)
  out = {"compile_s": compile_s, "step_s": step_s, "loss": float(host["loss"]),
         "nonfinite": bool(host.get("nonfinite", False))}
  if mem is not None:
    for name in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
      if hasattr(mem, name):
        out["compiled_" + name.replace("_size_in_bytes", "_gib")] = getattr(mem, name) / 2**30
  return out


def _device_batch(config, batch_size: int):
  import jax  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh(config.mesh)
  batch = distributed.global_batch_from_local(synthetic_batch(config, batch_size), mesh)
  return jax.block_until_ready(batch)


def pipeline_source(config, template: dict[str, np.ndarray], workdir: pathlib.Path):
  """(DevicePrefetch over the real training iterator, its close function), or (None, reason)."""
  try:
    import grain  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    from data_pipeline import synthetic_dataset  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"skipped: {e} (the input pipeline needs grain and pydicom)"
  from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  data = config.data
  if _DATASET_DIR.value:
    data.dataset_dir = _DATASET_DIR.value
  else:
    data.synthetic.num_patients = _PATIENTS.value
    data.synthetic.cache_dir = str(workdir / "synthetic")
    data.dataset_dir = str(synthetic_dataset.resolve_dataset_dir(data, workdir, make=True))
  workers = _WORKERS.value if _WORKERS.value >= 0 else max((os.cpu_count() or 2) - 1, 0)
  data.num_workers = workers
  it = pipeline.make_train_iterator(data, global_batch_size=int(config.train.batch_size), seed=0)
  mesh = mesh_lib.make_mesh(config.mesh)

  def to_device(b):
    local = {k: np.asarray(b[k]).astype(v.dtype) for k, v in template.items()}
    return distributed.global_batch_from_local(local, mesh)

  prefetch = DevicePrefetch(it, to_device, size=2)

  def close():
    prefetch.close()
    it.close()
  return (prefetch, close), f"workers={workers}"


def measure(method: str, tower: str, batch_size: int, *, mode: str = "synthetic",
            workdir: pathlib.Path | None = None) -> dict[str, Any]:
  """One row: mode 'synthetic' | 'global_only' | 'input_pipeline'."""
  config = bench_config(
      method, tower, batch_size, tiny=_TINY.value, image_size=_IMAGE_SIZE.value,
      seq_len=_SEQ_LEN.value, max_sentences=_SENTENCES.value, text_layers=_TEXT_LAYERS.value,
      text_hidden=_TEXT_HIDDEN.value, text_heads=_TEXT_HEADS.value,
      text_intermediate=_TEXT_MLP.value, dtype=_DTYPE.value, remat=_REMAT.value,
      image_norm=_IMAGE_NORM.value, attention_impl=_ATTENTION.value,
      keep_freeze=_KEEP_FREEZE.value, global_only=mode == "global_only")
  info = device_info()
  row: dict[str, Any] = {
      "bench": "mmrl_step", "mode": mode, "method": method,
      "image_tower": str(config.model.image.name), "batch_size": batch_size,
      "image_size": int(config.data.image_size), "seq_len": int(config.data.max_tokens),
      "text_layers": int(config.model.text.num_layers), "dtype": str(config.model.dtype),
      "remat": _REMAT.value, "image_norm": str(config.model.image.norm),
      "attention_impl": (str(config.model.text.attention_impl)
                         if "attention_impl" in config.model.text else "n/a (no config key)"),
      "objectives": [str(o["name"]) for o in config.method.objectives],
      "steps": _STEPS.value, "compilation_cache": _CACHE.value or None, **info}
  try:
    if mode == "input_pipeline":
      template = synthetic_batch(config, batch_size)
      source, note = pipeline_source(config, template, workdir or pathlib.Path(tempfile.mkdtemp()))
      row["pipeline"] = note
      if source is None:
        row["skipped"] = note
        return row
      prefetch, close = source
      try:
        row.update(run_steps(config, prefetch, steps=_STEPS.value, warmup=_WARMUP.value))
      finally:
        close()
    else:
      row.update(run_steps(config, _device_batch(config, batch_size), steps=_STEPS.value,
                           warmup=_WARMUP.value))
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    print(traceback.format_exc(), file=sys.stderr)
    return row
  f = flops_lib.step_flops(config, batch_size)
  row.update(f.as_dict())
  row["step_ms"] = 1e3 * row["step_s"]
  row["samples_per_s"] = batch_size / row["step_s"]
  row["tflops_per_s"] = f.total / row["step_s"] / 1e12
  peak = _PEAK.value or flops_lib.peak_tflops(info["device_kind"])
  row["peak_tflops"] = peak
  row["mfu"] = (row["tflops_per_s"] / (peak * info["num_devices"])) if peak else None
  row["peak_memory_gib"] = peak_memory_gib()
  return row


def emit(row: dict[str, Any]) -> None:
  line = json.dumps(row, sort_keys=True, default=str)
  print(line, flush=True)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "a") as f:
      f.write(line + "\n")


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path` (every compiled program, however fast)."""
  import jax  # pylint: disable=g-import-not-at-top
  pathlib.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main(argv):
  del argv
  if _CACHE.value:
    enable_compilation_cache(_CACHE.value)
  command = "python " + " ".join(sys.argv)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  batches = sorted(int(b) for b in _BATCHES.value)
  if _TINY.value and _BATCHES.value == _BATCHES.default:
    batches = [8]
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="mmrl_step_bench_"))
  for method in _METHODS.value:
    for tower in (_TOWERS.value or [""]):
      for b in batches:
        rows = [measure(method, tower, b)]
        if _LOCAL.value:
          full = rows[0]
          if len(full.get("objectives", [])) > sum(o in GLOBAL_OBJECTIVES
                                                    for o in full.get("objectives", [])):
            glob = measure(method, tower, b, mode="global_only")
            if "step_s" in full and "step_s" in glob:
              share = 1.0 - glob["step_s"] / full["step_s"]
              full["local_loss_share"] = glob["local_loss_share"] = share
            rows.append(glob)
          else:
            full["local_loss_share"] = 0.0
        if _PIPELINE.value:
          pipe = measure(method, tower, b, mode="input_pipeline", workdir=workdir)
          if "step_s" in pipe and "step_s" in rows[0]:
            pipe["pipeline_ratio"] = rows[0]["step_s"] / pipe["step_s"]
          rows.append(pipe)
        for row in rows:
          row.update(date=date, command=command)
          emit(row)
        print(f"{method} {rows[0]['image_tower']} batch {b}: " + (
            f"{rows[0]['samples_per_s']:.1f} samples/s, {rows[0]['step_ms']:.1f} ms/step"
            if "samples_per_s" in rows[0] else rows[0].get("error", rows[0].get("skipped", "?"))),
              file=sys.stderr, flush=True)


if __name__ == "__main__":
  app.run(main)
