"""MLIP heads (METHODS.md §8.2): knowledge embeddings from the text tower, knowledge attention.

- `encode_knowledge(text_tower, tokens)`: the (shared) text tower applied to the static knowledge
  descriptions (`mmrl.knowledge.knowledge_tokens`), global vectors averaged over each finding's
  descriptions -> f32[K, D], with stop-gradient (§8.2: "the *frozen* text tower applied to each
  concept's definition"; the tower's weights still train from the reports).
  The MLIP method gets the running TwoTowerModel (`Method.uses_model`) and passes its
  `text_tower`, so the knowledge texts run through the same parameters.
- `KnowledgeAttention`: tokens attend to the knowledge, w~_t = w_t + W_o softmax_k(q_t . k_k /
  sqrt(d)) v_k (§8.2 TKP step 1), softmax in float32; returns w~ and the attention [B, W, K].
- `sample_negatives(sim, valid, rng, tau)`: one hard negative per row of an [B,B] similarity
  matrix (§8.2 ITM "hard negatives sampled from the ITC similarities", ALBEF): j ~ softmax_j(
  s_ij / tau) over valid j != i (Gumbel-max via `jax.random.categorical`; the argmax, i.e. the
  hardest negative, when rng is None), vectorised, with a per-row `ok` flag.
- `swap_sentences(...)`: the §8.2 text-swap negative at the input level, fixed shapes: report i
  loses one of its sentences and gets sentence k' of a donor report in its place, appended before
  its [SEP]; tokens beyond L are dropped (the [SEP] is kept).
- `ImageTextMatching`: both streams projected to `width`, the given (image, text) pairs fused by
  `Fusion` (LRCLR's bidirectional cross-attention layers, §11.3 "Fusion ... MLIP ITM"), and a
  binary logit from the fused [CLS] (text position 0).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmrl.config_errors import ConfigError
from mmrl.heads.region_selection import Fusion
from mmrl.ops.masking import NEG_INF



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


def sample_negatives(sim: jax.Array, valid: jax.Array, rng: jax.Array | None, *,
                     tau: float = 0.07) -> tuple[jax.Array, jax.Array]:
  """One negative column per row of `sim` (module docstring).

  Args:
    sim: f[B,B] similarities (row i: candidates j); gradients are stopped.
    valid: bool[B]; invalid examples are neither rows (ok False) nor candidates.
    rng: a key (sample j ~ softmax(s_ij / tau)) or None (argmax: the hardest negative).
    tau: sampling temperature.

  Returns:
    (index i32[B], ok bool[B]): ok is False for invalid rows and rows without any valid j != i
    (their index is then meaningless but in range).
  """
  b = sim.shape[0]
  valid = jnp.asarray(valid).astype(bool)
  cand = valid[None, :] & valid[:, None] & ~jnp.eye(b, dtype=bool)
  logits = jax.lax.stop_gradient(sim.astype(jnp.float32)) / tau
  logits = jnp.where(cand, logits, NEG_INF)
  if rng is None:
    idx = jnp.argmax(logits, axis=-1)
  else:
    idx = jax.random.categorical(rng, logits, axis=-1)
  return idx.astype(jnp.int32), jnp.any(cand, axis=-1)


def _choose_present(present: jax.Array, rng: jax.Array | None) -> jax.Array:
  """A uniformly random True column per row (the first one when rng is None)."""
  if rng is None:
    return jnp.argmax(present, axis=-1).astype(jnp.int32)
  logits = jnp.where(present, 0.0, NEG_INF)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def swap_sentences(input_ids: jax.Array, attention_mask: jax.Array,
                   token_to_sentence: jax.Array, donor: jax.Array, num_sentences: int,
                   rng: jax.Array | None) -> tuple[dict[str, jax.Array], jax.Array]:
  """Text-swap negatives (module docstring), vectorised over the batch.

  Args:
    input_ids, attention_mask, token_to_sentence: i32[B,L] as in the batch ([CLS] first, [SEP]
      at the last attended position, sentence id -1 on specials and padding).
    donor: i32[B], the report each example takes a sentence from.
    num_sentences: S (sentence ids are < S).
    rng: a key (random removed / donated sentence) or None (the first sentence of each).

  Returns:
    ({'input_ids', 'attention_mask', 'token_to_sentence'} i32[B,L] of the swapped reports,
    ok bool[B]: both reports have a sentence and donor != i). The donated tokens take the removed
    sentence's id.
  """
  ids = jnp.asarray(input_ids).astype(jnp.int32)
  att = jnp.asarray(attention_mask) > 0
  t2s = jnp.where(att, jnp.asarray(token_to_sentence).astype(jnp.int32), -1)
  b, length = ids.shape
  present = jnp.any(t2s[:, :, None] == jnp.arange(num_sentences)[None, None, :], axis=1)
  r_own, r_don = (None, None) if rng is None else jax.random.split(rng)
  k_own = _choose_present(present, r_own)
  k_don = _choose_present(present[donor], r_don)
  ok = jnp.any(present, -1) & jnp.any(present[donor], -1) & (donor != jnp.arange(b))

  def one(ids_i, att_i, t2s_i, ids_d, t2s_d, k_i, k_d):
    pos = jnp.arange(length)
    n = jnp.sum(att_i)
    is_sep = pos == n - 1
    keep = att_i & ~is_sep & (t2s_i != k_i)
    take = t2s_d == k_d
    n_keep = jnp.sum(keep)
    dest_take = n_keep + jnp.cumsum(take) - 1
    take = take & (dest_take < length - 1)
    sep_dest = jnp.minimum(n_keep + jnp.sum(take), length - 1)
    drop = length  # out of range: dropped by the scatter
    d_keep = jnp.where(keep, jnp.cumsum(keep) - 1, drop)
    d_take = jnp.where(take, dest_take, drop)
    sep_id = jnp.sum(jnp.where(is_sep, ids_i, 0))
    new_ids = jnp.zeros_like(ids_i).at[d_keep].set(ids_i, mode="drop")
    new_ids = new_ids.at[d_take].set(ids_d, mode="drop").at[sep_dest].set(sep_id)
    new_t2s = jnp.full_like(t2s_i, -1).at[d_keep].set(t2s_i, mode="drop")
    new_t2s = new_t2s.at[d_take].set(jnp.full_like(t2s_d, k_i), mode="drop")
    new_t2s = new_t2s.at[sep_dest].set(-1)
    new_att = (pos <= sep_dest) & (n > 0)
    return new_ids, new_att.astype(jnp.int32), jnp.where(new_att, new_t2s, -1)

  new_ids, new_att, new_t2s = jax.vmap(one)(ids, att, t2s, ids[donor], t2s[donor], k_own, k_don)
  return {"input_ids": new_ids, "attention_mask": new_att, "token_to_sentence": new_t2s}, ok


class ImageTextMatching(nn.Module):
  """ITM head (module docstring): pairs of patches and report tokens -> matching logits.

  Attributes:
    width: fusion width D (both streams are projected to it).
    num_layers: Fusion layers (§8.2: 2).
    num_heads: attention heads (D must be a multiple).
    mlp_dim: Fusion MLP width.
    dtype: compute dtype (params float32; logits float32).
  """
  width: int
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, tokens: jax.Array, token_mask: jax.Array,
               image_index: jax.Array, text_index: jax.Array) -> jax.Array:
    """patches f[Bi,R,Dv]; tokens f[Bt,T,Dt] + token_mask bool[Bt,T] (keys the fusion may read;
    position 0 is the [CLS] whose fused state is classified); image_index, text_index i32[B,P]:
    pair (b, p) is image image_index[b,p] with text text_index[b,p]. Returns logits f32[B,P]."""
    v = nn.Dense(self.width, dtype=self.dtype, name="image_in")(patches)
    t = nn.Dense(self.width, dtype=self.dtype, name="text_in")(tokens)
    b, p = image_index.shape
    image_index, text_index = image_index.reshape(-1), text_index.reshape(-1)
    vi = v[image_index]
    ti, mi = t[text_index], jnp.asarray(token_mask).astype(bool)[text_index]
    _, fused_t, _ = Fusion(self.num_layers, self.num_heads, self.mlp_dim, dtype=self.dtype,
                           name="fusion")(vi, jnp.ones(vi.shape[:2], bool), ti, mi)
    logit = nn.Dense(1, dtype=self.dtype, name="itm_head")(fused_t[:, 0])
    return logit[:, 0].astype(jnp.float32).reshape(b, p)


__all__ = ["encode_knowledge", "KnowledgeAttention", "sample_negatives", "swap_sentences",
           "ImageTextMatching"]
