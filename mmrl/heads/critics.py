"""MI critics T(x, y) for `mi_bound` (METHODS.md §6, §11.3 `Critic`), scored over all pairs.

Every critic has one call: `critic(x f32[Bx,R,Dx], y f32[By,Dy]) -> scores f32[Bx,By,R]`, the
score of image item i at location r (R = 1 for a global vector) with text item j. Applied
location-wise, i.e. the same critic on every grid cell (a 1x1 convolution over the grid).

- `ConcatMLPCritic(hidden)`: Liao et al.'s `make_mlp(Dx + Dy, [1024, 512])` on [x; y]
  (Linear -> ReLU -> ... -> Linear(1)). The first layer is split, W [x; y] = W_x x + W_y y, so
  the Bx*By*R concatenations are never materialised (METHODS.md §6.3); its hidden activations
  are still [Bx,By,R,H].
- `SeparableCritic(dim, hidden)`: T = g(x) . h(y) with MLPs g, h -> `dim` (one matmul for all
  pairs), plus a learned scalar offset (matters for NWJ / JSD, cancels in DV / InfoNCE).
- `BilinearCritic`: T = x^T W y + c.

Parameters are float32; compute runs in `dtype`; scores come back in float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError

CRITICS = ("concat_mlp", "separable", "bilinear")


def _check_shapes(x: jax.Array, y: jax.Array) -> None:
  if x.ndim != 3 or y.ndim != 2:
    raise ValueError(f"critic inputs must be x [Bx,R,Dx] and y [By,Dy]; got x {x.shape}, "
                     f"y {y.shape} (reshape a global vector to [B,1,D])")


class ConcatMLPCritic(nn.Module):
  """T([x; y]) = Linear(1)(ReLU(... ReLU(W_x x + W_y y + b_0) ...)) (Liao's `make_mlp`).

  Attributes:
    hidden: hidden widths (Liao: (1024, 512)); at least one.
    dtype: compute dtype.
  """
  hidden: Sequence[int] = (1024, 512)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_shapes(x, y)
    if not self.hidden:
      raise ConfigError("config.method.critic_hidden=[] is empty; concat_mlp needs at least one "
                        "hidden width, e.g. [1024, 512]")
    h0 = int(self.hidden[0])
    hx = nn.Dense(h0, dtype=self.dtype, name="dense_0_x")(x)                  # [Bx,R,H]
    hy = nn.Dense(h0, use_bias=False, dtype=self.dtype, name="dense_0_y")(y)  # [By,H]
    h = nn.relu(hx[:, None, :, :] + hy[None, :, None, :])                     # [Bx,By,R,H]
    for k, width in enumerate(self.hidden[1:], start=1):
      h = nn.relu(nn.Dense(int(width), dtype=self.dtype, name=f"dense_{k}")(h))
    out = nn.Dense(1, dtype=self.dtype, name="dense_out")(h)
    return out[..., 0].astype(jnp.float32)


class _MLP(nn.Module):
  hidden: Sequence[int]
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for k, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(int(width), dtype=self.dtype, name=f"dense_{k}")(x))
    return nn.Dense(self.out, dtype=self.dtype, name="dense_out")(x)


class SeparableCritic(nn.Module):
  """T(x, y) = g(x) . h(y) + c, with g, h MLPs (`hidden` widths, then `dim`).

  Attributes:
    dim: embedding width of g and h.
    hidden: hidden widths of g and h (() = linear maps).
    dtype: compute dtype.
  """
  dim: int = 256
  hidden: Sequence[int] = ()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_shapes(x, y)
    gx = _MLP(self.hidden, self.dim, self.dtype, name="image_map")(x).astype(jnp.float32)
    hy = _MLP(self.hidden, self.dim, self.dtype, name="text_map")(y).astype(jnp.float32)
    offset = self.param("offset", nn.initializers.zeros, (), jnp.float32)
    return jnp.einsum("ird,jd->ijr", gx, hy, precision=jax.lax.Precision.HIGHEST) + offset


class BilinearCritic(nn.Module):
  """T(x, y) = x^T W y + c."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_shapes(x, y)
    wx = nn.Dense(y.shape[-1], use_bias=False, dtype=self.dtype, name="bilinear")(x)
    offset = self.param("offset", nn.initializers.zeros, (), jnp.float32)
    return jnp.einsum("ird,jd->ijr", wx.astype(jnp.float32), y.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) + offset


def make_critic(kind: str, *, hidden: Sequence[int] = (1024, 512), dim: int = 256,
                dtype: Any = jnp.float32, name: str | None = "critic") -> nn.Module:
  """The critic `kind` ('concat_mlp' | 'separable' | 'bilinear').

  Args:
    kind: config.method.critic.
    hidden: config.method.critic_hidden (concat_mlp: its hidden widths; separable: g/h hidden).
    dim: config.method.critic_dim (separable only).
    dtype: compute dtype.
    name: the module name (its params live under '<name>/...').
  """
  hidden = tuple(int(h) for h in hidden)
  if kind == "concat_mlp":
    return ConcatMLPCritic(hidden=hidden, dtype=dtype, name=name)
  if kind == "separable":
    return SeparableCritic(dim=int(dim), hidden=hidden, dtype=dtype, name=name)
  if kind == "bilinear":
    return BilinearCritic(dtype=dtype, name=name)
  raise ConfigError(f"config.method.critic={kind!r} is not known; use one of {CRITICS}")
