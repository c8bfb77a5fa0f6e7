"""Multi-scale features of an image tower, read from outside the tower (dense downstream heads).

The towers' pretraining outputs stay as they are (ImageFeatures: one grid). For a ResNet, the
outputs of stages 1..4 (torchvision layer1..4 = the papers' conv2..conv5, strides 4/8/16/32) are
captured with flax's `capture_intermediates` on the last block of each stage: the module and its
parameter tree are unchanged. For a ViT the one patch grid (stride 16) is returned.

`stage_features_fn(model_cfg, stages=(1, 2, 3, 4))` returns
`fn(apply_fn, variables, images, train=False) -> [f32[B, h, w, C]]` fine to coarse, where
`apply_fn`/`variables` are the two-tower model's (TrainState.apply_fn, state.variables(); a
variables dict holding only the 'image_tower' subtree also works). BatchNorm uses its running
statistics (train=False), also when the encoder is fine-tuned.

The detection evaluator's pyramid (`mmrl.models.multiscale`) is built on this module.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models.resnet import RESNETS
from mmrl.models.vit import VITS

StageFn = Callable[..., list[jax.Array]]


def resnet_stage_names(name: str, stages: Sequence[int] = (1, 2, 3, 4)) -> tuple[str, ...]:
  """Module names of the last block of each of `stages` (1-based) of ResNet `name`."""
  spec = RESNETS[name]
  bad = [s for s in stages if not 1 <= s <= len(spec.stage_sizes)]
  if bad:
    raise ValueError(f"ResNet {name!r} has stages 1..{len(spec.stage_sizes)}; asked for {bad}")
  return tuple(f"stage{s}_block{spec.stage_sizes[s - 1] - 1}" for s in stages)


def stage_features_fn(model_cfg: Any, stages: Sequence[int] = (1, 2, 3, 4)) -> StageFn:
  """See the module docstring; `model_cfg` = config.model."""
  name = str(model_cfg.image.name)
  if name in RESNETS:
    names = resnet_stage_names(name, stages)
    wanted = set(names)

    def resnet_fn(apply_fn, variables, images, train: bool = False):
      _, state = apply_fn(variables, images, train=train, method="encode_image",
                          capture_intermediates=lambda m, meth: m.name in wanted
                          and meth == "__call__")
      inter = state["intermediates"]["image_tower"]
      return [inter[n]["__call__"][0].astype(jnp.float32) for n in names]
    return resnet_fn
  if name in VITS:

    def vit_fn(apply_fn, variables, images, train: bool = False):
      feats = apply_fn(variables, images, train=train, method="encode_image")
      gh, gw = feats.grid_hw
      return [feats.local.reshape(feats.local.shape[0], gh, gw, -1).astype(jnp.float32)]
    return vit_fn
  raise ConfigError(f"config.model.image.name={name!r} has no stage features; known: "
                    f"{', '.join(sorted(RESNETS) + sorted(VITS))}")


def is_vit(model_cfg: Any) -> bool:
  """True when config.model.image.name is a ViT (SETR decoder), False for a ResNet (U-Net)."""
  return str(model_cfg.image.name) in VITS


__all__ = ["stage_features_fn", "resnet_stage_names", "is_vit"]
