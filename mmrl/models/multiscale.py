"""Multi-scale image features for dense downstream heads (detection): strides 8, 16 and 32.

The towers' pretraining outputs are left as they are (ImageFeatures: one grid). This module reads
the extra scales from outside:

- ResNet: the outputs of its last three stages: 2, 3 and 4 (torchvision layer2/3/4 = the papers' conv3/4/5, strides
  8/16/32; a 3-stage tower such as resnet_small_s16 gives stages 1..3, strides 4/8/16), captured by `mmrl.models.stage_features` (flax `capture_intermediates` on the last block of
  each stage; the tower module and its parameter tree are unchanged).
- ViT: a simple feature pyramid from the last patch grid (stride 16): bilinear x2 upsampling
  (stride 8), the grid itself, and x2 average pooling (stride 32). Parameter-free; the detection
  head's convolutions adapt it (ViTDet uses learned deconvolutions here; see
  docs/evaluation.md, Detection).

`pyramid_fn(model_cfg)` returns `fn(apply_fn, variables, images) -> [f32[B,h,w,C]] * 3`, fine to
coarse, where `apply_fn`/`variables` are the two-tower model's (TrainState.apply_fn and
state.variables()); `images` f32[B, H, W, 1]. BatchNorm uses its running statistics
(train=False), also when fine-tuning.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models import stage_features
from mmrl.models.resnet import RESNETS
from mmrl.models.vit import VITS

PyramidFn = Callable[[Callable[..., Any], Any, jax.Array], list[jax.Array]]

STRIDES = (8, 16, 32)


def resnet_stage_names(name: str) -> tuple[str, ...]:
  """Module names of the last block of the pyramid stages (`pyramid_stages`) of ResNet `name`."""
  return stage_features.resnet_stage_names(name, pyramid_stages(name))


def pyramid_stages(name: str) -> tuple[int, ...]:
  """The last three stages of ResNet `name` (2, 3, 4 for a 4-stage ResNet; 1, 2, 3 for the
  3-stage resnet_small_s16, strides 4/8/16): the YOLO head needs three scales, any strides."""
  n = len(RESNETS[name].stage_sizes)
  if n < 3:
    raise ConfigError(f"config.model.image.name={name!r} has {n} stages; the detection pyramid "
                      "needs 3; use a ResNet with at least 3 stages (e.g. resnet_small_s16)")
  return tuple(range(n - 2, n + 1))


def simple_pyramid(grid: jax.Array) -> list[jax.Array]:
  """[B,h,w,C] stride-16 grid -> [x2 up (bilinear), itself, x2 down (average)] in float32."""
  grid = grid.astype(jnp.float32)
  b, h, w, c = grid.shape
  up = jax.image.resize(grid, (b, 2 * h, 2 * w, c), "bilinear")
  hd, wd = max(1, h // 2), max(1, w // 2)
  down = grid[:, :hd * 2, :wd * 2].reshape(b, hd, 2, wd, 2, c).mean(axis=(2, 4)) \
      if h >= 2 and w >= 2 else grid
  return [up, grid, down]


def pyramid_fn(model_cfg: Any) -> PyramidFn:
  """See the module docstring; `model_cfg` = config.model."""
  name = str(model_cfg.image.name)
  if name in RESNETS:
    stages = stage_features.stage_features_fn(model_cfg, pyramid_stages(name))
    return lambda apply_fn, variables, images: stages(apply_fn, variables, images)
  if name in VITS:
    grid = stage_features.stage_features_fn(model_cfg)
    return lambda apply_fn, variables, images: simple_pyramid(grid(apply_fn, variables, images)[0])
  raise ConfigError(f"config.model.image.name={name!r} has no multi-scale features; known: "
                    f"{', '.join(sorted(RESNETS) + sorted(VITS))}")


__all__ = ["pyramid_fn", "pyramid_stages", "simple_pyramid", "resnet_stage_names", "STRIDES"]
