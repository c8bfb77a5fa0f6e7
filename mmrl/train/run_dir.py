"""A run directory: the one place that finds its checkpoints, reads and writes its config.json,
and restores it.

A run directory is what `experiments.pretrain --workdir` and `experiments.import_checkpoint`
write:

  <run>/config.json       the run's config (`write_config`; `read_config` reads it back)
  <run>/checkpoints/<N>/  Orbax checkpoints (`mmrl.train.checkpoint.Checkpointer`)

Every reader of a run goes through here:
  `checkpoint_dir(path)`        a run directory or its checkpoints/ folder -> the checkpoints folder
  `read_config(path)`           config.json as a ConfigDict (JSON lists back to tuples)
  `config_json(config)`, `write_config(directory, config_json)`   what the loop and the importer
                                write
  `saved_steps(path)`, `latest_step(path)`   the complete steps / the latest (None when none)
  `restore_for_eval(config, path, step=None, init='checkpoint')`  (state, mesh, shardings, step)
                                for the evaluators; init='random' gives the random-init baseline
  `random_init(config)`         (state, mesh, shardings): a fresh state at config.seed
  `read_weights(path, step=None)`  (step, {'params', 'batch_stats'}) as host numpy (export)
  `load_towers(state, init_from)`  the towers of another run's last checkpoint (train.init_from)

Old run directories keep loading: nothing here adds a key to what config.json must hold.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Optional

import ml_collections
import numpy as np

from mmrl.train import checkpoint as ckpt_lib

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# The parameter collections `train.init_from` copies from another run (the heads start fresh).
TOWER_KEYS = ("image_tower", "text_tower")


class RunConfigMissingError(FileNotFoundError, ValueError):
  """A run directory without config.json (a ValueError too, as experiments/configs/from_run.py
  raised it, and a FileNotFoundError, as mmrl.export raised it)."""


# ---------------------------------------------------------------------------------------------
# Finding things.


def checkpoint_dir(path: str | pathlib.Path) -> pathlib.Path:
  """A run directory (holding checkpoints/) or a checkpoints directory -> the checkpoints dir."""
  path = pathlib.Path(path).expanduser().absolute()
  found = _checkpoints_of(path)
  if found != path:
    return found
  if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
    return path
  raise FileNotFoundError(f"--checkpoint={path} holds neither checkpoints/ nor numbered step "
                          "folders; pass a run directory (the --workdir of experiments.pretrain) "
                          "or its checkpoints/ folder")


def _checkpoints_of(path: pathlib.Path) -> pathlib.Path:
  """`path`/checkpoints when it exists, else `path` itself (taken to be a checkpoints folder)."""
  return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


def run_root(path: str | pathlib.Path) -> pathlib.Path:
  """The run directory of `path` (a run directory, its checkpoints/ or its config.json)."""
  path = pathlib.Path(path).expanduser()
  if path.name == CONFIG_FILE and not path.is_dir():
    return path.parent
  if path.name == CHECKPOINTS and not (path / CONFIG_FILE).exists():
    return path.parent
  return path


def saved_steps(path: str | pathlib.Path) -> list[int]:
  """The complete checkpoint steps of a run, oldest first ([] while it has saved none)."""
  path = pathlib.Path(path).expanduser().absolute()
  directory = _checkpoints_of(path)
  if not directory.is_dir():
    return []
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()


def latest_step(path: str | pathlib.Path) -> Optional[int]:
  """The latest complete checkpoint step of a run (None when it has none)."""
  ckpt = ckpt_lib.Checkpointer(checkpoint_dir(path), async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


# ---------------------------------------------------------------------------------------------
# config.json.


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The JSON dict a run stores of `config` (config.json, and inside each checkpoint)."""
  return json.loads(config.to_json_best_effort())


def write_config(directory: str | pathlib.Path, config: dict[str, Any]) -> pathlib.Path:
  """Writes `directory`/config.json from `config_json(...)`'s dict; returns its path."""
  path = pathlib.Path(directory) / CONFIG_FILE
  path.write_text(json.dumps(config, indent=2))
  return path


def read_config(path: str | pathlib.Path, *, hint: str = "") -> ml_collections.ConfigDict:
  """The ConfigDict a run was made with: `path` is its run directory, its checkpoints/ or its
  config.json. JSON lists come back as tuples (`_tuples`), so ml_collections flags can override
  them as they override the config file's own tuples. `hint` ends the error's sentence."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    path = run_root(path) / CONFIG_FILE
  if not path.is_file():
    raise RunConfigMissingError(
        f"{path} does not exist; give a run directory holding config.json (written by "
        "experiments.pretrain or experiments.import_checkpoint)" + (f", {hint}" if hint else ""))
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def _tuples(value):
  """JSON lists back to tuples (config.json stores tuples as lists; ml_collections flags override
  only tuple-valued fields, e.g. --config.eval.detection.fractions=1.0 on a list is refused).
  Lists of dicts (method.objectives) stay lists of ConfigDicts."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    items = [_tuples(v) for v in value]
    return items if any(isinstance(v, dict) for v in items) else tuple(items)
  return value


# ---------------------------------------------------------------------------------------------
# Restoring.


def random_init(config: Any) -> tuple[Any, Any, Any]:
  """(state, mesh, state_shardings): a freshly initialised state (seed config.seed) on the mesh
  of config.mesh; the text tower still loads config.model.text.weights."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from mmrl.train import state as state_lib  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(int(config.seed)), mesh)
  return state, mesh, shardings


def restore_for_eval(config: Any, path: str | pathlib.Path, *, step: Optional[int] = None,
                     init: str = "checkpoint") -> tuple[Any, Any, Any, int]:
  """(state, mesh, state_shardings, step) of the run at `path` (latest complete step unless
  `step`), restored onto the mesh of config.mesh without optimiser step or data iterator.
  init='random' gives a freshly initialised state (config.seed) on the same mesh instead: the
  random-init baseline of the downstream protocols (the step still names the checkpoint)."""
  from mmrl.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from mmrl.train import state as state_lib  # pylint: disable=import-outside-toplevel
  directory = checkpoint_dir(path)
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no complete checkpoint under {directory}")
  if init not in ("checkpoint", "random"):
    raise ValueError(f"--init={init!r}: use 'checkpoint' or 'random'")
  if init == "random":
    state, mesh, shardings = random_init(config)
    return state, mesh, shardings, int(step)
  mesh = mesh_lib.make_mesh(config.mesh)
  abstract, shardings = state_lib.abstract_train_state(config, mesh)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    restored = ckpt.restore(abstract, step, with_data_iter=False)
  finally:
    ckpt.close()
  log.info("restored %s at step %d for evaluation", directory, restored.step)
  return restored.state, mesh, shardings, int(restored.step)


def read_weights(path: str | pathlib.Path, step: Optional[int] = None
                 ) -> tuple[int, dict[str, Any]]:
  """(step, {'params': ..., 'batch_stats': ...}) of a run's checkpoint as host numpy arrays,
  without a target structure (latest step unless `step`)."""
  given = pathlib.Path(path)
  if not given.is_dir():
    raise FileNotFoundError(f"{given} does not exist; give the run directory of a pretraining "
                            "run (the --workdir of experiments.pretrain)")
  directory = _checkpoints_of(given)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint under {directory}; train longer than "
                              "train.checkpoint_every steps or let the run finish")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f"{directory} has no checkpoint of step {step}; it has {steps}")
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # a raw restore warns that it reads no item metadata
    try:
      raw = ckpt.restore_raw_state(step)
    finally:
      absl_logger.setLevel(level)
  finally:
    ckpt.close()
  return step, {"params": dict(raw.get("params") or {}),
                "batch_stats": dict(raw.get("batch_stats") or {})}


def load_towers(state: Any, init_from: str | pathlib.Path) -> Any:
  """`state` with the tower parameters (and BatchNorm statistics) of another run's last
  checkpoint (`train.init_from`: a run directory or its checkpoints/); heads keep theirs."""
  import jax  # pylint: disable=import-outside-toplevel
  path = _checkpoints_of(pathlib.Path(init_from))
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
  if new.ema:  # the EMA teacher starts from the loaded towers too, not from random ones
    new = new.replace(ema={name: (jax.tree.map(lambda a, e: jax.device_put(a, e.sharding),
                                               getattr(new, name), value)
                                  if name in ("params", "batch_stats") else value)
                           for name, value in new.ema.items()})
  return new


__all__ = ["CONFIG_FILE", "TOWER_KEYS", "RunConfigMissingError", "checkpoint_dir", "run_root",
           "saved_steps", "latest_step", "config_json", "write_config", "read_config", "random_init",
           "restore_for_eval", "read_weights", "load_towers"]
