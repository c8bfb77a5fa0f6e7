"""Masking primitives: the finite mask value, the valid-row mask of a batch, a masked softmax and
L2 normalisation. One copy each, imported by heads, objectives and evaluation."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

NEG_INF = -1e9  # finite mask value: never -inf (NaN-free gradients)


def masked_softmax(scores: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """float32 softmax of `scores` over `axis` where `mask` (broadcastable) is True, else NEG_INF.

  A fully masked slice is uniform (every entry NEG_INF), never NaN."""
  scores = jnp.where(mask, scores.astype(jnp.float32), NEG_INF)
  return jax.nn.softmax(scores, axis=axis)


def valid_rows(batch: Any, b: int) -> jax.Array:
  """bool[b]: `batch['valid']` (the padded-batch row mask) when `batch` is a Mapping holding it,
  else all True."""
  valid = batch.get("valid") if isinstance(batch, Mapping) else None
  return jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| along the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
