"""Tower outputs: the feature contract between towers, heads and objectives (ARCHITECTURE.md)."""
from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class ImageFeatures:
  """global_embedding f32[B,Dg]; local f32[B,R,Dl] with R = H*W of `grid_hw` (row-major).

  cls_attention f32[B,R] | None: the last block's [CLS] -> patch attention, head-mean (ViT with
  cls_attention=True; MGCA's patch weights, METHODS.md §11.2). The [CLS] -> [CLS] entry is left
  out, so a row sums to 1 minus that entry. None for towers without [CLS] (ResNet) or when off.
  """
  global_embedding: jax.Array
  local: jax.Array
  grid_hw: tuple[int, int] = struct.field(pytree_node=False)
  cls_attention: jax.Array | None = None


@struct.dataclass
class TextFeatures:
  """global_embedding f32[B,D]; tokens f32[B,L,D] + token_mask bool[B,L];
  sentences f32[B,S,D] + sentence_mask bool[B,S] (pooled from token_to_sentence).

  cls_attention f32[B,L] | None: the last layer's [CLS] -> token attention, head-mean, over all L
  positions (0 on padding; position 0 is [CLS] itself); BERT with cls_attention=True (MGCA's word
  weights, METHODS.md §11.2), else None.
  """
  global_embedding: jax.Array
  tokens: jax.Array
  token_mask: jax.Array
  sentences: jax.Array
  sentence_mask: jax.Array
  cls_attention: jax.Array | None = None


# Cached text features travel in the batch as flat keys (the batch is a flat dict of arrays with
# leading axis B, sharded like every other entry): 'text_features/<field>'. TwoTowerModel reads
# them instead of running the text tower (mmrl.train.text_feature_cache fills them).
CACHED_TEXT_PREFIX = "text_features/"
_TEXT_FIELDS = ("global_embedding", "tokens", "token_mask", "sentences", "sentence_mask",
                "cls_attention")


def text_features_to_batch(features: TextFeatures) -> dict[str, jax.Array]:
  """{'text_features/<field>': array} for each field of `features` that is not None."""
  return {CACHED_TEXT_PREFIX + name: getattr(features, name) for name in _TEXT_FIELDS
          if getattr(features, name) is not None}


def text_features_from_batch(batch) -> TextFeatures | None:
  """The TextFeatures packed into `batch` by `text_features_to_batch`; None when absent."""
  if CACHED_TEXT_PREFIX + "tokens" not in batch:
    return None
  return TextFeatures(**{name: batch[CACHED_TEXT_PREFIX + name] for name in _TEXT_FIELDS
                         if CACHED_TEXT_PREFIX + name in batch})
