"""Orbax checkpoints of a run: {train state, data-iterator position, config}.

One `Checkpointer` per run directory (`<workdir>/checkpoints/<step>/`):
- `state`: the TrainState pytree (StandardSave; restored straight onto the target shardings, so a
  checkpoint written on one mesh shape restores onto another);
- `data_iter`: each process's input-iterator state as `process_<i>-of-<n>.json` (its own handler,
  like Grain's, because our iterator returns a JSON-able dict);
- `config`: the run's config as JSON (for the record and for `init_from`).
Saves are asynchronous; the last `keep_last` are kept plus every `keep_every`-th step.
An interrupted save leaves only a temporary folder that Orbax ignores, so resume always finds the
last complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class DataIteratorStateHandler(ocp.CheckpointHandler):
  """Writes/reads one JSON file per process holding that process's iterator state."""

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    path = directory / _process_file()
    path.write_text(json.dumps(args.state, indent=1, sort_keys=True))

  def restore(self, directory: epath.Path, args: Optional["DataIteratorRestore"] = None) -> Any:
    path = directory / _process_file()
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir())
      raise FileNotFoundError(
          f"{path} does not exist (found {found}): this checkpoint was written by a run with a "
          "different number of processes; restore with the same process count, or start the "
          "data iterator afresh by removing the data_iter item")
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    del directory
    return None

  def structure(self, directory: epath.Path) -> None:
    del directory
    return None

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self) -> None:
    pass


def _process_file() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(DataIteratorStateHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  state: dict


@ocp.args.register_with_handler(DataIteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  pass


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_iter: Optional[dict]
  config: Optional[dict]


class Checkpointer:
  """Saves and restores {state, data_iter, config} under `directory` (a run's checkpoints/)."""

  def __init__(self, directory: str | pathlib.Path, *, keep_last: int = 3, keep_every: int = 0,
               async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last if keep_last > 0 else None,
        keep_period=keep_every if keep_every > 0 else None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "data_iter", "config"),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data_iter": DataIteratorStateHandler(),
            "config": ocp.JsonCheckpointHandler(),
        })

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, data_iter: Optional[dict], config: dict) -> None:
    """Starts an (asynchronous) save of step `step`; returns once the device arrays are copied."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
    if data_iter is not None:
      items["data_iter"] = DataIteratorSave(data_iter)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None, *,
              with_data_iter: bool = True) -> Restored:
    """Restores onto `abstract_state`'s shapes/dtypes/shardings (ShapeDtypeStructs or arrays)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    abstract = jax.tree.map(_as_abstract, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract), "config": ocp.args.JsonRestore()}
    step_dir = self.directory / str(step)
    has_iter = (step_dir / "data_iter").exists()
    if with_data_iter and has_iter:
      items["data_iter"] = DataIteratorRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(step=step, state=out["state"], config=out["config"],
                    data_iter=out["data_iter"] if "data_iter" in items else None)

  def restore_raw_state(self, step: Optional[int] = None) -> Any:
    """The saved state as host numpy arrays, without a target structure (for `init_from`)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    handler = ocp.PyTreeCheckpointer()
    path = self.directory / str(step) / "state"
    meta = handler.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _as_abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x
