"""config.model.image.weights applied to a model's variables (the train state's init).

`import_image_weights(model_cfg, data_cfg)` resolves the weights (catalog.py), reads the file,
maps it onto the configured tower at config.data.image_size with a 1-channel stem whose kernel
folds the checkpoint's normalisation for the run's data.mean / data.std (stems.py), and returns
(tower variables, ImportReport, provenance dict), or None for 'none'. `replace_image_tower`
puts them into a full model's {'params', 'batch_stats'} at the 'image_tower' subtree, keeping
each leaf's dtype and sharding. Errors leave the caller's variables untouched.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.config_errors import ConfigError
from mmrl.models.pretrained import catalog, files, stems
from mmrl.models.pretrained.report import ImportReport
from mmrl.models.pretrained.timm_vit import vit_params_from_timm
from mmrl.models.pretrained.torchvision_resnet import resnet_params_from_torchvision
from mmrl.models.resnet import RESNETS
from mmrl.models.vit import VITS

log = logging.getLogger(__name__)
IMAGE_KEY = "image_tower"
NORMS = {"imagenet": (stems.IMAGENET_MEAN, stems.IMAGENET_STD), "half": (stems.HALF, stems.HALF)}


def source_normalisation(model_cfg, resolved: catalog.Resolved):
  """(mean[3], std[3]) the checkpoint expects: config.model.image.weights_norm, or 'auto' = the
  catalog's for a name, ImageNet's for a path."""
  choice = str(model_cfg.image.get("weights_norm", "auto"))
  if choice == "auto":
    return resolved.entry.norm if resolved.entry else NORMS["imagenet"]
  if choice not in NORMS:
    raise ConfigError(f"config.model.image.weights_norm={choice!r}; use auto | "
                      + " | ".join(NORMS))
  return NORMS[choice]


def _hf_eps(path: pathlib.Path) -> float | None:
  cfg = (path if path.is_dir() else path.parent) / "config.json"
  if cfg.is_file():
    try:
      return float(json.loads(cfg.read_text()).get("layer_norm_eps", 1e-12))
    except (ValueError, OSError):
      return None
  return None


_MARKERS = {"resnet": ("layer1.0.conv1.weight",),
            "vit": ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight")}


def find_prefix(state: Mapping[str, Any], family: str, source: str) -> str:
  """The prefix under which the tower's tensors sit ('' for a plain state dict; 'model.' for
  DeiT's {'model': ...} file, 'state_dict.' + module path inside a Lightning checkpoint)."""
  hits = sorted({name[: len(name) - len(m)] for name in state for m in _MARKERS[family]
                 if name.endswith(m) and (len(name) == len(m) or name[-len(m) - 1] == ".")})
  if len(hits) == 1:
    return hits[0]
  what = "ResNet (layer1.0.conv1.weight)" if family == "resnet" else "ViT (patch embedding)"
  if not hits:
    raise ConfigError(f"{source} holds no {what} tensors (first names: "
                      f"{', '.join(list(state)[:5])}); is it a checkpoint of "
                      "config.model.image.name's architecture?")
  raise ConfigError(f"{source} holds several {what} towers under the prefixes {hits}; "
                    "extract one into its own file")


def import_image_weights(model_cfg, data_cfg) -> tuple[dict[str, Any], ImportReport, dict] | None:
  """(tower variables, report, provenance) for config.model.image.weights, or None for 'none'."""
  arch = str(model_cfg.image.name)
  resolved = catalog.resolve(str(model_cfg.image.get("weights", "none")), arch=arch)
  if resolved is None:
    return None
  if arch in RESNETS and str(model_cfg.image.get("norm", "batch")) != "batch":
    raise ConfigError(f"config.model.image.weights={resolved.spec!r} holds BatchNorm layers; "
                      "set config.model.image.norm='batch' (GroupNorm has no pretrained weights)")
  source_norm = source_normalisation(model_cfg, resolved)
  input_norm = (float(data_cfg.mean), float(data_cfg.std))
  state = files.read_tensors(resolved.path)
  label = str(resolved.path)
  if arch in RESNETS:
    variables, report = resnet_params_from_torchvision(
        state, model_name=arch, in_channels=1, source_norm=source_norm, input_norm=input_norm,
        prefix=find_prefix(state, "resnet", label), source=label)
  elif arch in VITS:
    eps = float(model_cfg.image.get("layer_norm_eps", 1e-6))
    prefix = find_prefix(state, "vit", label)
    want = resolved.entry.norm_eps if resolved.entry else None
    if want is None:
      from mmrl.models.pretrained.timm_vit import detect_layout  # pylint: disable=g-import-not-at-top
      if detect_layout(state, prefix)[0] == "hf":
        want = _hf_eps(resolved.path) or 1e-12
    if want is not None and not np.isclose(want, eps, rtol=1e-3, atol=0):
      raise ConfigError(f"config.model.image.weights={resolved.spec!r} was trained with "
                        f"LayerNorm eps {want:g}; set config.model.image.layer_norm_eps={want:g} "
                        f"(now {eps:g})")
    variables, report = vit_params_from_timm(
        state, model_name=arch, in_channels=1, image_size=int(data_cfg.image_size),
        prefix=prefix, source_norm=source_norm, input_norm=input_norm, source=label)
  else:
    raise ConfigError(f"config.model.image.weights={resolved.spec!r}: no importer for "
                      f"config.model.image.name={arch!r} (ResNets and ViTs only)")
  provenance = {
      "weights": resolved.spec, "file": str(resolved.path),
      "description": resolved.entry.description if resolved.entry else "local file",
      "checkpoint_mean": list(source_norm[0]), "checkpoint_std": list(source_norm[1]),
      "folded_for_input": {"mean": input_norm[0], "std": input_norm[1]},
      "imported": len(report.imported), "unused": sorted(report.unused),
      "notes": report.notes,
  }
  return variables, report, provenance


def replace_image_tower(tree: Mapping[str, Any], tower: Mapping[str, Any]) -> dict[str, Any]:
  """`tree` ({'params': {..., 'image_tower': ...}, 'batch_stats': ...} or a TrainState-like dict
  of collections) with the image tower's leaves replaced by `tower`'s (same collections), each
  keeping the old leaf's dtype and sharding. Raises before changing anything when a collection
  or a shape does not match."""
  out = dict(tree)
  for collection, new in tower.items():
    old = tree.get(collection, {})
    if IMAGE_KEY not in old:
      raise ValueError(f"no {collection}/{IMAGE_KEY} subtree to put the imported weights in")
    olds, news = jax.tree_util.tree_flatten(old[IMAGE_KEY])[0], None
    new_struct = jax.tree_util.tree_structure(new)
    if new_struct != jax.tree_util.tree_structure(old[IMAGE_KEY]):
      raise ValueError(f"imported {collection} tree differs from the model's image tower tree")
    news = jax.tree_util.tree_leaves(new)
    for a, b in zip(olds, news):
      if tuple(a.shape) != tuple(np.shape(b)):
        raise ValueError(f"imported {collection} leaf shape {np.shape(b)} != model's {a.shape}")
  for collection, new in tower.items():
    def put(a, b):
      value = jnp.asarray(np.asarray(b), a.dtype)
      sharding = getattr(a, "sharding", None)
      return jax.device_put(value, sharding) if sharding is not None else value
    out[collection] = dict(tree[collection])
    out[collection][IMAGE_KEY] = jax.tree.map(put, tree[collection][IMAGE_KEY], new)
  return out


def describe(model_cfg) -> str:
  """One line for the log: where the image tower starts from."""
  spec = str(model_cfg.image.get("weights", "none"))
  if spec.lower() == catalog.NONE:
    return "image tower: random init (config.model.image.weights=none)"
  return f"image tower: initialised from {spec}"
