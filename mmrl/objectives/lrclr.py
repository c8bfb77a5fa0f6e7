"""LRCLR (Rizvi et al. 2023, reconstructed; METHODS.md §9.2): region selection + interaction.

No code and no numbers were found for LRCLR (§9.1); this is the §9.2 implementable spec [O].

Heads (`LRCLR.apply_heads`, modules in `mmrl.heads.region_selection`):
  p = Dense(width)(image.local)            regions [B,R,w]
  e = Dense(width)(text.tokens)            report tokens [B,T,w], mask text.token_mask
  RegionSelector(top_k, scoring)           P_sel [B,k,w], selected_mask [B,k], indices [B,k]
  Fusion(fusion_layers)(P_sel, e)          fused regions P~ [B,k,w] (regions <-> tokens)
  AttentionPool(P~ or P_sel)               v~ [B,w] -> MLPProjection -> image_embed [B,d]
  MLPProjection(text.global_embedding)     text_embed [B,d]

Outputs besides the towers':
  image_embed, text_embed f[B,d]           for clip_nce (tau 0.07), retrieval and zero-shot
  lrclr/region_embed f[B,k,d]              projected selected regions (pre-fusion, with the
                                           straight-through gate) for the region loss
  lrclr/region_mask bool[B,k]              valid selected slots
  text_words_local f[B,W,d], word_mask     projected words (word-pieces summed, as MGCA)
  lrclr/selected i32[B,k]                  selected region indices (row-major into the grid),
                                           for localisation / interpretability evaluators
  lrclr/scores f32[B,R]                    selection scores rho
  lrclr/region_text_attention f32[B,k,T]   last fusion layer, regions -> tokens, head-mean
  lrclr/pool_weights f32[B,k]              attention-pool weights over the selected regions
  log_tau []                               when an objective asks for a learnable temperature

`image_embed_from` (config.method.lrclr): 'selected' (default: pools the selected regions before
fusion; text-independent with scoring='mlp') or 'fused' (§9.2 literally: v~ pools the fused
regions, which have read the paired report). CAUTION: with 'fused', image_embed_b depends on
report b, so clip_nce can be lowered by copying report information into the image side, and
retrieval / zero-shot on image_embed see the paired report (zero-shot must then condition on
the prompt, see mmrl.evaluation.zero_shot). Use 'selected' for text-free image embeddings.

Objective `lrclr_region` (pure, float32, finite -1e9 masks, vectorised):
  L_region = MGCA's tca (mmrl.objectives.mgca.tca, §4.2, §11.4) over the selected regions
             'lrclr/region_embed' (mask 'lrclr/region_mask') and the words 'text_words_local'
  + entropy_weight * mean_b H(softmax_{r valid}(rho_{b,r}))   (optional §9.2 regulariser; 0)
The total of §9.2 is clip_nce(tau 0.07) + 0.5 * lrclr_region (weights in the config).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.gloria_heads import word_features
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.heads.region_selection import AttentionPool, Fusion, RegionSelector
from mmrl.objectives.contrastive import NEG_INF, valid_mean
from mmrl.objectives.methods import METHODS, Method
from mmrl.objectives.mgca import tca
from mmrl.objectives.registry import OBJECTIVES, Metrics

EMBED_SOURCES = ("fused", "selected")


def score_entropy(scores: jax.Array, region_mask: jax.Array) -> jax.Array:
  """H(softmax_r(scores)) f32[B] over the valid regions (0 for a row without any)."""
  mask = jnp.asarray(region_mask).astype(bool)
  logp = jax.nn.log_softmax(jnp.where(mask, scores.astype(jnp.float32), NEG_INF), axis=-1)
  ent = -jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0), axis=-1)
  return jnp.where(jnp.any(mask, axis=-1), ent, 0.0)


@OBJECTIVES.register("lrclr_region")
def lrclr_region(outputs: dict[str, Any], batch: dict[str, Any], *,
                 rng: jax.Array | None = None, tau: float = 0.1, bidirectional: bool = True,
                 entropy_weight: float = 0.0, regions_key: str = "lrclr/region_embed",
                 region_mask_key: str = "lrclr/region_mask",
                 words_key: str = "text_words_local", word_mask_key: str = "word_mask",
                 scores_key: str = "lrclr/scores",
                 scores_mask_key: str = "lrclr/scores_mask") -> tuple[jax.Array, Metrics]:
  """LRCLR's region loss: tca over the selected regions (+ optional score entropy).

  Args:
    outputs: needs `regions_key` f[B,k,d], `region_mask_key` bool[B,k], `words_key` f[B,W,d],
      `word_mask_key` bool[B,W]; with entropy_weight > 0 also `scores_key` f[B,R] (and
      optionally `scores_mask_key` bool[B,R], default all valid).
    batch: optional 'valid' bool[B].
    rng: unused.
    tau: tca's tau_l (MGCA 0.1).
    bidirectional: word and region sides (True) or the word side only.
    entropy_weight: weight of the mean selection-score entropy (0 = off; > 0 sharpens rho).

  Returns:
    (loss, metrics loss_word, loss_patch, score_entropy, selected_valid (mean number of valid
    selected slots)).
  """
  del rng
  if entropy_weight < 0:
    raise ConfigError(f"lrclr_region entropy_weight={entropy_weight} must be >= 0 (0 = off)")
  for key in (regions_key, region_mask_key, words_key, word_mask_key):
    if key not in outputs:
      raise ConfigError(f"lrclr_region needs the model output {key!r} (method 'lrclr' provides "
                        f"it); known outputs: {sorted(outputs)}")
  loss, metrics = tca(outputs, batch, tau=tau, bidirectional=bidirectional,
                      words_key=words_key, word_mask_key=word_mask_key,
                      regions_key=regions_key, region_mask_key=region_mask_key)
  region_mask = jnp.asarray(outputs[region_mask_key]).astype(bool)
  b = region_mask.shape[0]
  valid = batch.get("valid") if isinstance(batch, dict) else None
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  if scores_key in outputs:
    scores = outputs[scores_key]
    smask = outputs.get(scores_mask_key)
    smask = jnp.ones(scores.shape, bool) if smask is None else smask
    ent = valid_mean(score_entropy(scores, smask), valid)
  elif entropy_weight > 0:
    raise ConfigError(f"lrclr_region entropy_weight={entropy_weight} needs the output "
                      f"{scores_key!r}; set entropy_weight=0 or use method 'lrclr'")
  else:
    ent = jnp.zeros((), jnp.float32)
  if entropy_weight > 0:
    loss = loss + entropy_weight * ent
  metrics = dict(metrics)
  metrics.update(score_entropy=jax.lax.stop_gradient(ent),
                 selected_valid=valid_mean(jnp.sum(region_mask, axis=-1), valid))
  return loss, metrics


@METHODS.register("lrclr")
class LRCLR(Method):
  """LRCLR heads (module docstring; METHODS.md §9.2).

  Reads config.method.{embed_dim, projection_hidden, projection_norm} and config.method.lrclr.
  {width, top_k, scoring, score_hidden, estimator, st_temperature, fusion_layers, fusion_heads,
  fusion_mlp_dim, pool_heads, max_words, image_embed_from}.
  """

  def apply_heads(self, image, text, batch, *, train, dtype):
    c = self.cfg
    if "lrclr" not in c:
      raise ConfigError("config.method.lrclr is missing; LRCLR needs config.method.lrclr."
                        "{width, top_k, scoring, ...} (see experiments/configs/lrclr.py)")
    p = c.lrclr
    source = str(p.get("image_embed_from", "selected"))
    if source not in EMBED_SOURCES:
      raise ConfigError(f"config.method.lrclr.image_embed_from={source!r} is not known; use one "
                        f"of {EMBED_SOURCES}")
    width = int(p.width)
    norm = str(c.get("projection_norm", "none"))

    def proj(name):
      return MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim), norm=norm,
                           dtype=dtype, name=name)

    regions = nn.Dense(width, dtype=dtype, name="region_input")(image.local)
    tokens = nn.Dense(width, dtype=dtype, name="token_input")(text.tokens)
    token_mask = jnp.asarray(text.token_mask).astype(bool)
    region_mask = jnp.ones(regions.shape[:2], bool)
    sel = RegionSelector(top_k=int(p.top_k), scoring=str(p.get("scoring", "mlp")),
                         hidden=int(p.get("score_hidden", width)),
                         estimator=str(p.get("estimator", "straight_through")),
                         temperature=float(p.get("st_temperature", 1.0)), dtype=dtype,
                         name="region_selector")(regions, region_mask, tokens, token_mask)
    fused, _, attention = Fusion(num_layers=int(p.fusion_layers), num_heads=int(p.fusion_heads),
                                 mlp_dim=int(p.fusion_mlp_dim), dtype=dtype,
                                 name="fusion")(sel["selected"], sel["selected_mask"], tokens,
                                                token_mask)
    pool_in = fused if source == "fused" else sel["selected"]
    pooled, pool_w = AttentionPool(int(p.get("pool_heads", 1)), dtype=dtype,
                                   name="attention_pool")(pool_in, sel["selected_mask"])
    words, word_mask = word_features(text, batch, max_words=int(p.get("max_words", 111)),
                                     include_cls=False, mode="sum")
    out: dict[str, Any] = {
        "image_embed": proj("image_projection")(pooled, train=train),
        "text_embed": proj("text_projection")(text.global_embedding, train=train),
        "lrclr/region_embed": proj("region_projection")(sel["selected"], train=train),
        "text_words_local": proj("word_projection")(words, train=train),
    }
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    out.update({
        "lrclr/region_mask": sel["selected_mask"],
        "word_mask": word_mask,
        "lrclr/selected": sel["indices"],
        "lrclr/scores": sel["scores"],
        "lrclr/scores_mask": region_mask,
        "lrclr/region_text_attention": attention,
        "lrclr/pool_weights": pool_w,
    })
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out


__all__ = ["lrclr_region", "score_entropy", "LRCLR", "EMBED_SOURCES"]
