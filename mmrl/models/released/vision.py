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


def _pretrained():
  from mmrl.models import pretrained  # pylint: disable=import-outside-toplevel
  return pretrained


def convert_resnet(state: Mapping[str, np.ndarray], prefix: str, ledger: Ledger, params: Flat,
                   stats: Flat, *, source: str) -> str:
  """The torchvision ResNet under `prefix` -> params/stats['image_tower', ...]; returns the
  tower name (resnet50 / resnet18)."""
  sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  if not sub:
    raise SourceError(f"{source}: no ResNet tensors under {prefix!r}")
  try:
    result = _pretrained().import_torchvision_resnet(sub, source=source)
  except ValueError as e:
    raise SourceError(str(e)) from None
  _record(result, prefix, ledger, params, stats)
  return result.tower


def convert_vit(state: Mapping[str, np.ndarray], prefix: str, ledger: Ledger, params: Flat, *,
                source: str) -> str:
  """The timm-layout ViT under `prefix` -> params['image_tower', ...]; returns the tower name
  (the named mmrl ViT whose sizes match the tensors)."""
  sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  if not sub:
    raise SourceError(f"{source}: no ViT tensors under {prefix!r}")
  try:
    result = _pretrained().import_timm_vit(sub, source=source)
  except ValueError as e:
    raise SourceError(str(e)) from None
  _record(result, prefix, ledger, params, {})
  return result.tower


def _record(result, prefix: str, ledger: Ledger, params: Flat, stats: Flat) -> None:
  for path, value in result.params.items():
    params[("image_tower",) + tuple(path)] = np.asarray(value, np.float32)
  for path, value in result.batch_stats.items():
    stats[("image_tower",) + tuple(path)] = np.asarray(value, np.float32)
  for name, target in result.used.items():
    ledger.take(prefix + name, target)
  for name, reason in result.dropped.items():
    ledger.drop(prefix + name, reason)
