"""MLIP heads (METHODS.md §8.2): knowledge embeddings from the text tower, knowledge attention.

- `encode_knowledge(text_tower, tokens)`: the (shared) text tower applied to the static knowledge
  descriptions (`mmrl.knowledge.knowledge_tokens`), global vectors averaged over each finding's
  descriptions -> f32[K, D], with stop-gradient (§8.2: "the *frozen* text tower applied to each
  concept's definition"; the tower's weights still train from the reports).
  The MLIP method gets the running TwoTowerModel (`Method.uses_model`) and passes its
  `text_tower`, so the knowledge texts run through the same parameters.
- `KnowledgeAttention`: tokens attend to the knowledge, w~_t = w_t + W_o softmax_k(q_t . k_k /
  sqrt(d)) v_k (§8.2 TKP step 1), softmax in float32; returns w~ and the attention [B, W, K].
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmrl.config_errors import ConfigError


def encode_knowledge(text_tower: nn.Module, tokens: Mapping[str, np.ndarray]) -> jax.Array:
  """Knowledge embeddings f32[K, D] (module docstring); `tokens` from `knowledge_tokens`."""
  desc_mask = np.asarray(tokens["description_mask"], bool)
  k, d = desc_mask.shape
  feats = text_tower(jnp.asarray(tokens["input_ids"]), jnp.asarray(tokens["attention_mask"]),
                     jnp.asarray(tokens["token_to_sentence"]), num_sentences=1, train=False)
  g = jax.lax.stop_gradient(feats.global_embedding.astype(jnp.float32)).reshape(k, d, -1)
  w = jnp.asarray(desc_mask, jnp.float32)[..., None]
  return jnp.sum(g * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class KnowledgeAttention(nn.Module):
  """w~ = w + W_o MHA(w, knowledge) (module docstring).

  Attributes:
    num_heads: attention heads (dim must divide).
    dtype: compute dtype of the projections; logits and softmax are float32.
  """
  num_heads: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, words: jax.Array, knowledge: jax.Array) -> tuple[jax.Array, jax.Array]:
    """words f[B, W, d], knowledge f[K, d] -> (w~ f32[B, W, d], attention f32[B, W, K] head-mean)."""
    dim = words.shape[-1]
    h = int(self.num_heads)
    if h < 1 or dim % h:
      raise ConfigError(f"config.method.mlip.knowledge_heads={h} must be >= 1 and divide "
                        f"embed_dim={dim}")
    dense = lambda name: nn.DenseGeneral((h, dim // h), dtype=self.dtype, name=name)
    q = dense("query")(words).astype(jnp.float32)              # [B, W, H, dh]
    k = dense("key")(knowledge).astype(jnp.float32)            # [K, H, dh]
    v = dense("value")(knowledge).astype(jnp.float32)
    logits = jnp.einsum("bwhd,khd->bhwk", q, k) / np.sqrt(dim // h)
    att = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhwk,khd->bwhd", att, v)
    out = nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, name="out")(ctx)
    return words.astype(jnp.float32) + out.astype(jnp.float32), jnp.mean(att, axis=1)


__all__ = ["encode_knowledge", "KnowledgeAttention"]
