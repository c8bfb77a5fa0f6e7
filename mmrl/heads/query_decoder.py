"""Query decoders for PLACE (METHODS.md §7.2, §11.3): `QueryDecoder` and `CorrelationPredictor`.

`QueryDecoder` is the Visual Pathology Observation Extractor (VPOE): K learned query tokens go
through L pre-LN layers of

    q = q + SelfAttention(LN(q))                       (queries among themselves)
    q = q + CrossAttention(LN(q), patches, patch_mask) (queries read the patch tokens)
    q = q + MLP(LN(q))

and a final LayerNorm, giving the V-PORs [B,K,D] plus the last layer's cross-attention map
[B,K,N] (head-mean), kept for pointing-game / localisation evaluators.

`CorrelationPredictor` is the CCE predictor: a fraction of the patch tokens is replaced by a
learned mask token (chosen per example with the module's 'dropout' rng, training only), a learned
position embedding is added, and L pre-LN layers of (self-attention over patches, cross-attention
to the report tokens, MLP) predict a feature h~ for every patch.

`CrossAttention` computes its softmax explicitly in float32 (it must return the weights, which
`jax.nn.dot_product_attention` does not); masked keys get a finite -1e9, and a row with no valid
key at all attends to nothing (zero output), so padding never leaks. Parameters are float32;
compute runs in `dtype`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models.vit import MlpBlock, SelfAttention
from mmrl.ops.masking import NEG_INF



class CrossAttention(nn.Module):
  """Multi-head cross-attention x [B,Q,D] -> context [B,N,Dc]; returns (y [B,Q,D], w [B,Q,N]).

  Attributes:
    num_heads: number of heads; D must be a multiple.
    dtype: compute dtype (the softmax is float32 regardless).
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x f[B,Q,D]; context f[B,N,Dc]; context_mask bool[B,N] (False = padding) or None.

    Returns the attended values f[B,Q,D] and the head-mean attention weights f32[B,Q,N].
    """
    b, nq, d = x.shape
    n = context.shape[1]
    if d % self.num_heads:
      raise ConfigError(f"query width {d} is not a multiple of num_heads={self.num_heads}; set "
                        "config.method.place.*_heads to a divisor of the patch feature size")
    hd = d // self.num_heads
    init = nn.initializers.xavier_uniform()
    dense = lambda name: nn.Dense(d, dtype=self.dtype, kernel_init=init, name=name)
    q = dense("query")(x).reshape(b, nq, self.num_heads, hd)
    k = dense("key")(context).reshape(b, n, self.num_heads, hd)
    v = dense("value")(context).reshape(b, n, self.num_heads, hd)
    logits = jnp.einsum("bqhd,bnhd->bhqn", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(hd))
    if context_mask is not None:
      ok = context_mask.astype(bool)[:, None, None, :]
      logits = jnp.where(ok, logits, NEG_INF)
    w = jax.nn.softmax(logits, axis=-1)
    if context_mask is not None:
      # A row with no valid key attends to nothing (instead of uniformly to the padding).
      w = w * jnp.any(context_mask.astype(bool), axis=-1)[:, None, None, None]
    y = jnp.einsum("bhqn,bnhd->bqhd", w.astype(self.dtype), v).reshape(b, nq, d)
    return dense("out")(y), jnp.mean(w, axis=1)


class DecoderLayer(nn.Module):
  """Pre-LN: x + SelfAttn(LN x); x + CrossAttn(LN x, context); x + MLP(LN x)."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = x + SelfAttention(self.num_heads, dtype=self.dtype, name="self_attention")(ln("norm1")(x))
    y, w = CrossAttention(self.num_heads, dtype=self.dtype, name="cross_attention")(
        ln("norm2")(x), context, context_mask)
    x = x + y
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(ln("norm3")(x))
    return x, w


class QueryDecoder(nn.Module):
  """VPOE: K learned queries decode the patch tokens -> (V-PORs f32[B,K,D], attention [B,K,N]).

  Attributes:
    num_queries: K (PLACE 16).
    num_layers: L (PLACE 2).
    num_heads: attention heads; the patch feature size D must be a multiple.
    mlp_dim: MLP hidden width.
    dtype: compute dtype (params float32).
  """
  num_queries: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array,
               patch_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """patches f[B,N,D]; patch_mask bool[B,N] (False = padding) or None (all valid).

    Returns the query features f32[B,K,D] (after a final LayerNorm) and the last layer's
    head-mean cross-attention weights f32[B,K,N].
    """
    if self.num_queries < 1 or self.num_layers < 1:
      raise ConfigError(f"QueryDecoder needs num_queries >= 1 and num_layers >= 1; got "
                        f"{self.num_queries}, {self.num_layers} (config.method.place."
                        "num_queries / decoder_layers)")
    b, _, d = patches.shape
    queries = self.param("queries", nn.initializers.normal(0.02), (self.num_queries, d),
                         jnp.float32)
    x = jnp.broadcast_to(queries.astype(self.dtype), (b, self.num_queries, d))
    context = patches.astype(self.dtype)
    w = None
    for i in range(self.num_layers):
      x, w = DecoderLayer(self.num_heads, self.mlp_dim, dtype=self.dtype,
                          name=f"layer_{i}")(x, context, patch_mask)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm")(x)
    return x.astype(jnp.float32), w


def random_patch_mask(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> jax.Array:
  """bool[B,N], True on exactly round(ratio * N) random patches per example (vectorised)."""
  n_mask = int(round(float(ratio) * num_patches))
  noise = jax.random.uniform(rng, (batch, num_patches))
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  return rank < n_mask


class CorrelationPredictor(nn.Module):
  """CCE predictor: masked patch tokens + report tokens -> predicted patch features f32[B,N,D].

  Attributes:
    num_layers: decoder layers (PLACE 2).
    num_heads: attention heads (D must be a multiple).
    mlp_dim: MLP hidden width.
    mask_ratio: fraction of patches replaced by the mask token in training (PLACE 0.5).
    dtype: compute dtype (params float32).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  mask_ratio: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, text_tokens: jax.Array, text_mask: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """patches f[B,N,D]; text_tokens f[B,T,Dt]; text_mask bool[B,T].

    Returns (predicted features f32[B,N,D], hidden bool[B,N]: the patches replaced by the mask
    token; all False when not training or mask_ratio == 0). Training with mask_ratio > 0 needs
    rngs={'dropout': key}.
    """
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ConfigError(f"corr_predict mask_ratio={self.mask_ratio} must be in [0, 1); PLACE "
                        "uses 0.5 (config.method.objectives[corr_predict].mask_ratio)")
    b, n, d = patches.shape
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, d), jnp.float32)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, n, d), jnp.float32)
    if train and self.mask_ratio > 0:
      hidden = random_patch_mask(self.make_rng("dropout"), b, n, self.mask_ratio)
    else:
      hidden = jnp.zeros((b, n), bool)
    x = jnp.where(hidden[..., None], mask_token.astype(self.dtype), patches.astype(self.dtype))
    x = x + pos.astype(self.dtype)
    context = text_tokens.astype(self.dtype)
    for i in range(self.num_layers):
      x, _ = DecoderLayer(self.num_heads, self.mlp_dim, dtype=self.dtype,
                          name=f"layer_{i}")(x, context, text_mask)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm")(x)
    x = nn.Dense(d, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32), hidden
