"""Where a checkpoint comes from, for the header of a downstream result.

`checkpoint_provenance(run, step)`: the run directory, its config's method and image tower, the
step, and for a run written by experiments/import_checkpoint.py its import source (format, input
file, counts from import_report.json). `machine()`: CPU model, core count, JAX backend and the
1-minute load average when the entry was last updated (shared machines: wall times vary).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional

from mmrl import machine_info


def checkpoint_provenance(run: str | os.PathLike, step: Optional[int], *, init: str
                          ) -> dict[str, Any]:
  """The provenance dict of run directory `run` at `step` (init 'checkpoint' or 'random')."""
  run = pathlib.Path(run).expanduser().absolute()
  if run.name == "checkpoints":
    run = run.parent
  out: dict[str, Any] = {"run_dir": str(run), "run_name": run.name, "step": step, "init": init}
  config_path = run / "config.json"
  if config_path.is_file():
    cfg = json.loads(config_path.read_text())
    out["method"] = str(cfg.get("method", {}).get("name", "?"))
    out["image_tower"] = str(cfg.get("model", {}).get("image", {}).get("name", "?"))
    out["config"] = str(config_path)
  report = run / "import_report.json"
  if report.is_file():
    rep = json.loads(report.read_text())
    out["imported"] = {k: rep[k] for k in ("format", "input", "source", "counts") if k in rep}
  return out


def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
  return (f"{machine_info.cpu_model()}, {os.cpu_count()} cores; JAX {jax.__version__} on "
          f"{len(devices)} {devices[0].platform} device(s){load}")


__all__ = ["checkpoint_provenance", "machine"]
