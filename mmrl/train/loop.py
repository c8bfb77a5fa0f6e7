"""The one training loop: `train_and_evaluate(config, workdir)`.

batch (Grain, per process) -> global jax.Array on the mesh -> jitted sharded step -> metrics
(logged one step late, so the host never waits on the device) -> periodic evaluation (the
evaluators of config.eval, each on its own schedule; mmrl.evaluation.runner) ->
Orbax checkpoints {state, data-iterator position, config}. A workdir that holds a checkpoint is
resumed exactly; `train.init_from` loads towers only. A non-finite loss stops the run before any
state with it is saved.
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import tqdm

from data_pipeline import pipeline as data_lib
from data_pipeline import synthetic_dataset
from mmrl.evaluation.runner import EvalRunner
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import checkpoint as ckpt_lib
from mmrl.train import metric_writers
from mmrl.train import state as state_lib
from mmrl.train import step as step_lib

log = logging.getLogger(__name__)

TOWER_KEYS = ("image_tower", "text_tower")


class NonFiniteLossError(RuntimeError):
  """Raised when a step produced a NaN/inf loss; the last saved checkpoint is still good."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the last metrics."""
  workdir = pathlib.Path(workdir).absolute()
  distributed.initialize_from_config(config.multihost)
  pidx, pcount = jax.process_index(), jax.process_count()
  workdir.mkdir(parents=True, exist_ok=True)

  config = _with_dataset_dir(config, workdir)
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch_size(config.train.batch_size, mesh, key="train.batch_size")
  mesh_lib.check_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
  config_json = json.loads(config.to_json_best_effort())
  if pidx == 0:
    (workdir / "config.json").write_text(json.dumps(config_json, indent=2))
  writer = metric_writers.make_writers(workdir, process_index=pidx)
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep_last=config.train.keep_last,
                               keep_every=config.train.keep_every,
                               async_save=config.train.async_checkpoint)

  state, state_shardings = state_lib.create_train_state(config, jax.random.key(config.seed), mesh)
  train_iter = data_lib.make_train_iterator(
      config.data, global_batch_size=config.train.batch_size, process_index=pidx,
      process_count=pcount, seed=config.seed)

  start_step = 0
  if ckpt.latest_step() is not None:
    restored = ckpt.restore(state)
    state, start_step = restored.state, restored.step
    if restored.data_iter is not None:
      train_iter.set_state(restored.data_iter)
    log.info("resumed from %s at step %d", ckpt.directory, start_step)
  elif config.train.init_from:
    state = _load_towers(state, config.train.init_from)

  batch_sharding = mesh_lib.batch_sharding(mesh)
  to_global = lambda b: distributed.global_batch_from_local(b, mesh, batch_sharding)
  train_step = step_lib.make_train_step(config, mesh, state_shardings)
  evaluator = _make_evaluator(config, mesh, state_shardings)

  num_steps = config.train.num_steps
  last: dict[str, Any] = {}
  if start_step >= num_steps:
    log.info("nothing to do: checkpoint step %d >= train.num_steps %d", start_step, num_steps)
    train_iter.close()
    ckpt.close()
    return last

  first_batch = to_global(next(train_iter))
  t0 = time.time()
  compiled = train_step.lower(state, first_batch).compile()
  _log_compiled(compiled, time.time() - t0, writer, start_step)

  pending: Optional[tuple[int, Any]] = None  # (step, device metrics) of the step before
  bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=pidx != 0, unit="step",
                  mininterval=2.0, dynamic_ncols=True)
  timer = (time.time(), start_step)
  batch = first_batch
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = compiled(state, batch)
      if pending is not None:
        last = _finish_step(*pending, writer, config, timer, bar)
        if "samples_per_s" in last:
          timer = (time.time(), pending[0])
      pending = (step, metrics)
      save_now = step % config.train.checkpoint_every == 0 or step == num_steps
      # The iterator position that matches `state`: taken before the next batch is fetched.
      iter_state = train_iter.get_state() if save_now else None
      if step < num_steps:
        batch = to_global(next(train_iter))  # overlaps with the step running on device
      if save_now:
        _check_finite(step, metrics)
        ckpt.save(step, state, data_iter=iter_state, config=config_json)
      due = evaluator.due(step, num_steps) if evaluator is not None else []
      if due:
        eval_metrics, eval_images = evaluator(state, due)
        writer.write_scalars(step, eval_metrics)
        writer.write_images(step, eval_images)
        last.update(eval_metrics)
    if pending is not None:
      last.update(_finish_step(*pending, writer, config, timer, bar))
  finally:
    bar.close()
    ckpt.close()
    train_iter.close()
    writer.close()
  last["skipped_records"] = float(getattr(train_iter, "num_skipped", 0))
  if pidx == 0:
    print(f"\nrun directory: {workdir}\n  metrics:     {workdir / 'metrics.jsonl'}\n"
          f"  tensorboard: tensorboard --logdir {workdir / 'tensorboard'}\n"
          f"  checkpoints: {workdir / 'checkpoints'} (steps {ckpt.all_steps()})", flush=True)
  return last


def _with_dataset_dir(config, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """A copy of `config` whose data.dataset_dir names the shards (made by process 0 if needed)."""
  if jax.process_index() == 0:
    path = synthetic_dataset.resolve_dataset_dir(config.data, workdir, make=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("mmrl:dataset_ready")
    path = synthetic_dataset.resolve_dataset_dir(config.data, workdir, make=False)
  config = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  config.data.dataset_dir = str(path)
  return config


def _finish_step(step, metrics, writer, config, timer, bar) -> dict[str, Any]:
  """Checks the previous step's metrics (already computed) and logs them every log_every."""
  _check_finite(step, metrics)
  bar.update(1)
  if step % config.train.log_every and step != config.train.num_steps:
    return {}
  host = {k: float(v) for k, v in jax.device_get(metrics).items()}
  elapsed = time.time() - timer[0]
  if step > timer[1] and elapsed > 0:
    host["steps_per_s"] = (step - timer[1]) / elapsed
    host["samples_per_s"] = host["steps_per_s"] * config.train.batch_size
  bar.set_postfix(loss=f"{host.get('loss', float('nan')):.4f}",
                  samples_s=f"{host.get('samples_per_s', 0):.1f}")
  writer.write_scalars(step, host)
  return host


def _check_finite(step: int, metrics: dict) -> None:
  if "nonfinite" in metrics and bool(jax.device_get(metrics["nonfinite"])):
    loss = float(jax.device_get(metrics.get("loss", np.nan)))
    raise NonFiniteLossError(
        f"step {step}: loss is {loss} (non-finite); the update was discarded and the run stopped "
        "before saving it. The last checkpoint is good: lower optim.lr, check the data "
        "(data.on_bad_record) or enable optim.clip_norm, then resume.")


def _log_compiled(compiled, seconds: float, writer, step: int) -> None:
  mem = compiled.memory_analysis()
  info = {"compile_s": seconds}
  if mem is not None:
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes"):
      if hasattr(mem, name):
        info["memory/" + name.replace("_in_bytes", "_mib")] = getattr(mem, name) / 2**20
  log.info("compiled train step in %.1fs; per-device memory: %s", seconds,
           ", ".join(f"{k}={v:.1f}" for k, v in info.items() if k.startswith("memory/")))
  print("compiled train step: " + json.dumps({k: round(v, 2) for k, v in info.items()}),
        flush=True)
  writer.write_scalars(step, info)


def _make_evaluator(config, mesh, state_shardings) -> Optional[EvalRunner]:
  """The evaluators of config.eval.* (mmrl.evaluation.runner); None when none is enabled."""
  runner = EvalRunner(config, mesh, state_shardings)
  return runner if runner.enabled() else None


def _load_towers(state, init_from: str):
  """Copies the tower parameters (and BatchNorm statistics) of another run's last checkpoint."""
  path = pathlib.Path(init_from)
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  raw = ckpt_lib.Checkpointer(path, async_save=False).restore_raw_state()
  new = state
  for collection in ("params", "batch_stats"):
    ours = getattr(state, collection, None)
    theirs = raw.get(collection) if isinstance(raw, dict) else None
    if not ours or not theirs:
      continue
    updated = dict(ours)
    for key in TOWER_KEYS:
      if key in ours and key in theirs:
        updated[key] = jax.tree.map(
            lambda a, b: jax.device_put(np.asarray(b, a.dtype).reshape(a.shape), a.sharding),
            ours[key], theirs[key])
        log.info("init_from %s: loaded %s/%s", path, collection, key)
    new = new.replace(**{collection: updated})
  return new
