"""A released checkpoint (GLoRIA / MGCA / BioViL / open_clip) as an mmrl run directory, all or
nothing (`experiments/import_checkpoint.py`).

`import_checkpoint(fmt, path, output, base)` converts the source
(`mmrl.models.released.importer.convert`), builds the run's config
(`importer.build_config`) and `write_run`s it, checking the output folder first so a refused
--output costs nothing. `write_run(output, config, params, batch_stats, report, overwrite=False)`
writes

  <output>/config.json                the run's config (`mmrl.train.run_dir`, as the loop writes it)
  <output>/checkpoints/0/{state,config}  an Orbax checkpoint of a fresh TrainState at step 0 whose
                                      params / batch_stats are the imported ones (the optimiser
                                      state is new; `mmrl.train.checkpoint.Checkpointer.save`)
  <output>/import_report.json         every source tensor: imported (-> our path) or dropped (why)

so that `experiments.evaluate`, `experiments.export` and `config.train.init_from` read it like a
pretraining run. Everything is written into a temporary sibling folder first and renamed into
place at the end, so a failure leaves nothing behind. An `output` that already holds a run (or
anything) is refused unless `overwrite=True`.

This is the train layer's half of the import: the conversion itself (mmrl.models.released)
knows nothing of TrainStates or checkpoints.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import ml_collections
import numpy as np

from mmrl.models.released import importer
from mmrl.models.released.common import fill
from mmrl.train import run_dir

Flat = dict[tuple[str, ...], np.ndarray]


class OutputExistsError(FileExistsError):
  """--output already holds a run (or other files) and overwrite was not asked for."""


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
  return (path / run_dir.CONFIG_FILE).exists() or (path / run_dir.CHECKPOINTS).exists()


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
  config_json = run_dir.config_json(config)

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
  try:
    run_dir.write_config(tmp, config_json)
    ckpt = ckpt_lib.Checkpointer(tmp / run_dir.CHECKPOINTS, keep_last=1, async_save=False)
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


def import_checkpoint(fmt: str, path: str | pathlib.Path, output: str | pathlib.Path,
                      base: ml_collections.ConfigDict, *, tokenizer: str | None = None,
                      overwrite: bool = False, **options: Any) -> tuple[pathlib.Path, dict]:
  """Converts and writes the run; returns (run directory, import report)."""
  check_output(output, overwrite)
  converted = importer.convert(fmt, path, **options)
  config = importer.build_config(converted, base, tokenizer=tokenizer)
  report = converted.report()
  report["config_overrides"] = {**report["config_overrides"],
                                "data.tokenizer": str(config.data.tokenizer)}
  out = write_run(output, config, converted.params, converted.batch_stats, report,
                  overwrite=overwrite)
  return out, report
