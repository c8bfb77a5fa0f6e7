"""Tower outputs: the feature contract between towers, heads and objectives (ARCHITECTURE.md)."""
from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class ImageFeatures:
  """global_embedding f32[B,Dg]; local f32[B,R,Dl] with R = H*W of `grid_hw` (row-major)."""
  global_embedding: jax.Array
  local: jax.Array
  grid_hw: tuple[int, int] = struct.field(pytree_node=False)


@struct.dataclass
class TextFeatures:
  """global_embedding f32[B,D]; tokens f32[B,L,D] + token_mask bool[B,L];
  sentences f32[B,S,D] + sentence_mask bool[B,S] (pooled from token_to_sentence)."""
  global_embedding: jax.Array
  tokens: jax.Array
  token_mask: jax.Array
  sentences: jax.Array
  sentence_mask: jax.Array
