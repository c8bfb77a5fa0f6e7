"""ResNet image towers (v1.5) for 1-channel chest X-rays: ResNet-18, ResNet-50 and a tiny test net.

v1.5 = the torchvision layout: in a bottleneck block the stride sits on the 3x3 convolution, and
a projection shortcut (1x1 conv + norm) is used whenever the shape changes. Every convolution pads
k // 2 on each side, as torchvision does (XLA's 'SAME' would pad a strided 3x3 conv (0, 1), i.e.
shift the sampling grid by one pixel against torchvision's), so ImageNet weights imported with
mmrl.models.pretrained reproduce torchvision's outputs (tests/test_pretrained_parity.py). The
stem takes the channel count of the images given at `init`: 1 for the chest X-ray pipeline (no
RGB replication), 3 for a parity check against an unchanged RGB checkpoint. Normalisation is a
choice:

  batch  flax BatchNorm, statistics in the `batch_stats` collection (momentum 0.9 = torch's 0.1),
         `use_running_average=not train`. No `axis_name`: under jit with the batch sharded over
         the mesh (GSPMD), mean and variance are reductions over the *global* batch, so the
         statistics are the same on 1 device and on a pod. Train calls must pass
         `mutable=['batch_stats']`.
  group  GroupNorm with 32 groups (fewer, gcd(32, channels), for the tiny widths); no state.

Local features: the last stage's grid by default; `local_stage=3` returns conv4 (stage 3) as the
local grid while the global stays the average of the last stage (GLoRIA, MGCA-ResNet: layer3 ->
regions, layer4 -> global, METHODS.md §3.1/§4.1). `resize_to=S` first resizes the input to SxS
bilinearly with aligned corners (those papers' upsampling to 299 inside the encoder).

Compute runs in `dtype` (bfloat16 by default) with float32 parameters; the outputs are float32.
Parameter paths (see towers.py): `stem_conv`, `stem_norm`, `stage{s}_block{b}/conv{k}`,
`stage{s}_block{b}/norm{k}`, `stage{s}_block{b}/proj_conv`, `stage{s}_block{b}/proj_norm`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmrl.config_errors import ConfigError
from mmrl.models import remat as remat_lib
from mmrl.models.features import ImageFeatures

NORMS = ("batch", "group")
ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Architecture of one named ResNet."""
  stage_sizes: tuple[int, ...]
  widths: tuple[int, ...]       # 3x3 width of each stage (bottleneck output = 4x)
  bottleneck: bool
  stem_width: int

  @property
  def out_dim(self) -> int:
    return self.widths[-1] * (4 if self.bottleneck else 1)


RESNETS = {
    "resnet18": ResNetSpec((2, 2, 2, 2), (64, 128, 256, 512), bottleneck=False, stem_width=64),
    "resnet50": ResNetSpec((3, 4, 6, 3), (64, 128, 256, 512), bottleneck=True, stem_width=64),
    "resnet_tiny": ResNetSpec((1, 1, 1, 1), (8, 16, 32, 32), bottleneck=False, stem_width=8),
    # CPU demo size: ~0.7 M parameters, a few ms per 64-96 px image on one core.
    "resnet_small": ResNetSpec((1, 1, 1, 1), (16, 32, 64, 128), bottleneck=False, stem_width=16),
    # resnet_small without its last downsampling stage: stride 16 (conv4-level regions, as GLoRIA
    # reads), a 12 x 12 grid at 192 px (the localisation benchmark, docs/localisation.md).
    "resnet_small_s16": ResNetSpec((1, 1, 1), (16, 32, 128), bottleneck=False, stem_width=16),
}


class _GroupNorm(nn.Module):
  """GroupNorm with min(32, gcd(32, C)) groups, so tiny widths (8, 16, 24) also work."""
  dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups = math.gcd(32, x.shape[-1])
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype,
                        scale_init=self.scale_init, name="GroupNorm")(x)


def _torch_padded_conv(features: int, kernel_size: Sequence[int],
                       strides: Sequence[int] = (1, 1), *, name: str, dtype: Any) -> nn.Conv:
  """A bias-free conv padded k // 2 on both sides (torch's `padding=k // 2`), He-normal init."""
  return nn.Conv(features, tuple(kernel_size), tuple(strides), use_bias=False, dtype=dtype,
                 padding=[(k // 2, k // 2) for k in kernel_size], name=name,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  width: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.width, (3, 3), (self.strides, self.strides), name="conv1")(x)
    y = nn.relu(self.norm(name="norm1")(y))
    y = self.conv(self.width, (3, 3), name="conv2")(y)
    y = self.norm(name="norm2", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.width, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(residual)
      residual = self.norm(name="proj_norm")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 (4x width) (ResNet-50)."""
  width: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.width, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="norm1")(y))
    y = self.conv(self.width, (3, 3), (self.strides, self.strides), name="conv2")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    y = self.conv(self.width * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="norm3", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.width * 4, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(residual)
      residual = self.norm(name="proj_norm")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """A ResNet over f32[B, H, W, 1] images -> ImageFeatures of the last stage.

  Attributes:
    stage_sizes: blocks per stage.
    widths: 3x3 width per stage.
    bottleneck: BottleneckBlock (ResNet-50) or BasicBlock (ResNet-18).
    stem_width: channels of the 7x7/2 stem convolution.
    norm: 'batch' | 'group' (module docstring).
    dtype: compute dtype; parameters stay float32.
    remat: rematerialise each block in the backward pass (saves activation memory).
    remat_policy: what a rematerialised block keeps (mmrl.models.remat.POLICIES).
    local_stage: stage whose grid is ImageFeatures.local (1-based; 0 = the last).
    resize_to: resize the input to this square size first (align_corners bilinear; 0 = off).
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  bottleneck: bool
  stem_width: int = 64
  norm: str = "batch"
  dtype: Any = jnp.bfloat16
  remat: bool = False
  remat_policy: str = "nothing"
  local_stage: int = 0
  resize_to: int = 0

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> ImageFeatures:
    if images.ndim != 4:
      raise ValueError(f"ResNet expects images f32[B, H, W, C] (C = 1 for X-rays); got shape "
                       f"{images.shape}")
    n_stages = len(self.stage_sizes)
    local_stage = self.local_stage or n_stages
    if not 1 <= local_stage <= n_stages:
      raise ConfigError(f"config.model.image.local_stage={self.local_stage} is not a stage of "
                        f"this ResNet; use 0 (the last) or 1..{n_stages}")
    if self.resize_to:
      images = resize_align_corners(images.astype(jnp.float32), self.resize_to)
    conv = functools.partial(_torch_padded_conv, dtype=self.dtype)
    if self.norm == "batch":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                               epsilon=1e-5, dtype=self.dtype)
    elif self.norm == "group":
      norm = functools.partial(_GroupNorm, dtype=self.dtype)
    else:
      raise ConfigError(f"config.model.image.norm={self.norm!r} is not supported; use one of "
                       f"{NORMS}")
    block_cls = BottleneckBlock if self.bottleneck else BasicBlock
    block_cls = remat_lib.maybe_remat(block_cls, self.remat, self.remat_policy,
                                      "model.image.remat_policy")

    x = images.astype(self.dtype)
    x = conv(self.stem_width, (7, 7), (2, 2), name="stem_conv")(x)
    x = nn.relu(norm(name="stem_norm")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    local = None
    for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(n_blocks):
        strides = 2 if (s > 0 and b == 0) else 1
        x = block_cls(width=width, strides=strides, conv=conv, norm=norm,
                      name=f"stage{s + 1}_block{b}")(x)
      if s + 1 == local_stage:
        local = x.astype(jnp.float32)
    x = x.astype(jnp.float32)
    bsz, h, w, c = local.shape
    return ImageFeatures(global_embedding=jnp.mean(x, axis=(1, 2)),
                         local=local.reshape(bsz, h * w, c), grid_hw=(h, w))


def resnet(name: str, *, norm: str = "batch", dtype: Any = jnp.bfloat16,
           remat: bool = False, local_stage: int = 0, resize_to: int = 0,
           remat_policy: str = "nothing") -> ResNet:
  """The named ResNet (a key of RESNETS: 'resnet18' | 'resnet50' | 'resnet_small' | ...)."""
  if name not in RESNETS:
    raise ConfigError(f"config.model.image.name={name!r} is not a ResNet; known: "
                     f"{', '.join(sorted(RESNETS))}")
  spec = RESNETS[name]
  return ResNet(stage_sizes=spec.stage_sizes, widths=spec.widths, bottleneck=spec.bottleneck,
                stem_width=spec.stem_width, norm=norm, dtype=dtype, remat=remat,
                remat_policy=remat_policy,
                local_stage=local_stage, resize_to=resize_to)


def stage_dim(spec: ResNetSpec, stage: int) -> int:
  """Output channels of stage `stage` (1-based; 0 = the last)."""
  stage = stage or len(spec.widths)
  return spec.widths[stage - 1] * (4 if spec.bottleneck else 1)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bilinear weights with align_corners=True (torch nn.Upsample's convention)."""
  m = np.zeros((n_out, n_in), np.float64)
  if n_out == 1 or n_in == 1:
    m[:, 0] = 1.0
    return m.astype(np.float32)
  pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
  frac = pos - lo
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m.astype(np.float32)


def resize_align_corners(images: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of f32[B, H, W, C] to [B, size, size, C] with align_corners=True: the
  corner pixels of input and output coincide (GLoRIA's and MGCA's `nn.Upsample(size=(299, 299),
  mode='bilinear', align_corners=True)` inside the image encoder's forward)."""
  _, h, w, _ = images.shape
  ah = jnp.asarray(_align_corners_matrix(h, size))
  aw = jnp.asarray(_align_corners_matrix(w, size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", ah, images, precision=hi)
  return jnp.einsum("pw,bowc->bopc", aw, x, precision=hi)
