"""U-Net decoder with skip connections over a ResNet's stage outputs (dense segmentation).

The shape of segmentation_models_pytorch's `Unet` decoder, which MGCA (`mgca_segmenter.py`) puts on
a ResNet-50 (`smp.Unet('resnet50')`): starting from the coarsest feature (conv5, stride 32), each
block upsamples x2 (nearest), concatenates the next finer skip feature (conv4, conv3, conv2), and
applies two 3x3 conv -> norm -> ReLU; blocks beyond the skips upsample without a skip (stride 4
-> 2 -> 1); a 3x3 conv gives the logits. Decoder widths default to smp's (256, 128, 64, 32, 16).

Differences from smp / MGCA: smp also feeds the stem output (stride 2) as a skip to its 4th block;
we use conv2..conv5 only (the issue's contract, `mmrl.models.stage_features`). Norm is GroupNorm
(no batch statistics to carry through the evaluator's functional training loop; smp uses
BatchNorm). If the final grid differs from `out_hw` (input sizes not divisible by 32) the logits
are resized bilinearly.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _upsample_to(x: jax.Array, hw: tuple[int, int], method: str = "nearest") -> jax.Array:
  return jax.image.resize(x, (x.shape[0],) + tuple(hw) + (x.shape[-1],), method)


class ConvNormReLU(nn.Module):
  """3x3 conv (no bias) -> GroupNorm (gcd(32, C) groups) -> ReLU."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.GroupNorm(num_groups=math.gcd(32, self.features))(x)
    return nn.relu(x)


class UNetDecoder(nn.Module):
  """`__call__(features, out_hw) -> logits f32[B, H, W, num_classes]`.

  Attributes:
    channels: width of each decoder block, coarse to fine; the first len(features) - 1 blocks
      take a skip, the rest only upsample.
    num_classes: output channels (1 for binary masks).
  """
  channels: Sequence[int] = (256, 128, 64, 32, 16)
  num_classes: int = 1

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], out_hw: tuple[int, int]) -> jax.Array:
    if len(features) < 2:
      raise ValueError(f"UNetDecoder needs >= 2 feature maps (fine to coarse); got {len(features)}")
    if len(self.channels) < len(features) - 1:
      raise ValueError(f"UNetDecoder: {len(self.channels)} decoder widths for "
                       f"{len(features) - 1} skips; give at least one width per skip")
    skips = [f.astype(jnp.float32) for f in features[:-1]][::-1]  # coarse to fine
    x = features[-1].astype(jnp.float32)
    for i, width in enumerate(self.channels):
      if i < len(skips):
        x = _upsample_to(x, skips[i].shape[1:3])
        x = jnp.concatenate([x, skips[i]], axis=-1)
      else:
        x = _upsample_to(x, (2 * x.shape[1], 2 * x.shape[2]))
      x = ConvNormReLU(width, name=f"block{i}_conv1")(x)
      x = ConvNormReLU(width, name=f"block{i}_conv2")(x)
    x = nn.Conv(self.num_classes, (3, 3), padding="SAME", name="head")(x)
    if tuple(x.shape[1:3]) != tuple(out_hw):
      x = _upsample_to(x, out_hw, "bilinear")
    return x


__all__ = ["UNetDecoder", "ConvNormReLU"]
