"""Each method's loss after N steps and its CPU step time, through the real training loop.

COMMAND: JAX_PLATFORMS=cpu python benchmarks/methods_cpu.py --size=demo --steps=50
SMOKE:   JAX_PLATFORMS=cpu python benchmarks/methods_cpu.py --methods=convirt --size=tiny --steps=2
For every method it builds the config at the chosen size, trains `--steps` steps with
`mmrl.loop.train_and_evaluate` in a temporary workdir (retrieval evaluation off, synchronous
checkpoint only at the end, every step logged) and reads `metrics.jsonl`:
  - loss at step 1 and at step N, and each objective's loss ('<objective>/loss' keys) at step N;
  - steady-state step time: the median of the loop's per-step `1/steps_per_s` rows for steps
    3..N-1 (compile is timed separately by the loop as `compile_s`; step 1's row also holds the
    first execution, step 2's the data-iterator warm-up, step N's the final checkpoint save);
  - the number of parameters (from the model's `init` shapes, no compute).
Sizes:
  tiny: the method's own `tiny` (`smoke` for convirt) config, i.e. `make_tiny` (32 px, batch 8)
    plus the method's shrunken heads; lovt uses 64 px.
  demo: the tiny config enlarged to the demo's data (experiments/configs/demo.py: 256 px DICOMs
    stored at 96 px, 64 tokens, 16 sentences) at --image_size (default 64) and --batch_size
    (default 16), --patients synthetic patients shared across methods through one
    `data.synthetic.cache_dir` (--data_cache). Towers stay the tiny ones (resnet_tiny / vit_tiny,
    a 2-layer 32-d random-init BERT); these are not the paper sizes.
Prints a markdown table with the machine (nproc, CPU model, load average), the date and the
command.
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import traceback

from absl import app
from absl import flags

from mmrl.machine_info import cpu_model

ALL_METHODS = ("convirt", "gloria", "mgca", "lovt", "local_mi", "place", "mlip", "lrclr")
_TINY_ARG = {"convirt": "smoke"}  # every other method config takes 'tiny'

_METHODS = flags.DEFINE_list("methods", list(ALL_METHODS),
                             "methods to run (config files experiments/configs/<name>.py); "
                             "ones whose config is missing or fails to import are listed as "
                             "pending")
_STEPS = flags.DEFINE_integer("steps", 50, "training steps per method")
_SIZE = flags.DEFINE_enum("size", "demo", ["tiny", "demo"], "config size (see the docstring)")
_DATA_CACHE = flags.DEFINE_string("data_cache", "",
                                  "shared data.synthetic.cache_dir; '' = a folder under the "
                                  "system temp dir, reused between runs")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "demo size: data.image_size")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "demo size: train.batch_size")
_PATIENTS = flags.DEFINE_integer("patients", 200, "demo size: synthetic patients")
_KEEP = flags.DEFINE_string("keep_workdirs", "", "if set, train into <this>/<method> and keep it")




def load_average() -> str:
  return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def load_config_module(method: str):
  """Imports experiments.configs.<method>; raises ImportError naming the file when it can't."""
  return importlib.import_module(f"experiments.configs.{method}")


def make_config(method: str, size: str, *, steps: int, data_cache: str, image_size: int = 64,
                batch_size: int = 16, patients: int = 200):
  """The method's config at `size`, set up for a `steps`-step benchmark run."""
  module = load_config_module(method)
  c = module.get_config(_TINY_ARG.get(method, "tiny"))
  if size == "demo":
    from experiments.configs import demo  # pylint: disable=g-import-not-at-top
    d = demo.get_config()
    c.data.synthetic.image_size = d.data.synthetic.image_size
    c.data.synthetic.short_side = d.data.synthetic.short_side
    c.data.synthetic.num_patients = patients
    c.data.max_tokens = d.data.max_tokens
    c.data.max_sentences = d.data.max_sentences
    c.data.augment = d.data.augment
    c.data.image_size = image_size
    c.train.batch_size = batch_size
    c.eval.batch_size = batch_size
  elif size != "tiny":
    raise ValueError(f"size={size!r} is not known; use 'tiny' or 'demo'")
  c.data.synthetic.cache_dir = data_cache
  c.data.num_workers = 0
  c.eval.retrieval.enabled = False
  c.train.num_steps = steps
  # The schedule needs num_steps > warmup_steps; tiny configs warm up over 2 steps.
  c.optim.warmup_steps = min(int(c.optim.warmup_steps), max(steps - 1, 0))
  c.train.log_every = 1
  c.train.eval_every = steps
  c.train.checkpoint_every = steps
  c.train.async_checkpoint = False
  c.train.keep_last = 1
  return c


def count_params(config) -> int:
  """Number of trainable parameters, from the model's abstract `init` (no arrays are made)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  model, _ = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  shapes = jax.eval_shape(
      lambda r: model.init({"params": r, "dropout": r}, batch, train=False)["params"],
      jax.random.key(0))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def summarise(rows: list[dict], steps: int) -> dict:
  """Reads one run's metrics.jsonl rows into the table's numbers."""
  train = {r["step"]: r for r in rows if "loss" in r}
  compile_s = next((r["compile_s"] for r in rows if "compile_s" in r), math.nan)
  if not train:
    raise ValueError("metrics.jsonl has no 'loss' rows: did the run log (train.log_every)?")
  first, last = train[min(train)], train[max(train)]
  # The last step's row also holds the (synchronous) final checkpoint save: left out.
  times = [1.0 / r["steps_per_s"] for s, r in sorted(train.items())
           if 3 <= s < steps and r.get("steps_per_s")]
  if not times:  # very short runs: use whatever per-step rows there are
    times = [1.0 / r["steps_per_s"] for s, r in train.items()
             if (s < steps or len(train) == 1) and r.get("steps_per_s")]
  objectives = {k: v for k, v in last.items() if k.endswith("/loss") or k.endswith("_loss")}
  return dict(first_step=min(train), first_loss=first["loss"], last_step=max(train),
              last_loss=last["loss"], objectives=objectives, compile_s=compile_s,
              step_s=statistics.median(times) if times else math.nan,
              timed_steps=len(times))


def run_method(method: str, config, workdir: pathlib.Path) -> dict:
  """Trains `config` in `workdir` with the library's loop; returns `summarise`'s dict + params."""
  from mmrl import loop  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  loop.train_and_evaluate(config, workdir)
  wall = time.time() - t0
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
  out = summarise(rows, config.train.num_steps)
  out.update(method=method, wall_s=wall, params=count_params(config),
             image_tower=config.model.image.name, image_size=config.data.image_size,
             batch_size=config.train.batch_size)
  return out


def _fmt(x: float, digits: int = 3) -> str:
  return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(results: list[dict]) -> str:
  """The markdown table of `results` (one row per method)."""
  lines = ["| method | image tower, px, batch | params | loss @ first step | loss @ last step "
           "| per-objective loss @ last step | step time (median, s) | compile (s) | wall (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    objs = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["objectives"].items())) or "-"
    lines.append(
        f"| {r['method']} | {r['image_tower']}, {r['image_size']}, {r['batch_size']} "
        f"| {r['params'] / 1e6:.2f} M | {_fmt(r['first_loss'])} (step {r['first_step']}) "
        f"| {_fmt(r['last_loss'])} (step {r['last_step']}) | {objs} "
        f"| {_fmt(r['step_s'])} (n={r['timed_steps']}) | {_fmt(r['compile_s'], 1)} "
        f"| {_fmt(r['wall_s'], 0)} |")
  return "\n".join(lines)


def main(argv):
  del argv
  command = "JAX_PLATFORMS=" + os.environ.get("JAX_PLATFORMS", "") + " python " + " ".join(
      sys.argv)
  start = datetime.datetime.now(datetime.timezone.utc)
  load_before = load_average()
  unknown = [m for m in _METHODS.value if m not in ALL_METHODS]
  if unknown:
    raise app.UsageError(f"--methods={','.join(_METHODS.value)}: unknown {unknown}; "
                         f"known: {', '.join(ALL_METHODS)}")
  data_cache = _DATA_CACHE.value or str(pathlib.Path(tempfile.gettempdir()) /
                                        "mmrl_methods_cpu_data")
  results, pending = [], []
  for method in _METHODS.value:
    try:
      config = make_config(method, _SIZE.value, steps=_STEPS.value, data_cache=data_cache,
                           image_size=_IMAGE_SIZE.value, batch_size=_BATCH_SIZE.value,
                           patients=_PATIENTS.value)
    except Exception as e:  # pylint: disable=broad-except
      pending.append(f"{method}: config not available ({type(e).__name__}: {e})")
      continue
    try:
      if _KEEP.value:
        workdir = pathlib.Path(_KEEP.value) / method
        results.append(run_method(method, config, workdir))
      else:
        with tempfile.TemporaryDirectory(prefix=f"mmrl_{method}_") as tmp:
          results.append(run_method(method, config, pathlib.Path(tmp)))
      print(f"[methods_cpu] {method}: done; load average {load_average()}", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      pending.append(f"{method}: run failed ({type(e).__name__}: {str(e).splitlines()[0]})")

  end = datetime.datetime.now(datetime.timezone.utc)
  print(f"\n## Methods on CPU: {_STEPS.value} steps at size '{_SIZE.value}'\n")
  print(table(results))
  for line in pending:
    print(f"\nnot run: {line}")
  print(f"\nMachine: {os.cpu_count()} cores (nproc), {cpu_model()}, Python "
        f"{platform.python_version()}; load average (1/5/15 min) before {load_before}, after "
        f"{load_average()}; date {start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC; data cache {data_cache}")
  print(f"Command: `{command}`")


if __name__ == "__main__":
  app.run(main)
