"""Projection heads (`LinearProjection`, `MLPProjection`) and the learnable temperature.

`MLPProjection(hidden, out, norm)` is METHODS.md §11.3's `mlp2`: Linear -> [norm] -> ReLU ->
Linear [-> norm]; ConVIRT uses norm='none', LoVT 'batch'. `activation='gelu', use_bias=False` is
open_clip's `hf_proj_type='mlp'` text head (Linear -> exact GELU -> Linear, no biases; BiomedCLIP). Heads apply to the last axis, so the
same module projects globals [B,D] and tokens/regions [B,N,D]. Params are float32; compute in
`dtype`. BatchNorm statistics live in the 'batch_stats' collection (global batch statistics
under jit: the batch axis is sharded and XLA reduces across devices).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError

NORMS = ("none", "batch", "layer")
ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}


def _norm(kind: str, dtype: Any, train: bool, name: str, use_scale: bool = True,
          use_bias: bool = True) -> nn.Module | None:
  if kind == "none":
    return None
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        use_scale=use_scale, use_bias=use_bias, name=name)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_scale=use_scale, use_bias=use_bias,
                        name=name)
  raise ConfigError(f"config.method.projection_norm={kind!r} is not known; use one of {NORMS}")


class LinearProjection(nn.Module):
  """x -> W x + b to `out` features (GLoRIA image projection)."""
  out: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    return nn.Dense(self.out, use_bias=self.use_bias, dtype=self.dtype, name="dense")(x)


class MLPProjection(nn.Module):
  """Linear(hidden) -> [norm] -> ReLU -> Linear(out) [-> output norm].

  Attributes:
    hidden: hidden width (ConVIRT/LoVT 2048).
    out: output width d (ConVIRT 512).
    norm: 'none' | 'batch' | 'layer', after the hidden layer.
    output_norm: 'none' | 'batch' | 'layer' after the last layer (MGCA: 'batch' with
      output_norm_affine=False).
    output_norm_affine: learn scale/bias of the output norm.
    activation: 'relu' | 'gelu' (exact erf; open_clip's nn.GELU()).
    use_bias: False drops both Dense biases (open_clip's mlp text projection).
  """
  hidden: int
  out: int
  norm: str = "none"
  output_norm: str = "none"
  output_norm_affine: bool = True
  activation: str = "relu"
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.norm not in NORMS:
      raise ConfigError(f"config.method.projection_norm={self.norm!r} is not known; use one of "
                        f"{NORMS}")
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f"MLPProjection activation={self.activation!r} is not known; use one of "
                        f"{tuple(ACTIVATIONS)}")
    norm = _norm(self.norm, self.dtype, train, "norm")
    x = nn.Dense(self.hidden, use_bias=self.use_bias and (norm is None or self.norm == "layer"),
                 dtype=self.dtype, name="dense_0")(x)
    if norm is not None:
      x = norm(x) if self.norm == "layer" else _apply_batch_norm(norm, x)
    x = ACTIVATIONS[self.activation](x)
    x = nn.Dense(self.out, use_bias=self.use_bias, dtype=self.dtype, name="dense_1")(x)
    out_norm = _norm(self.output_norm, self.dtype, train, "output_norm",
                     self.output_norm_affine, self.output_norm_affine)
    if out_norm is not None:
      x = out_norm(x) if self.output_norm == "layer" else _apply_batch_norm(out_norm, x)
    return x


def _apply_batch_norm(bn: nn.Module, x: jax.Array) -> jax.Array:
  """BatchNorm over every axis but the last (shared across tokens for [B,N,D] inputs)."""
  shape = x.shape
  return bn(x.reshape(-1, shape[-1])).reshape(shape)


class LogTemperature(nn.Module):
  """A learnable log-temperature scalar 'log_tau', initialised to log(init_tau).

  The objective clips it (see `mmrl.objectives.contrastive.resolve_tau`); it is excluded from
  weight decay (rank 0).
  """
  init_tau: float = 0.07

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("log_tau", nn.initializers.constant(math.log(self.init_tau)), (),
                      jnp.float32)
