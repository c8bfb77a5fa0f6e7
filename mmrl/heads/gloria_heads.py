"""Word features from word-pieces (GLoRIA, MGCA): `pool_words` and `word_features`.

`pool_words` merges the word-pieces of each word (`batch['token_to_word']`, METHODS.md §11.1) by
summing them (GLoRIA `agg_tokens`, MGCA), with the same flattened-batch segment op as
`mmrl.ops.pooling.pool_sentences`: one `segment_sum` over the whole batch, no Python loop over
examples, float32 whatever the input dtype. Word slots with no pieces are zeros and masked out.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmrl.models.features import TextFeatures

WORD_POOLS = ("sum", "mean")


def pool_words(tokens: jax.Array, token_to_word: jax.Array, token_ok: jax.Array,
               num_words: int, mode: str = "sum") -> tuple[jax.Array, jax.Array]:
  """Pools word-piece features into per-word features.

  Args:
    tokens: f[B, L, D] token features.
    token_to_word: i32[B, L] word index 0..W-1 of each piece; -1 (or >= W) never contributes.
    token_ok: bool[B, L] pieces allowed to contribute (attention mask).
    num_words: W, the static number of word slots; words from index W on are dropped.
    mode: 'sum' (GLoRIA, MGCA) or 'mean'.

  Returns:
    words f32[B, W, D] (zeros for empty slots) and word_mask bool[B, W].
  """
  if mode not in WORD_POOLS:
    raise ValueError(f"word pooling mode={mode!r} is not supported; use one of {WORD_POOLS} "
                     "(config.method.word_pool)")
  b, l, d = tokens.shape
  w = int(num_words)
  ids = token_to_word.astype(jnp.int32)
  valid = (ids >= 0) & (ids < w) & token_ok.astype(bool)
  # One extra slot per example collects the pieces that do not contribute; dropped below.
  seg = (jnp.where(valid, ids, w) + (w + 1) * jnp.arange(b, dtype=jnp.int32)[:, None])
  seg = seg.reshape(b * l)
  n = b * (w + 1)
  x = tokens.astype(jnp.float32).reshape(b * l, d)
  sums = jax.ops.segment_sum(x, seg, num_segments=n).reshape(b, w + 1, d)[:, :w]
  counts = jax.ops.segment_sum(jnp.ones((b * l,), jnp.float32), seg,
                               num_segments=n).reshape(b, w + 1)[:, :w]
  mask = counts > 0
  if mode == "mean":
    sums = sums / jnp.maximum(counts, 1.0)[..., None]
  return sums, mask


def word_features(text: TextFeatures, batch: Mapping[str, Any], *, max_words: int,
                  include_cls: bool = False, mode: str = "sum") -> tuple[jax.Array, jax.Array]:
  """The report's words [B, W(+1), D] and mask from the text tower's tokens.

  Args:
    text: the text tower's features (tokens [B, L, D]).
    batch: needs 'token_to_word' and 'attention_mask'. A batch without 'token_to_word' (the
      shape-only `mmrl.train.state.dummy_batch` used for init) gives all words masked out.
    max_words: W, static word slots (config.method.max_words).
    include_cls: prepend the [CLS] token as word 0 (GLoRIA's training words include [CLS]).
    mode: 'sum' | 'mean' over a word's pieces.
  """
  tokens = text.tokens
  b, l = tokens.shape[:2]
  if "token_to_word" in batch:
    to_word = jnp.asarray(batch["token_to_word"])
  else:
    to_word = jnp.full((b, l), -1, jnp.int32)
  ok = jnp.asarray(batch["attention_mask"]) > 0 if "attention_mask" in batch else text.token_mask
  words, mask = pool_words(tokens, to_word, ok, max_words, mode)
  if include_cls:
    words = jnp.concatenate([tokens[:, :1].astype(jnp.float32), words], axis=1)
    mask = jnp.concatenate([jnp.any(mask, axis=1, keepdims=True), mask], axis=1)
  return words, mask
