"""The one training loop: `train_and_evaluate(config, workdir)`.

batch (Grain, per process) -> global jax.Array on the mesh -> jitted sharded step -> metrics
(logged one step late, so the host never waits on the device) -> periodic evaluation (the
evaluators of config.eval, each on its own schedule; mmrl.evaluation.runner) ->
Orbax checkpoints {state, data-iterator position, config}. A workdir that holds a checkpoint is
resumed exactly; `train.init_from` loads towers only.

Faults (docs/fault_tolerance.md): the config is validated before anything is built; a NaN/inf
loss or gradient never reaches the state (the step keeps the old one) and, by
`train.on_nonfinite`, stops the run naming the step and the batch's study ids or is skipped and
counted; SIGTERM (preemption) finishes the current step, writes a final checkpoint and raises
`Preempted`; a workdir that cannot be written is a ConfigError before training starts.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import threading
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import tqdm

from data_pipeline import pipeline as data_lib
from data_pipeline import synthetic_dataset
from mmrl.train import validation as config_validation
from mmrl.config_errors import ConfigError
from mmrl.evaluation.runner import EvalRunner
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import checkpoint as ckpt_lib
from mmrl.train import metric_writers
from mmrl.train import run_dir
from mmrl.train import state as state_lib
from mmrl.train import step as step_lib
from mmrl.train import text_feature_cache

log = logging.getLogger(__name__)

TOWER_KEYS = run_dir.TOWER_KEYS


class NonFiniteLossError(RuntimeError):
  """Raised when a step produced a NaN/inf loss; the last saved checkpoint is still good."""


class Preempted(Exception):
  """SIGTERM (preemption) stopped the run after a final checkpoint at `step`; re-run to resume."""

  def __init__(self, step: int, checkpoint_dir: pathlib.Path):
    super().__init__(f"preempted (SIGTERM): saved a final checkpoint at step {step} in "
                     f"{checkpoint_dir}; run the same command again to resume from it")
    self.step = step
    self.checkpoint_dir = checkpoint_dir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the last metrics."""
  workdir = pathlib.Path(workdir).absolute()
  config_validation.validate_config(config)
  distributed.initialize_from_config(config.multihost)
  pidx, pcount = jax.process_index(), jax.process_count()
  _check_writable(workdir)

  config = _with_dataset_dir(config, workdir)
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch_size(config.train.batch_size, mesh, key="train.batch_size")
  mesh_lib.check_batch_size(config.eval.batch_size, mesh, key="eval.batch_size")
  config_json = run_dir.config_json(config)
  if pidx == 0:
    run_dir.write_config(workdir, config_json)
  writer = metric_writers.make_writers(workdir, process_index=pidx)
  ckpt = ckpt_lib.Checkpointer(workdir / run_dir.CHECKPOINTS, keep_last=config.train.keep_last,
                               keep_every=config.train.keep_every,
                               async_save=config.train.async_checkpoint)

  state, state_shardings = state_lib.create_train_state(config, jax.random.key(config.seed), mesh)
  train_iter = data_lib.make_train_iterator(
      config.data, global_batch_size=config.train.batch_size, process_index=pidx,
      process_count=pcount, seed=config.seed)

  start_step = 0
  guard = _NonFiniteGuard(config.train)
  if ckpt.latest_step() is not None:
    restored = ckpt.restore(state)
    state, start_step = restored.state, restored.step
    if restored.data_iter is not None:
      train_iter.set_state(restored.data_iter)
      guard.skipped = int(restored.data_iter.get("nonfinite_skipped", 0))
    log.info("resumed from %s at step %d", ckpt.directory, start_step)
  elif config.train.init_from:
    state = run_dir.load_towers(state, config.train.init_from)

  # Frozen text tower: each report's features are computed once (never checkpointed: rebuilt
  # here from the restored / loaded weights).
  text_cache = (text_feature_cache.TextFeatureCache(config, state.params["text_tower"])
                if text_feature_cache.enabled(config) else None)
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

  def next_batch():
    host = next(train_iter)
    if text_cache is not None:
      host = text_cache.add_to_batch(host)
    # The host-side ids of the batch, to name it if its step turns out non-finite.
    return to_global(host), np.asarray(host["study_id"]).copy()

  batch, batch_ids = next_batch()
  t0 = time.time()
  compiled = train_step.lower(state, batch).compile()
  _log_compiled(compiled, time.time() - t0, writer, start_step)

  pending: Optional[tuple[int, Any, np.ndarray]] = None  # (step, device metrics, ids) before
  bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=pidx != 0, unit="step",
                  mininterval=2.0, dynamic_ncols=True)
  timer = (time.time(), start_step)
  preemption = _PreemptionWatch()
  preempted_at = None
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = compiled(state, batch)
      if pending is not None:
        last = _finish_step(*pending, writer, config, timer, bar, guard)
        if "samples_per_s" in last:
          timer = (time.time(), pending[0])
      pending = (step, metrics, batch_ids)
      stop = preemption.requested(step)
      save_now = step % config.train.checkpoint_every == 0 or step == num_steps or stop
      # The iterator position that matches `state`: taken before the next batch is fetched.
      iter_state = train_iter.get_state() if save_now else None
      if step < num_steps and not stop:
        batch, batch_ids = next_batch()  # overlaps with the step running on device
      if save_now:
        guard.check(step, metrics, pending[2])
        iter_state["nonfinite_skipped"] = guard.skipped
        ckpt.save(step, state, data_iter=iter_state, config=config_json)
      if stop:
        preempted_at = step
        break
      due = evaluator.due(step, num_steps) if evaluator is not None else []
      if due:
        eval_metrics, eval_images = evaluator(state, due)
        writer.write_scalars(step, eval_metrics)
        writer.write_images(step, eval_images)
        last.update(eval_metrics)
    if pending is not None:
      last.update(_finish_step(*pending, writer, config, timer, bar, guard, force_log=True))
  finally:
    preemption.close()
    bar.close()
    try:
      ckpt.close()
    finally:
      train_iter.close()
      writer.close()
  if preempted_at is not None:
    raise Preempted(preempted_at, pathlib.Path(ckpt.directory))
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


def _check_writable(workdir: pathlib.Path) -> None:
  """ConfigError naming `workdir` unless this process can create it and write into it."""
  probe = workdir / f".write_test_{jax.process_index()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--workdir={str(workdir)!r} cannot be written ({type(e).__name__}: "
                      f"{e.strerror or e}); choose a writable folder with free space") from e


def _finish_step(step, metrics, ids, writer, config, timer, bar, guard, *, force_log=False
                 ) -> dict[str, Any]:
  """Checks the previous step's metrics (already computed) and logs them every log_every."""
  guard.check(step, metrics, ids)
  bar.update(1)
  if step % config.train.log_every and step != config.train.num_steps and not force_log:
    return {}
  host = {k: float(v) for k, v in jax.device_get(metrics).items()}
  host["nonfinite_skipped"] = float(guard.skipped)
  elapsed = time.time() - timer[0]
  if step > timer[1] and elapsed > 0:
    host["steps_per_s"] = (step - timer[1]) / elapsed
    host["samples_per_s"] = host["steps_per_s"] * config.train.batch_size
  bar.set_postfix(loss=f"{host.get('loss', float('nan')):.4f}",
                  samples_s=f"{host.get('samples_per_s', 0):.1f}")
  writer.write_scalars(step, host)
  return host


class _NonFiniteGuard:
  """Applies `train.on_nonfinite` to each step's (on-device) `nonfinite` flag, once per step.

  The step itself already kept the old state (mmrl/train/step.py); here the run stops ('stop')
  or counts the skipped step ('skip', at most `train.max_nonfinite_skips`).
  """

  def __init__(self, train_cfg):
    policy = str(train_cfg.get("on_nonfinite", "stop"))
    if policy == "stop" and not train_cfg.get("stop_on_nonfinite", True):
      policy = "skip"  # the legacy key
    self.policy = policy
    self.max_skips = int(train_cfg.get("max_nonfinite_skips", 10))
    self.skipped = 0
    self._checked = -1

  def check(self, step: int, metrics: dict, ids: np.ndarray) -> None:
    if step <= self._checked or "nonfinite" not in metrics:
      return
    self._checked = step
    if not bool(jax.device_get(metrics["nonfinite"])):
      return
    loss = float(jax.device_get(metrics.get("loss", np.nan)))
    grad_norm = float(jax.device_get(metrics.get("grad_norm", np.nan)))
    where = (f"step {step}: loss={loss}, grad_norm={grad_norm} (non-finite) on the batch with "
             f"study_id hashes {[int(i) for i in ids]} (process {jax.process_index()}'s part)")
    if self.policy == "skip":
      self.skipped += 1
      if self.skipped <= self.max_skips:
        log.warning("%s; the update was not applied (skipped %d of at most "
                    "train.max_nonfinite_skips=%d)", where, self.skipped, self.max_skips)
        return
      raise NonFiniteLossError(
          f"{where}; that is {self.skipped} skipped steps, more than "
          f"train.max_nonfinite_skips={self.max_skips}: the run stopped. No checkpoint holds a "
          "non-finite update; lower optim.lr, check the data or enable optim.clip_norm, then "
          "resume.")
    raise NonFiniteLossError(
        f"{where}; the update was discarded and the run stopped before saving it. The last "
        "checkpoint is good: lower optim.lr, check the data (data.on_bad_record) or enable "
        "optim.clip_norm, then resume; or set train.on_nonfinite='skip' to skip such steps.")


class _PreemptionWatch:
  """SIGTERM -> stop after the current step. One process: a signal handler sets a flag (main
  thread only). Several: JAX's preemption sync point, so that all processes stop at one step."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    log.warning("SIGTERM: finishing the current step, then saving a final checkpoint")
    self._flag.set()

  def requested(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # the coordination service runs without preemption sync
        return False
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


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
