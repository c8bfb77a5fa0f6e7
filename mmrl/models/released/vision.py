"""The image towers of released checkpoints, through mmrl's torchvision / timm importers.

The released models embed standard towers: torchvision ResNet-50 state dicts (GLoRIA, MGCA-ResNet,
BioViL) and a timm-layout ViT (MGCA's BLIP VisionTransformer: patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm). Their name mapping lives in one place, `mmrl.models.pretrained`
(the ImageNet-weights importer, issue 14 §1); this module only cuts the tower's tensors out of the
larger state dict (by prefix), hands them over, and records in the `Ledger` which source tensors
became which of our paths (or why they were dropped).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mmrl.models.released.source import Ledger, SourceError

Flat = dict[tuple[str, ...], np.ndarray]


# The reasons of the tower importers' "unused" entries that a released checkpoint may carry; any
# other unused tensor stays unaccounted and fails `Ledger.check_complete`.
_ACCEPTED_UNUSED = ("step counter", "classifier", "head")


def _resnet_name(sub: Mapping[str, np.ndarray], source: str) -> str:
  """The RESNETS entry whose block counts and block type match the tensors."""
  from mmrl.models.resnet import RESNETS  # pylint: disable=import-outside-toplevel
  blocks = []
  for s in range(1, 5):
    ids = {int(k.split(".")[1]) for k in sub if k.startswith(f"layer{s}.")}
    blocks.append(len(ids))
  bottleneck = "layer1.0.conv3.weight" in sub
  width = int(np.shape(sub["conv1.weight"])[0]) if "conv1.weight" in sub else 0
  for name, spec in RESNETS.items():
    if (tuple(spec.stage_sizes) == tuple(blocks) and spec.bottleneck == bottleneck
        and spec.stem_width == width):
      return name
  raise SourceError(f"{source}: a ResNet with blocks {blocks} per stage (bottleneck="
                    f"{bottleneck}, stem width {width}) is none of mmrl's ({', '.join(RESNETS)})")


def _vit_name(sub: Mapping[str, np.ndarray], source: str) -> tuple[str, int]:
  """(the VITS entry matching the tensors, the image size of the checkpoint's position grid)."""
  from mmrl.models.vit import VITS  # pylint: disable=import-outside-toplevel
  try:
    dim, _, patch, _ = np.shape(sub["patch_embed.proj.weight"])
    mlp = int(np.shape(sub["blocks.0.mlp.fc1.weight"])[0])
    n_pos = int(np.shape(sub["pos_embed"])[1])
  except KeyError as e:
    raise SourceError(f"{source}: the ViT lacks {e.args[0]!r} (timm layout expected)") from None
  depth = 1 + max(int(k.split(".")[1]) for k in sub if k.startswith("blocks."))
  grid = int(round((n_pos - 1 - ("dist_token" in sub)) ** 0.5))
  for name, spec in VITS.items():
    if (spec.patch, spec.dim, spec.depth, spec.mlp_dim) == (patch, dim, depth, mlp):
      return name, grid * int(patch)
  raise SourceError(f"{source}: a ViT with patch {patch}, width {dim}, depth {depth}, MLP {mlp} "
                    f"is none of mmrl's ({', '.join(VITS)})")


def convert_resnet(state: Mapping[str, np.ndarray], prefix: str, ledger: Ledger, params: Flat,
                   stats: Flat, *, source: str) -> str:
  """The torchvision ResNet under `prefix` -> params/stats['image_tower', ...] (1-channel stem:
  the sum of the RGB kernels; the authors repeat grey to RGB before one per-channel-equal
  normalisation, so this is exact); returns the tower name (resnet50 / resnet18)."""
  from mmrl.models import pretrained  # pylint: disable=import-outside-toplevel
  sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  if not sub:
    raise SourceError(f"{source}: no ResNet tensors under {prefix!r}")
  name = _resnet_name(sub, source)
  try:
    variables, report = pretrained.resnet_params_from_torchvision(
        state, model_name=name, in_channels=1, prefix=prefix, source=source)
  except ValueError as e:
    raise SourceError(str(e)) from None
  _record(variables, report, ledger, params, stats)
  return name


def convert_vit(state: Mapping[str, np.ndarray], prefix: str, ledger: Ledger, params: Flat, *,
                source: str, source_norm=None, input_norm=None) -> tuple[str, int]:
  """The timm-layout ViT under `prefix` -> params['image_tower', ...] at its own position grid;
  returns (the named mmrl ViT whose sizes match, the checkpoint's image size). `source_norm`
  (per-channel mean, std the checkpoint expects) with `input_norm` (our 1-channel mean, std)
  folds that normalisation into the 1-channel patch kernel and bias (exact; open_clip)."""
  from mmrl.models import pretrained  # pylint: disable=import-outside-toplevel
  sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  if not sub:
    raise SourceError(f"{source}: no ViT tensors under {prefix!r}")
  name, image_size = _vit_name(sub, source)
  try:
    variables, report = pretrained.vit_params_from_timm(
        state, model_name=name, in_channels=1, image_size=image_size, prefix=prefix,
        layout="timm", source_norm=source_norm, input_norm=input_norm, source=source)
  except ValueError as e:
    raise SourceError(str(e)) from None
  _record(variables, report, ledger, params, {})
  return name, image_size


def _record(variables, report, ledger: Ledger, params: Flat, stats: Flat) -> None:
  from mmrl.models.param_tree import flatten  # pylint: disable=import-outside-toplevel
  for path, value in flatten(variables.get("params", {})).items():
    params[("image_tower",) + path] = np.asarray(value, np.float32)
  for path, value in flatten(variables.get("batch_stats", {})).items():
    stats[("image_tower",) + path] = np.asarray(value, np.float32)
  for name in report.imported:
    ledger.take(name, "image_tower (mmrl.models.pretrained: " + report.source + ")")
  for name, reason in report.unused.items():
    if any(a in reason for a in _ACCEPTED_UNUSED):
      ledger.drop(name, reason)
