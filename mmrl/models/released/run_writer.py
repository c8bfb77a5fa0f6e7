"""Writing an imported checkpoint as an mmrl run directory, all or nothing.

`write_run(output, config, params, batch_stats, report, overwrite=False)` writes

  <output>/config.json                the run's config (as `mmrl.train.loop` writes it)
  <output>/checkpoints/0/{state,config}  an Orbax checkpoint of a fresh TrainState at step 0 whose
                                      params / batch_stats are the imported ones (the optimiser
                                      state is new; `mmrl.train.checkpoint.Checkpointer.save`)
  <output>/import_report.json         every source tensor: imported (-> our path) or dropped (why)

so that `experiments.evaluate`, `experiments.export` and `config.train.init_from` read it like a
pretraining run. Everything is written into a temporary sibling folder first and renamed into
place at the end, so a failure leaves nothing behind. An `output` that already holds a run (or
anything) is refused unless `overwrite=True`.

`fill(ours, converted)` checks an imported flat tree against the model's own parameters: every
leaf of ours must be given with its exact shape, and nothing else may be given; the error lists
the first missing, mismatched and unexpected paths.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np

from mmrl.models.param_tree import flatten, unflatten
from mmrl.models.released.source import SourceError

Flat = dict[tuple[str, ...], np.ndarray]


class OutputExistsError(FileExistsError):
  """--output already holds a run (or other files) and overwrite was not asked for."""






def fill(ours: Mapping[str, Any], converted: Flat, *, what: str, source: str) -> dict[str, Any]:
  """`ours` (a param / batch_stats tree of arrays or ShapeDtypeStructs) with every leaf replaced
  by `converted`'s (float32 numpy); errors name what is missing, mismatched or unexpected."""
  flat = flatten(ours)
  missing = [p for p in flat if p not in converted]
  extra = [p for p in converted if p not in flat]
  mismatched = [f"{'/'.join(p)}: ours {tuple(flat[p].shape)} vs imported "
                f"{tuple(converted[p].shape)}" for p in flat
                if p in converted and tuple(flat[p].shape) != tuple(converted[p].shape)]
  if missing or extra or mismatched:
    parts = []
    if missing:
      parts.append(f"missing ({len(missing)}): " + ", ".join("/".join(p) for p in missing[:8]))
    if mismatched:
      parts.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
    if extra:
      parts.append(f"unexpected ({len(extra)}): " + ", ".join("/".join(p) for p in extra[:8]))
    raise SourceError(f"{source} does not fit the model's {what}: " + " | ".join(parts))
  return unflatten({p: np.asarray(converted[p], np.float32) for p in flat})


def train_state(config: Any, params: Flat, batch_stats: Flat, *, source: str) -> Any:
  """A step-0 TrainState for `config` holding the imported weights and a fresh optimiser state,
  built on the host from the model's traced shapes (nothing is compiled); its tree is the one
  `mmrl.train.state.create_train_state` makes, so restores onto that state's shapes work."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmrl.train import state as state_lib  # pylint: disable=import-outside-toplevel
  model, tx = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                               "dropout": jax.random.key(1)}, batch, train=False))
  new_params = fill(shapes["params"], params, what="parameters", source=source)
  new_stats = fill(shapes.get("batch_stats", {}), batch_stats, what="BatchNorm statistics",
                   source=source)
  new_params = jax.tree.map(jnp.asarray, new_params)
  new_stats = jax.tree.map(jnp.asarray, new_stats)
  rng = jax.random.key_data(jax.random.split(jax.random.key(int(config.seed)), 3)[2])
  return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=new_params,
                              batch_stats=new_stats, opt_state=tx.init(new_params), rng=rng,
                              ema={}, apply_fn=model.apply, tx=tx)


def holds_run(path: pathlib.Path) -> bool:
  return (path / "config.json").exists() or (path / "checkpoints").exists()


def check_output(output: str | pathlib.Path, overwrite: bool) -> pathlib.Path:
  """The absolute output path; refuses an existing non-empty folder unless `overwrite`."""
  out = pathlib.Path(output).expanduser().absolute()
  if out.exists() and not out.is_dir():
    raise OutputExistsError(f"--output={out} is a file; give a folder path for the run")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    what = "holds a run (config.json / checkpoints/)" if holds_run(out) else "is not empty"
    raise OutputExistsError(f"--output={out} {what}; choose a new folder or pass --overwrite "
                            "to replace it")
  return out


def write_run(output: str | pathlib.Path, config: Any, params: Flat, batch_stats: Flat,
              report: Mapping[str, Any], *, overwrite: bool = False) -> pathlib.Path:
  """Writes the run directory (module docstring); returns its absolute path."""
  from mmrl.train import validation as config_validation  # pylint: disable=import-outside-toplevel
  from mmrl.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  out = check_output(output, overwrite)
  config_validation.validate_config(config, check_paths=False)  # the data set comes later
  state = train_state(config, params, batch_stats, source=str(report.get("source", "")))
  config_json = json.loads(config.to_json_best_effort())

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
  try:
    (tmp / "config.json").write_text(json.dumps(config_json, indent=2))
    ckpt = ckpt_lib.Checkpointer(tmp / "checkpoints", keep_last=1, async_save=False)
    try:
      ckpt.save(0, state, data_iter=None, config=config_json)
      ckpt.wait_until_finished()
    finally:
      ckpt.close()
    (tmp / "import_report.json").write_text(json.dumps(report, indent=1) + "\n")
    old = None
    if out.exists():
      old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
      out.rename(old)
    tmp.rename(out)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
