"""MI critics T(x, y) for `mi_bound` (METHODS.md §6, §11.3 `Critic`), scored over all pairs.

Every critic has one call: `critic(x f32[Bx,R,Dx], y f32[By,Dy]) -> scores f32[Bx,By,R]`, the
score of image item i at location r (R = 1 for a global vector) with text item j. Applied
location-wise, i.e. the same critic on every grid cell (a 1x1 convolution over the grid).

- `ConcatMLPCritic(hidden, chunk_size)`: Liao et al.'s `make_mlp(Dx + Dy, [1024, 512])` on
  [x; y] (Linear -> ReLU -> ... -> Linear(1)). The first layer is split, W [x; y] = W_x x + W_y y,
  so the Bx*By*R concatenations are never materialised (METHODS.md §6.3). Its hidden activations
  are [Bx,By,R,H] when all pairs run at once; `chunk_size` = C > 0 evaluates C texts at a time
  under a rematerialised `lax.map` (`concat_critic_scores`), so forward and backward hold
  [Bx,C,R,H]: memory O(Bx * C) instead of O(Bx * By), same scores and gradients.
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


class _DenseParams(nn.Module):
  """The params of an nn.Dense(features) (same names, shapes and initialisers), returned as
  (kernel, bias) so the layer can run inside a plain `lax.map` body."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return kernel, bias


def _mlp_tail(h: jax.Array, layers: Sequence[tuple[jax.Array, jax.Array]], dtype: Any
              ) -> jax.Array:
  """ReLU(h) -> [Dense -> ReLU]* -> Dense(1): the critic after its split first layer; f32[...]."""
  h = nn.relu(h)
  for i, (kernel, bias) in enumerate(layers):
    h = jnp.dot(h.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
    if i < len(layers) - 1:
      h = nn.relu(h)
  return h[..., 0].astype(jnp.float32)


def concat_critic_scores(hx: jax.Array, hy: jax.Array,
                         layers: Sequence[tuple[jax.Array, jax.Array]], *, dtype: Any,
                         chunk_size: int = 0) -> jax.Array:
  """scores f32[Bx, By, R] = tail(hx[i, r] + hy[j]) for all pairs (pure; see ConcatMLPCritic).

  Args:
    hx: f[Bx, R, H] the first layer's image part (with its bias).
    hy: f[By, H] the first layer's text part.
    layers: (kernel, bias) of the remaining Dense layers, the last one to width 1.
    dtype: compute dtype.
    chunk_size: 0 = all pairs at once ([Bx, By, R, H] hidden activations live); C > 0 = C texts
      per rematerialised `lax.map` step, so forward and backward hold [Bx, C, R, H] at a time
      (memory O(Bx * C)); By need not be a multiple of C (the last chunk is padded).
  """
  by = hy.shape[0]
  if chunk_size < 0:
    raise ConfigError(f"config.method.critic_chunk={chunk_size} must be >= 0 (0 = no chunks)")
  if chunk_size == 0 or chunk_size >= by:
    return _mlp_tail(hx[:, None, :, :] + hy[None, :, None, :], layers, dtype)
  c = int(chunk_size)
  n = -(-by // c)
  ys = jnp.pad(hy, ((0, n * c - by), (0, 0))).reshape(n, c, hy.shape[-1])

  @jax.checkpoint
  def block(y):                                                       # [C, H] -> [Bx, C, R]
    return _mlp_tail(hx[:, None, :, :] + y[None, :, None, :], layers, dtype)

  out = jax.lax.map(block, ys)                                        # [n, Bx, C, R]
  out = jnp.moveaxis(out, 0, 1).reshape(hx.shape[0], n * c, hx.shape[1])
  return out[:, :by]


class ConcatMLPCritic(nn.Module):
  """T([x; y]) = Linear(1)(ReLU(... ReLU(W_x x + W_y y + b_0) ...)) (Liao's `make_mlp`).

  Attributes:
    hidden: hidden widths (Liao: (1024, 512)); at least one.
    dtype: compute dtype.
    chunk_size: texts per chunk of the all-pairs evaluation (0 = none;
      `concat_critic_scores`); the scores and parameters do not depend on it.
  """
  hidden: Sequence[int] = (1024, 512)
  dtype: Any = jnp.float32
  chunk_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_shapes(x, y)
    if not self.hidden:
      raise ConfigError("config.method.critic_hidden=[] is empty; concat_mlp needs at least one "
                        "hidden width, e.g. [1024, 512]")
    h0 = int(self.hidden[0])
    hx = nn.Dense(h0, dtype=self.dtype, name="dense_0_x")(x)                  # [Bx,R,H]
    hy = nn.Dense(h0, use_bias=False, dtype=self.dtype, name="dense_0_y")(y)  # [By,H]
    widths = [int(w) for w in self.hidden]
    layers = [_DenseParams(w, name=f"dense_{k}")(widths[k - 1])
              for k, w in enumerate(widths[1:], start=1)]
    layers.append(_DenseParams(1, name="dense_out")(widths[-1]))
    return concat_critic_scores(hx, hy, layers, dtype=self.dtype, chunk_size=self.chunk_size)


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
                dtype: Any = jnp.float32, name: str | None = "critic",
                chunk_size: int = 0) -> nn.Module:
  """The critic `kind` ('concat_mlp' | 'separable' | 'bilinear').

  Args:
    kind: config.method.critic.
    hidden: config.method.critic_hidden (concat_mlp: its hidden widths; separable: g/h hidden).
    dim: config.method.critic_dim (separable only).
    dtype: compute dtype.
    name: the module name (its params live under '<name>/...').
    chunk_size: config.method.critic_chunk, texts per chunk of concat_mlp's all-pairs
      evaluation (0 = none). The separable and bilinear critics never build [Bx,By,R,H] and
      ignore it.
  """
  hidden = tuple(int(h) for h in hidden)
  if kind == "concat_mlp":
    return ConcatMLPCritic(hidden=hidden, dtype=dtype, chunk_size=int(chunk_size), name=name)
  if kind == "separable":
    return SeparableCritic(dim=int(dim), hidden=hidden, dtype=dtype, name=name)
  if kind == "bilinear":
    return BilinearCritic(dtype=dtype, name=name)
  raise ConfigError(f"config.method.critic={kind!r} is not known; use one of {CRITICS}")
