"""LRCLR heads (METHODS.md §9.2, §11.3): `RegionSelector`, `Fusion` and `AttentionPool`.

`RegionSelector` scores every region (grid patch) and keeps the top k:

    rho_{b,r} = MLP(p_{b,r})                                   scoring='mlp'
    rho_{b,r} = max_{t valid} cos(W_p p_{b,r}, W_t e_{b,t})     scoring='text_sim'
    idx_b     = top_k_r(rho_{b,r})  over valid regions (padding gets -1e9 and is never picked
                                    while k <= #valid regions; otherwise the extra slots are
                                    returned with selected_mask False)

Gradient to the scorer (`estimator`):
- 'straight_through' (default): the selected features are multiplied by the gate
  g = h + s - stop_gradient(s), where h is the hard top-k indicator and s = softmax_r(rho / T)
  over the valid regions. The forward value is exactly p (g == 1 on the selected slots), the
  backward pass is that of the soft weights s, so every valid score (selected or not, through
  the softmax normalisation) receives a gradient from the downstream losses.
- 'hard': plain top-k, no gradient to the scores (the scorer then only learns from optional
  regularisers).
The perturbed (Berthet et al.) top-k of §9.2 is not implemented.

`Fusion` is the cross-modality interaction: n pre-LN layers of

    r = r + CrossAttn(LN r, t, t_mask)   (selected regions read the report tokens)
    t = t + CrossAttn(LN t, r, r_mask)   (tokens read the selected regions)
    r = r + MLP(LN r);  t = t + MLP(LN t)

then a final LayerNorm per stream. Cross-attention is `mmrl.heads.query_decoder.CrossAttention`
(fp32 softmax, finite -1e9 masks, rows without any valid key attend to nothing).

`AttentionPool` pools the fused regions into one vector with a learned query (masked).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.query_decoder import NEG_INF, CrossAttention
from mmrl.models.vit import MlpBlock

SCORINGS = ("mlp", "text_sim")
ESTIMATORS = ("straight_through", "hard")


def _unit(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def select_top_k(regions: jax.Array, scores: jax.Array, region_mask: jax.Array, k: int, *,
                 estimator: str = "straight_through", temperature: float = 1.0
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Top-k regions by score (pure function, vectorised over the batch).

  Args:
    regions: f[B,R,D] region features.
    scores: f[B,R] selection scores rho.
    region_mask: bool[B,R] (False = padding region).
    k: how many regions to keep (k <= R).
    estimator: 'straight_through' or 'hard' (module docstring).
    temperature: T of the straight-through softmax.

  Returns:
    (selected f[B,k,D] in descending score order, selected_mask bool[B,k], indices i32[B,k]).
  """
  if estimator not in ESTIMATORS:
    raise ConfigError(f"RegionSelector estimator={estimator!r} is not known; use one of "
                      f"{ESTIMATORS} (config.method.lrclr.estimator)")
  r = regions.shape[1]
  if not 1 <= k <= r:
    raise ConfigError(f"RegionSelector top_k={k} must be in [1, {r}] (the number of regions); "
                      "set config.method.lrclr.top_k accordingly")
  mask = jnp.asarray(region_mask).astype(bool)
  logits = jnp.where(mask, scores.astype(jnp.float32), NEG_INF)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(logits), k)
  sel_mask = jnp.take_along_axis(mask, idx, axis=1)
  selected = jnp.take_along_axis(regions, idx[..., None], axis=1)
  if estimator == "straight_through":
    soft = jax.nn.softmax(logits / temperature, axis=-1)
    soft_sel = jnp.take_along_axis(soft, idx, axis=1)
    delta = soft_sel - jax.lax.stop_gradient(soft_sel)  # exactly 0 forward, d soft backward
    selected = selected + selected * delta[..., None].astype(selected.dtype)
  selected = jnp.where(sel_mask[..., None], selected, jnp.zeros_like(selected))
  return selected, sel_mask, idx.astype(jnp.int32)


class RegionSelector(nn.Module):
  """Scores regions and keeps the top k (module docstring).

  Attributes:
    top_k: k (LRCLR 16).
    scoring: 'mlp' or 'text_sim'.
    hidden: MLP hidden width ('mlp') or the shared similarity width ('text_sim').
    estimator: 'straight_through' or 'hard'.
    temperature: T of the straight-through softmax.
    dtype: compute dtype (the scores are float32).
  """
  top_k: int
  scoring: str = "mlp"
  hidden: int = 256
  estimator: str = "straight_through"
  temperature: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions: jax.Array, region_mask: jax.Array | None = None,
               text_tokens: jax.Array | None = None,
               text_mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """regions f[B,R,D]; region_mask bool[B,R]; text tokens f[B,T,Dt] + mask ('text_sim').

    Returns {'selected' f[B,k,D], 'selected_mask' bool[B,k], 'indices' i32[B,k],
    'scores' f32[B,R]}.
    """
    if self.scoring not in SCORINGS:
      raise ConfigError(f"RegionSelector scoring={self.scoring!r} is not known; use one of "
                        f"{SCORINGS} (config.method.lrclr.scoring)")
    b, r, _ = regions.shape
    if region_mask is None:
      region_mask = jnp.ones((b, r), bool)
    x = regions.astype(self.dtype)
    if self.scoring == "mlp":
      h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="score_hidden")(x))
      scores = nn.Dense(1, dtype=self.dtype, name="score_out")(h)[..., 0].astype(jnp.float32)
    else:
      if text_tokens is None or text_mask is None:
        raise ConfigError("RegionSelector scoring='text_sim' needs the text tokens and mask")
      pr = _unit(nn.Dense(self.hidden, dtype=self.dtype, name="region_key")(x))
      pt = _unit(nn.Dense(self.hidden, dtype=self.dtype, name="token_key")(
          text_tokens.astype(self.dtype)))
      sim = jnp.einsum("brd,btd->brt", pr, pt)
      tmask = jnp.asarray(text_mask).astype(bool)[:, None, :]
      scores = jnp.max(jnp.where(tmask, sim, NEG_INF), axis=-1)
      scores = jnp.where(jnp.any(tmask, axis=-1), scores, 0.0)
    selected, sel_mask, idx = select_top_k(regions, scores, region_mask, self.top_k,
                                           estimator=self.estimator,
                                           temperature=self.temperature)
    return {"selected": selected, "selected_mask": sel_mask, "indices": idx, "scores": scores}


class FusionLayer(nn.Module):
  """One bidirectional pre-LN cross-attention layer (module docstring)."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, r, r_mask, t, t_mask):
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    y, w_rt = CrossAttention(self.num_heads, dtype=self.dtype, name="region_to_text")(
        ln("norm_r1")(r), t, t_mask)
    r = r + y
    y, _ = CrossAttention(self.num_heads, dtype=self.dtype, name="text_to_region")(
        ln("norm_t1")(t), r, r_mask)
    t = t + y
    r = r + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp_r")(ln("norm_r2")(r))
    t = t + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp_t")(ln("norm_t2")(t))
    return r, t, w_rt


class Fusion(nn.Module):
  """n layers of bidirectional cross-attention between regions and tokens (module docstring).

  Both streams must have the same width D (project them first).

  Attributes:
    num_layers: n (LRCLR 2).
    num_heads: attention heads (D must be a multiple).
    mlp_dim: MLP hidden width.
    dtype: compute dtype (params float32).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions: jax.Array, region_mask: jax.Array, tokens: jax.Array,
               token_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """regions f[B,K,D] + bool[B,K]; tokens f[B,T,D] + bool[B,T].

    Returns (fused regions f32[B,K,D], fused tokens f32[B,T,D], the last layer's region->token
    attention f32[B,K,T], head-mean).
    """
    if self.num_layers < 1:
      raise ConfigError(f"Fusion num_layers={self.num_layers} must be >= 1 "
                        "(config.method.lrclr.fusion_layers; LRCLR 2)")
    if regions.shape[-1] != tokens.shape[-1]:
      raise ConfigError(f"Fusion needs equal widths; got regions {regions.shape} and tokens "
                        f"{tokens.shape}; project both to config.method.lrclr.width")
    r, t = regions.astype(self.dtype), tokens.astype(self.dtype)
    r_mask, t_mask = jnp.asarray(region_mask).astype(bool), jnp.asarray(token_mask).astype(bool)
    w = None
    for i in range(self.num_layers):
      r, t, w = FusionLayer(self.num_heads, self.mlp_dim, dtype=self.dtype,
                            name=f"layer_{i}")(r, r_mask, t, t_mask)
    r = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm_r")(r)
    t = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm_t")(t)
    return r.astype(jnp.float32), t.astype(jnp.float32), w


class AttentionPool(nn.Module):
  """A learned query attends over masked tokens: x f[B,N,D] + bool[B,N] -> (f32[B,D], w[B,N])."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = x.shape[-1]
    query = self.param("query", nn.initializers.normal(0.02), (1, 1, d), jnp.float32)
    q = jnp.broadcast_to(query.astype(self.dtype), (x.shape[0], 1, d))
    y, w = CrossAttention(self.num_heads, dtype=self.dtype, name="attention")(q, x, mask)
    return y[:, 0].astype(jnp.float32), w[:, 0]


__all__ = ["select_top_k", "RegionSelector", "Fusion", "FusionLayer", "AttentionPool",
           "SCORINGS", "ESTIMATORS"]
