"""Orbax checkpoints of a run: {train state, data-iterator position, config}.

One `Checkpointer` per run directory (`<workdir>/checkpoints/<step>/`):
- `state`: the TrainState pytree (StandardSave; restored straight onto the target shardings, so a
  checkpoint written on one mesh shape restores onto another);
- `data_iter`: each process's input-iterator state as `process_<i>-of-<n>.json` (its own handler,
  like Grain's, because our iterator returns a JSON-able dict);
- `config`: the run's config as JSON (for the record and for `init_from`).
Saves are asynchronous; the last `keep_last` are kept plus every `keep_every`-th step.
An interrupted save leaves only a temporary folder that Orbax ignores, so resume always finds the
last complete checkpoint. A committed step that cannot be read (a truncated or deleted file) is
moved to `<workdir>/corrupt_checkpoints/` with a warning naming the problem, and restore falls back
to the step before. A save that cannot be written (read-only folder, disk full) raises
`CheckpointWriteError` naming the folder; the steps already committed stay as they were.

Test hook: with MMRL_TEST_KILL_DURING_SAVE=<step> in the environment, the process SIGKILLs itself
while writing that step (after the iterator state, before the commit) — a preemption mid-save.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import signal
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

KILL_DURING_SAVE_ENV = "MMRL_TEST_KILL_DURING_SAVE"
_kill_in_this_save = False  # set by Checkpointer.save for the hooked step


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (no permission, disk full); earlier steps are intact."""


class CheckpointCorruptError(RuntimeError):
  """No committed checkpoint under the folder could be restored."""


class DataIteratorStateHandler(ocp.CheckpointHandler):
  """Writes/reads one JSON file per process holding that process's iterator state."""

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    path = directory / _process_file()
    path.write_text(json.dumps(args.state, indent=1, sort_keys=True))
    if _kill_in_this_save:
      os.kill(os.getpid(), signal.SIGKILL)

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
    global _kill_in_this_save
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
    if data_iter is not None:
      items["data_iter"] = DataIteratorSave(data_iter)
    _kill_in_this_save = os.environ.get(KILL_DURING_SAVE_ENV, "") == str(step)
    with self._write_errors(f"step {step}"):
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def _write_errors(self, what: str):
    """Turns an OSError anywhere in a failed save into a CheckpointWriteError naming the folder."""
    return _WriteErrors(self, what)

  def restore(self, abstract_state: Any, step: Optional[int] = None, *,
              with_data_iter: bool = True) -> Restored:
    """Restores onto `abstract_state`'s shapes/dtypes/shardings (ShapeDtypeStructs or arrays).

    With `step=None`, the latest committed step; if it cannot be read, it is moved aside to
    `corrupt_checkpoints/` with a warning and the step before is tried, and so on.

    Raises:
      FileNotFoundError: there is no committed checkpoint.
      CheckpointCorruptError: no committed checkpoint could be read (names each problem).
    """
    if step is not None:
      return self._restore_step(abstract_state, step, with_data_iter)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    problems = []
    for candidate in steps:
      try:
        problem = _integrity_problem(self.directory / str(candidate))
        if problem is None:
          return self._restore_step(abstract_state, candidate, with_data_iter)
      except Exception as e:  # pylint: disable=broad-except
        problem = f"{type(e).__name__}: {_first_line(e)}"
      problems.append(f"step {candidate}: {problem}")
      moved = self._move_aside(candidate)
      log.warning("checkpoint %s cannot be restored (%s); moved it to %s and falling back to the "
                  "previous checkpoint", self.directory / str(candidate), problem, moved)
    raise CheckpointCorruptError(
        f"no checkpoint under {self.directory} could be restored: {'; '.join(problems)}. Start "
        "afresh in a new --workdir, or restore one of the moved folders by hand")

  def _restore_step(self, abstract_state: Any, step: int, with_data_iter: bool) -> Restored:
    abstract = jax.tree.map(_as_abstract, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract), "config": ocp.args.JsonRestore()}
    step_dir = self.directory / str(step)
    has_iter = (step_dir / "data_iter").exists()
    if with_data_iter and has_iter:
      items["data_iter"] = DataIteratorRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(step=step, state=out["state"], config=out["config"],
                    data_iter=out["data_iter"] if "data_iter" in items else None)

  def _move_aside(self, step: int) -> pathlib.Path:
    """Moves a committed but unreadable step out of the manager's folder (process 0 moves)."""
    src = pathlib.Path(self.directory / str(step))
    dest_root = src.parent.parent / "corrupt_checkpoints"
    dest = dest_root / f"{src.parent.name}_{step}"
    n = 1
    while dest.exists():
      n += 1
      dest = dest_root / f"{src.parent.name}_{step}.{n}"
    if jax.process_index() == 0:
      dest_root.mkdir(parents=True, exist_ok=True)
      shutil.move(str(src), str(dest))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"mmrl:moved_corrupt_{step}")
    self._manager.reload()
    return dest

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
    with self._write_errors("the last step"):
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()


class _WriteErrors:
  """Context manager: OSError (or one in the cause chain) -> CheckpointWriteError."""

  def __init__(self, ckpt: Checkpointer, what: str):
    self.ckpt, self.what = ckpt, what

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc is None or isinstance(exc, CheckpointWriteError):
      return False
    cause = exc
    while cause is not None and not isinstance(cause, OSError):
      cause = cause.__cause__ or cause.__context__
    if cause is None:
      return False
    try:
      kept = sorted(self.ckpt.all_steps())
    except Exception:  # pylint: disable=broad-except
      kept = "unknown"
    raise CheckpointWriteError(
        f"could not write checkpoint {self.what} under {self.ckpt.directory}: "
        f"{type(cause).__name__}: {cause}. The committed checkpoints (steps {kept}) are intact; "
        "free disk space or make the folder writable (or choose another --workdir), then run "
        "again to resume from the last of them") from exc


def _integrity_problem(step_dir: epath.Path) -> Optional[str]:
  """A cheap check before reading: a missing or empty file that a committed step must hold."""
  step_dir = pathlib.Path(step_dir)
  for item in ("state", "config"):
    if not (step_dir / item).is_dir():
      return f"{step_dir / item} is missing"
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and path.stat().st_size == 0:
      return f"{path} is empty (truncated)"
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:500] if text else repr(e)


def _as_abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x
