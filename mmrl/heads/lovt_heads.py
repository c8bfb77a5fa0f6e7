"""LoVT heads (METHODS.md §5.1): masked projections, attention pooling, symmetric cross-attention.

- `MaskedMLPProjection`: the local `mlp2` (Linear -> BatchNorm -> ReLU -> Linear, LoVT's
  `SequenceMLP`) applied to every token/region, with BatchNorm statistics taken over the *valid*
  positions only, so padded sentence slots change nothing (METHODS.md §5.5 pitfall 4).
- `AttentionPool`: LoVT's `avgpool_attention` global aggregator: one query (the masked mean of the
  local features) attends with `num_heads`-head MHA to the local features; returns the pooled
  vector and the head-averaged attention weights [B,N] that weight the local losses.
- `SymmetricCrossAttention`: `lovt_symmetric`: one set of W_k, W_v, W_o shared by both modalities
  (scores are a bilinear PSD similarity (W_k a).(W_k b)/sqrt(d)), output BatchNorm shared by both
  directions; gives regions attended from sentences [B,R,d] and sentences attended from regions
  [B,S,d] plus both attention maps.

Masks are bool, True = valid. Softmaxes run in float32 with a finite -1e9 mask; parameters are
float32 and compute runs in `dtype`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.ops.masking import NEG_INF, masked_softmax

LOCAL_NORMS = ("none", "batch", "layer")


def _bn_mask(mask: jax.Array) -> jax.Array:
  """[B,N,1] BatchNorm mask; when nothing is valid, all positions (keeps statistics finite)."""
  mask = jnp.asarray(mask, bool)
  return jnp.where(jnp.any(mask), mask, True)[..., None]


def _check_norm(norm: str, key: str) -> None:
  if norm not in LOCAL_NORMS:
    raise ConfigError(f"{key}={norm!r} is not known; use one of {LOCAL_NORMS}")


class MaskedBatchNorm(nn.Module):
  """BatchNorm over all axes but the last, statistics from positions where `mask` is True."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=self.dtype, name="bn")
    return bn(x, mask=_bn_mask(mask))


class MaskedMLPProjection(nn.Module):
  """Linear(hidden) -> [masked norm] -> ReLU -> Linear(out), per position of x [B,N,D].

  Attributes:
    hidden: hidden width (LoVT 2048).
    out: output width d_z (LoVT 512).
    norm: 'batch' (LoVT; statistics over valid positions only) | 'layer' | 'none'.
    dtype: compute dtype.
  """
  hidden: int
  out: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    _check_norm(self.norm, "config.method.projection_norm")
    if mask is None:
      mask = jnp.ones(x.shape[:-1], bool)
    x = nn.Dense(self.hidden, use_bias=self.norm != "batch", dtype=self.dtype, name="dense_0")(x)
    if self.norm == "batch":
      x = MaskedBatchNorm(dtype=self.dtype, name="norm")(x, mask, train=train)
    elif self.norm == "layer":
      x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    x = nn.relu(x)
    x = nn.Dense(self.out, dtype=self.dtype, name="dense_1")(x)
    return jnp.where(mask[..., None], x, 0).astype(x.dtype)


class AttentionPool(nn.Module):
  """LoVT's `avgpool_attention`: masked-mean query -> MHA over x [B,N,D] -> (pooled [B,D],
  head-mean weights f32[B,N], zero on padding and summing to 1 over valid positions).

  Deviation: the query is the mean over *valid* positions; LoVT's `GlobalAvgPool` divides by N
  including padding (METHODS.md §5.5 pitfall 5). Identical for images (no padding).
  """
  num_heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ConfigError(f"config.method.pool_heads={self.num_heads} does not divide the feature "
                        f"width {d}; choose a divisor of {d}")
    mask = jnp.ones((b, n), bool) if mask is None else jnp.asarray(mask, bool)
    h, dh = self.num_heads, d // self.num_heads
    m = mask.astype(jnp.float32)[..., None]
    query = jnp.sum(x.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    dense = lambda name: nn.DenseGeneral((h, dh), dtype=self.dtype, name=name)  # noqa: E731
    q = dense("query")(query.astype(x.dtype))          # [B,H,dh]
    k = dense("key")(x)                                # [B,N,H,dh]
    v = dense("value")(x)                              # [B,N,H,dh]
    scores = jnp.einsum("bhc,bnhc->bhn", q, k, preferred_element_type=jnp.float32)
    probs = masked_softmax(scores / math.sqrt(dh), mask[:, None, :])   # [B,H,N]
    probs = probs * mask[:, None, :]
    pooled = jnp.einsum("bhn,bnhc->bhc", probs.astype(v.dtype), v)
    pooled = nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name="out")(pooled)
    return pooled, jnp.mean(probs, axis=1)


class SymmetricCrossAttention(nn.Module):
  """`lovt_symmetric` cross-attention between regions a [B,R,d] and sentences b [B,S,d].

  A_ij = (W_k a_i).(W_k b_j) / sqrt(d); regions attend to valid sentences (softmax over j) and
  sentences attend to valid regions (softmax over i); probabilities of padded queries are zeroed;
  outputs are W_o(sum_j p_ij W_v x_j) followed by the (shared) output norm. Kernels use LoVT's
  init (Kaiming normal, fan_out, linear gain); biases start at zero.

  Returns a dict: 'region_attended' [B,R,d] (sentences -> regions, LoVT `attended_b2a`),
  'sentence_attended' [B,S,d] (regions -> sentences, `attended_a2b`), 'attention_r2s' f32[B,R,S]
  (each region's distribution over sentences) and 'attention_s2r' f32[B,S,R] (each sentence's
  distribution over regions: the localisation map).
  """
  dim: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions: jax.Array, sentences: jax.Array, region_mask: jax.Array,
               sentence_mask: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    _check_norm(self.norm, "config.method.attention_norm")
    init = nn.initializers.variance_scaling(1.0, "fan_out", "normal")
    dense = lambda name: nn.Dense(self.dim, kernel_init=init,  # noqa: E731
                                  bias_init=nn.initializers.zeros, dtype=self.dtype, name=name)
    key, value, out = dense("key"), dense("value"), dense("out")
    region_mask = jnp.asarray(region_mask, bool)
    sentence_mask = jnp.asarray(sentence_mask, bool)
    ka, kb = key(regions), key(sentences)
    va, vb = value(regions), value(sentences)
    scores = jnp.einsum("brd,bsd->brs", ka, kb, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(self.dim)
    # A sample without any valid partner gets all-zero attention (not uniform over padding).
    has_s = jnp.any(sentence_mask, axis=1)[:, None, None]
    has_r = jnp.any(region_mask, axis=1)[:, None, None]
    p_r2s = masked_softmax(scores, sentence_mask[:, None, :]) * (region_mask[:, :, None] & has_s)
    p_s2r = masked_softmax(jnp.swapaxes(scores, 1, 2), region_mask[:, None, :])
    p_s2r = p_s2r * (sentence_mask[:, :, None] & has_r)
    att_r = out(jnp.einsum("brs,bsd->brd", p_r2s.astype(vb.dtype), vb))
    att_s = out(jnp.einsum("bsr,brd->bsd", p_s2r.astype(va.dtype), va))
    if self.norm == "batch":
      bn = MaskedBatchNorm(dtype=self.dtype, name="norm")
      att_r = bn(att_r, region_mask, train=train)
      att_s = bn(att_s, sentence_mask, train=train)
    elif self.norm == "layer":
      ln = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")
      att_r, att_s = ln(att_r), ln(att_s)
    return {"region_attended": att_r, "sentence_attended": att_s,
            "attention_r2s": p_r2s, "attention_s2r": p_s2r}
