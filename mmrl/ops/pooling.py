"""Masked pooling: tokens -> sentences (segment max / mean) and masked mean / max over a set.

Pure functions, computed in float32 whatever the input dtype, vectorised over the batch (one
segment op over the flattened batch; no Python loop over examples). Padding and empty groups
never leak: a sentence with no tokens, or a row whose mask is all False, pools to zeros and is
reported as masked out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

POOL_MODES = ("max", "mean")


def pool_sentences(tokens: jax.Array, token_to_sentence: jax.Array, num_sentences: int,
                   mode: str = "max") -> tuple[jax.Array, jax.Array]:
  """Pools token features into per-sentence features.

  Args:
    tokens: f[B, L, D] token features (any float dtype; pooled in float32).
    token_to_sentence: i32[B, L] sentence index 0..S-1 of each token; -1 (or any value outside
      [0, S)) for special tokens and padding, which never contribute.
    num_sentences: S, the static number of sentence slots.
    mode: 'max' (LoVT) or 'mean'.

  Returns:
    sentences f32[B, S, D] (zeros for sentences with no tokens) and sentence_mask bool[B, S]
    (True where the sentence has at least one token).
  """
  if mode not in POOL_MODES:
    raise ValueError(f"sentence pooling mode={mode!r} is not supported; use one of {POOL_MODES} "
                     "(config.model.text.sentence_pool)")
  b, l, d = tokens.shape
  s = int(num_sentences)
  x = tokens.astype(jnp.float32).reshape(b * l, d)
  ids = token_to_sentence.astype(jnp.int32)
  valid = (ids >= 0) & (ids < s)
  # One extra slot per example collects the invalid tokens; it is dropped below.
  seg = jnp.where(valid, ids, s) + (s + 1) * jnp.arange(b, dtype=jnp.int32)[:, None]
  seg = seg.reshape(b * l)
  n = b * (s + 1)
  counts = jax.ops.segment_sum(jnp.ones((b * l,), jnp.float32), seg, num_segments=n)
  counts = counts.reshape(b, s + 1)[:, :s]
  mask = counts > 0
  if mode == "mean":
    sums = jax.ops.segment_sum(x, seg, num_segments=n).reshape(b, s + 1, d)[:, :s]
    pooled = sums / jnp.maximum(counts, 1.0)[..., None]
  else:
    maxes = jax.ops.segment_max(x, seg, num_segments=n).reshape(b, s + 1, d)[:, :s]
    pooled = jnp.where(mask[..., None], maxes, 0.0)
  return pooled, mask


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x f[B, N, D] over N where mask bool[B, N]; f32[B, D], zeros for empty rows."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Max of x f[B, N, D] over N where mask bool[B, N]; f32[B, D], zeros for empty rows."""
  mask = mask.astype(bool)
  xf = jnp.where(mask[..., None], x.astype(jnp.float32), -jnp.inf)
  out = jnp.max(xf, axis=1)
  return jnp.where(jnp.any(mask, axis=1)[:, None], out, 0.0)
