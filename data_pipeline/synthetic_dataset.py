"""The default data set made on first use: synthetic MIMIC-layout DICOM tree -> converted shards.

`resolve_dataset_dir(data_cfg, workdir)` returns the folder of converted shards a run reads:
`data.dataset_dir` when set; otherwise, when `data.synthetic.num_patients > 0`, a synthetic data
set generated and converted under `<data.synthetic.cache_dir or workdir/data>/synthetic-<hash>/`
(the hash covers the generator's parameters, so a finished one is reused and a different one is
never confused with it). The tree is converted by the same converter as the real MIMIC-CXR.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil

from data_pipeline import convert as convert_lib
from data_pipeline import record_spec
from data_pipeline.synthetic import phantom
from data_pipeline.synthetic.mimic_tree import write_mimic_tree

log = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")


def synthetic_params(synth_cfg) -> dict:
  params = {"num_patients": int(synth_cfg.num_patients), "seed": int(synth_cfg.seed),
            "image_size": int(synth_cfg.image_size), "short_side": int(synth_cfg.short_side),
            "views": list(FRONTAL_VIEWS), "version": 3}  # 2: conformant DICOMs, 3: TFDS folder
  variant = str(synth_cfg.get("variant", "realistic"))
  if variant not in phantom.VARIANTS:
    raise ValueError(f"data.synthetic.variant={variant!r} is not known; use one of "
                     f"{phantom.VARIANTS}")
  if variant != "realistic":  # the realistic set keeps its folder key
    params["variant"] = variant
  return params


def prepare_synthetic_dataset(synth_cfg, root: str | os.PathLike, *, progress: bool = True
                              ) -> pathlib.Path:
  """Generates (if needed) and converts the synthetic data set; returns the shards folder."""
  params = synthetic_params(synth_cfg)
  if params["num_patients"] < 1:
    raise ValueError(f"data.synthetic.num_patients={params['num_patients']}: must be >= 1 to "
                     "make the synthetic data set (or set data.dataset_dir)")
  base = _folder(params, root)
  tree, shards = base / "mimic_tree", base / "shards"
  marker = base / "tree_complete.json"
  if (shards / record_spec.INFO_FILE).exists() and marker.exists():
    return shards
  if not marker.exists():
    if tree.exists():
      shutil.rmtree(tree)  # an interrupted generation: start again
    log.info("generating %d synthetic patients under %s", params["num_patients"], tree)
    summary = write_mimic_tree(tree, num_patients=params["num_patients"],
                               seed=params["seed"], image_size=params["image_size"],
                               workers=max(1, int(synth_cfg.workers)),
                               variant=params.get("variant", "realistic"))
    marker.write_text(json.dumps({"params": params, "summary": summary}, indent=1, default=str))
  dataset = convert_lib.load_layout("mimic", tree)
  options = convert_lib.ConvertOptions(short_side=params["short_side"], bit_depth=8,
                                       workers=max(1, int(synth_cfg.workers)),
                                       views=FRONTAL_VIEWS, progress=progress)
  convert_lib.convert(dataset, shards, options)
  return shards


def resolve_dataset_dir(data_cfg, workdir: str | os.PathLike, *, make: bool = True
                        ) -> pathlib.Path:
  """The shards folder for `data_cfg`; makes the synthetic one when configured and `make`."""
  if data_cfg.dataset_dir:
    path = pathlib.Path(data_cfg.dataset_dir).expanduser()
    names = (record_spec.INFO_FILE, record_spec.LEGACY_INFO_FILE)
    if not any((path / n).exists() for n in names):
      raise FileNotFoundError(
          f"data.dataset_dir={str(path)!r} has no {record_spec.INFO_FILE}: point it at the "
          "output folder "
          "of `python -m experiments.convert`, or set data.dataset_dir='' and "
          "data.synthetic.num_patients>0 to use the synthetic data set")
    return path
  if data_cfg.synthetic.num_patients <= 0:
    raise ValueError("data.dataset_dir is empty and data.synthetic.num_patients is 0: set one "
                     "(--config.data.dataset_dir=/path/to/shards, or "
                     "--config.data.synthetic.num_patients=200)")
  root = pathlib.Path(data_cfg.synthetic.cache_dir or pathlib.Path(workdir) / "data")
  if make:
    return prepare_synthetic_dataset(data_cfg.synthetic, root)
  return _folder(synthetic_params(data_cfg.synthetic), root) / "shards"


def _folder(params: dict, root: str | os.PathLike) -> pathlib.Path:
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  return pathlib.Path(root) / f"synthetic-{key}"
