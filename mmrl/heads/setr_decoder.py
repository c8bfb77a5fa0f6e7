"""SETR-PUP decoder: progressive upsampling of a ViT's patch grid (dense segmentation).

SETR's "PUP" head (Zheng et al., CVPR 2021), the ViT path of MGCA's segmentation
(`mgca_segmenter.py`: `SETRModel(..., decode_features=[512, 256, 128, 64])`): the last block's
patch tokens as a [gh, gw, D] grid (stride 16); four stages of 3x3 conv -> norm -> ReLU -> x2
bilinear upsampling (stride 16 -> 1); a 1x1 conv gives the logits.

Differences from MGCA's SETR: GroupNorm instead of BatchNorm (no batch statistics in the
evaluator's functional loop); a grid whose x16 is not the image size (patch 8, odd sizes) is
resized bilinearly to `out_hw` at the end.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.heads.unet_decoder import ConvNormReLU


class SETRPUPDecoder(nn.Module):
  """`__call__(grid f[B, gh, gw, D], out_hw) -> logits f32[B, H, W, num_classes]`.

  Attributes:
    channels: width of each upsampling stage (one x2 per stage).
    num_classes: output channels.
  """
  channels: Sequence[int] = (512, 256, 128, 64)
  num_classes: int = 1

  @nn.compact
  def __call__(self, grid: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    if grid.ndim != 4:
      raise ValueError(f"SETRPUPDecoder expects a patch grid [B, gh, gw, D]; got {grid.shape}")
    x = grid.astype(jnp.float32)
    for i, width in enumerate(self.channels):
      x = ConvNormReLU(width, name=f"stage{i}")(x)
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
    x = nn.Conv(self.num_classes, (1, 1), name="head")(x)
    if tuple(x.shape[1:3]) != tuple(out_hw):
      x = jax.image.resize(x, (x.shape[0],) + tuple(out_hw) + (x.shape[-1],), "bilinear")
    return x


__all__ = ["SETRPUPDecoder"]
