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
  lrclr/itm_logits f32[B,3], lrclr/itm_mask bool[B,3]
                                           with an `lrclr_itm` objective: the fused matching
                                           logit of (image b, report b), (image b, a hard
                                           negative report), (a hard negative image, report b)
  lrclr/itm_negatives i32[B,2]             the sampled negative report / image indices
  log_tau []                               when an objective asks for a learnable temperature

`image_embed_from` (config.method.lrclr): 'selected' (default: pools the selected regions before
fusion; text-independent with scoring='mlp') or 'fused' (§9.2 literally: v~ pools the fused
regions, which have read the paired report). CAUTION: with 'fused', image_embed_b depends on
report b, so clip_nce can be lowered by copying report information into the image side, and
retrieval / zero-shot on image_embed see the paired report (zero-shot must then condition on
the prompt, see mmrl.evaluation.evaluators.zero_shot). Use 'selected' for text-free image embeddings.

Image-text matching (ITM, §9.2 "cross-modality interaction" [O]): with the default
image_embed_from='selected' no contrastive loss reaches the fusion layers, so an `lrclr_itm`
objective trains them to tell matched from unmatched pairs, ALBEF-style (Li et al. 2021) over
sampled hard negatives rather than all B^2 pairs (O(B) fusion cost, no chunking needed): for each
image a negative report j ~ softmax_j(cos(v_i, u_j) / itm_temperature) over the valid reports of
other studies (no gradient; the most similar one when no 'dropout' RNG is given, e.g. at
evaluation), and for each report a negative image likewise. The positive pair and both negatives
run through the same Fusion in one [3B] call; the matching head reads [AttentionPool(fused
regions); masked mean(fused tokens)] -> Dense(1), so both fusion streams get gradients. A
negative slot is masked when the batch has no valid candidate for it.

Objective `lrclr_itm` (pure, float32): mean over the unmasked slots of the binary cross-entropy
of 'lrclr/itm_logits' with labels (1, 0, 0); metrics acc, loss_pos, loss_neg.

Objective `lrclr_region` (pure, float32, finite -1e9 masks, vectorised):
  L_region = MGCA's tca (mmrl.objectives.mgca.tca, §4.2, §11.4) over the selected regions
             'lrclr/region_embed' (mask 'lrclr/region_mask') and the words 'text_words_local'
  + entropy_weight * mean_b H(softmax_{r valid}(rho_{b,r}))   (optional §9.2 regulariser; 0)
The total of §9.2 is clip_nce(tau 0.07) + 0.5 * lrclr_region (weights in the config); the
config adds lrclr_itm (weight 1, as ALBEF) so the fusion layers train.
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
from mmrl.objectives.contrastive import NEG_INF, l2_normalize, valid_mean
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


ITM_LABELS = (1.0, 0.0, 0.0)


@OBJECTIVES.register("lrclr_itm")
def lrclr_itm(outputs: dict[str, Any], batch: dict[str, Any], *,
              rng: jax.Array | None = None, logits_key: str = "lrclr/itm_logits",
              mask_key: str = "lrclr/itm_mask") -> tuple[jax.Array, Metrics]:
  """LRCLR's image-text matching loss on the fused pairs (module docstring).

  Args:
    outputs: needs `logits_key` f[B,3] (matched, negative report, negative image) and `mask_key`
      bool[B,3] (which slots count).
    batch: optional 'valid' bool[B] (rows of padding examples never count).
    rng: unused (the negatives are sampled in the heads).

  Returns:
    (mean binary cross-entropy over the counted slots, metrics acc (logit > 0 is the right
    answer), loss_pos, loss_neg, negatives (mean counted negative slots per valid row)).
  """
  del rng
  for key in (logits_key, mask_key):
    if key not in outputs:
      raise ConfigError(f"lrclr_itm needs the model output {key!r}: method 'lrclr' provides it "
                        f"when lrclr_itm is in config.method.objectives; known outputs: "
                        f"{sorted(outputs)}")
  logits = jnp.asarray(outputs[logits_key], jnp.float32)
  mask = jnp.asarray(outputs[mask_key]).astype(bool)
  b = logits.shape[0]
  valid = batch.get("valid") if isinstance(batch, dict) else None
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  mask = mask & valid[:, None]
  labels = jnp.broadcast_to(jnp.asarray(ITM_LABELS, jnp.float32), logits.shape)
  # BCE with logits: softplus(z) - y z, stable in float32.
  bce = jax.nn.softplus(logits) - labels * logits
  m = mask.astype(jnp.float32)
  mean = lambda x, w: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
  correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
  neg_w = m * (1.0 - labels)
  metrics = {"acc": mean(correct, m), "loss_pos": mean(bce, m * labels),
             "loss_neg": mean(bce, neg_w),
             "negatives": valid_mean(jnp.sum(neg_w, axis=-1), valid)}
  return mean(bce, m), metrics


def sample_hard_negatives(image_embed: jax.Array, text_embed: jax.Array, candidate_ok: jax.Array,
                          rng: jax.Array | None, *, temperature: float
                          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Hard negatives by similarity (no gradient), vectorised over the batch.

  Args:
    image_embed, text_embed: f[B,d] (normalised here).
    candidate_ok: bool[B,B], (i, j) may pair image i with report j as a negative.
    rng: a key (sample j ~ softmax(cos / temperature) over the candidates) or None (argmax).
    temperature: the sampling temperature.

  Returns:
    (negative report per image i32[B], its mask bool[B], negative image per report i32[B], mask).
  """
  sim = jax.lax.stop_gradient(l2_normalize(image_embed) @ l2_normalize(text_embed).T)
  logits = jnp.where(candidate_ok, sim / temperature, NEG_INF)
  if rng is None:
    neg_text = jnp.argmax(logits, axis=1)
    neg_image = jnp.argmax(logits, axis=0)
  else:
    k1, k2 = jax.random.split(rng)
    neg_text = jax.random.categorical(k1, logits, axis=1)
    neg_image = jax.random.categorical(k2, logits.T, axis=1)
  return (neg_text.astype(jnp.int32), jnp.any(candidate_ok, axis=1),
          neg_image.astype(jnp.int32), jnp.any(candidate_ok, axis=0))


class _NegativeSampler(nn.Module):
  """`sample_hard_negatives` with a key from the 'dropout' stream (argmax without it)."""
  temperature: float

  @nn.compact
  def __call__(self, image_embed, text_embed, candidate_ok):
    rng = self.make_rng("dropout") if self.has_rng("dropout") else None
    return sample_hard_negatives(image_embed, text_embed, candidate_ok, rng,
                                 temperature=self.temperature)


@METHODS.register("lrclr")
class LRCLR(Method):
  """LRCLR heads (module docstring; METHODS.md §9.2).

  Reads config.method.{embed_dim, projection_hidden, projection_norm} and config.method.lrclr.
  {width, top_k, scoring, score_hidden, estimator, st_temperature, fusion_layers, fusion_heads,
  fusion_mlp_dim, pool_heads, max_words, image_embed_from, itm_temperature}; the ITM branch runs
  when an `lrclr_itm` objective is configured.
  """

  options = {"lrclr": {                     # config.method.lrclr.*
      "width": 256,                         # fusion / selection width
      "top_k": 16,                          # regions selected per image
      "scoring": "mlp",                     # region scoring (heads/region_selection.SCORINGS)
      "score_hidden": 0,                    # scoring MLP width (0 = width)
      "estimator": "straight_through",      # top-k gradient estimator
      "st_temperature": 1.0,                # straight-through softmax temperature
      "fusion_layers": 2,                   # region <-> token fusion layers
      "fusion_heads": 8,                    # fusion attention heads
      "fusion_mlp_dim": 1024,               # fusion MLP width
      "pool_heads": 1,                      # heads of the attention pools
      "max_words": 111,                     # W, static word slots per report
      "image_embed_from": "selected",       # selected | fused (module docstring)
      "itm_temperature": 0.07,              # ITM hard-negative sampling temperature
  }}

  def apply_heads(self, image, text, batch, *, train, dtype):
    c = self.cfg
    p = c.lrclr
    source = str(p.image_embed_from)
    if source not in EMBED_SOURCES:
      raise ConfigError(f"config.method.lrclr.image_embed_from={source!r} is not known; use one "
                        f"of {EMBED_SOURCES}")
    width = int(p.width)
    norm = str(c.projection_norm)

    def proj(name):
      return MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim), norm=norm,
                           dtype=dtype, name=name)

    regions = nn.Dense(width, dtype=dtype, name="region_input")(image.local)
    tokens = nn.Dense(width, dtype=dtype, name="token_input")(text.tokens)
    token_mask = jnp.asarray(text.token_mask).astype(bool)
    region_mask = jnp.ones(regions.shape[:2], bool)
    sel = RegionSelector(top_k=int(p.top_k), scoring=str(p.scoring),
                         hidden=int(p.score_hidden) or width,
                         estimator=str(p.estimator),
                         temperature=float(p.st_temperature), dtype=dtype,
                         name="region_selector")(regions, region_mask, tokens, token_mask)
    fusion = Fusion(num_layers=int(p.fusion_layers), num_heads=int(p.fusion_heads),
                    mlp_dim=int(p.fusion_mlp_dim), dtype=dtype, name="fusion")
    pool = AttentionPool(int(p.pool_heads), dtype=dtype, name="attention_pool")
    image_proj = proj("image_projection")
    words, word_mask = word_features(text, batch, max_words=int(p.max_words),
                                     include_cls=False, mode="sum")
    text_embed = proj("text_projection")(text.global_embedding, train=train)
    selected, selected_mask = sel["selected"], sel["selected_mask"]
    image_embed = pool_w = None
    if source == "selected":
      pooled, pool_w = pool(selected, selected_mask)
      image_embed = image_proj(pooled, train=train)
    itm_out: dict[str, Any] = {}
    if not any(name == "lrclr_itm" for name, _, _ in self.objectives()):
      fused, _, attention = fusion(selected, selected_mask, tokens, token_mask)
    else:
      b = selected.shape[0]
      # Negatives are ranked by the text-free image embedding (pooled selected regions).
      rank_embed = image_embed
      if rank_embed is None:
        rank_embed = image_proj(pool(selected, selected_mask)[0], train=train)
      valid = (jnp.asarray(batch["valid"]).astype(bool) if "valid" in batch
               else jnp.ones((b,), bool))
      ok = valid[:, None] & valid[None, :] & ~jnp.eye(b, dtype=bool)
      if "study_id" in batch:
        study = jnp.asarray(batch["study_id"])
        ok = ok & (study[:, None] != study[None, :])
      neg_text, text_ok, neg_image, image_ok = _NegativeSampler(
          float(p.itm_temperature), name="itm_negatives")(rank_embed, text_embed,
                                                                         ok)
      # One fusion call over [matched; negative report; negative image] pairs.
      r_all = jnp.concatenate([selected, selected, selected[neg_image]], axis=0)
      rm_all = jnp.concatenate([selected_mask, selected_mask, selected_mask[neg_image]], axis=0)
      t_all = jnp.concatenate([tokens, tokens[neg_text], tokens], axis=0)
      tm_all = jnp.concatenate([token_mask, token_mask[neg_text], token_mask], axis=0)
      fused_all, fused_tokens_all, attention_all = fusion(r_all, rm_all, t_all, tm_all)
      fused, attention = fused_all[:b], attention_all[:b]
      itm_regions, _ = AttentionPool(int(p.pool_heads), dtype=dtype,
                                     name="itm_pool")(fused_all, rm_all)
      tmf = tm_all[..., None].astype(jnp.float32)
      itm_tokens = (jnp.sum(fused_tokens_all * tmf, axis=1)
                    / jnp.maximum(jnp.sum(tmf, axis=1), 1.0))
      itm_logit = nn.Dense(1, dtype=dtype, name="itm_head")(
          jnp.concatenate([itm_regions, itm_tokens], axis=-1))[..., 0].astype(jnp.float32)
      itm_out = {
          "lrclr/itm_logits": itm_logit.reshape(3, b).T,
          "lrclr/itm_mask": jnp.stack([valid, valid & text_ok, valid & image_ok], axis=1),
          "lrclr/itm_negatives": jnp.stack([neg_text, neg_image], axis=1),
      }
    if source == "fused":
      pooled, pool_w = pool(fused, selected_mask)
      image_embed = image_proj(pooled, train=train)
    out: dict[str, Any] = {
        "image_embed": image_embed,
        "text_embed": text_embed,
        "lrclr/region_embed": proj("region_projection")(selected, train=train),
        "text_words_local": proj("word_projection")(words, train=train),
    }
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    out.update({
        "lrclr/region_mask": selected_mask,
        "word_mask": word_mask,
        "lrclr/selected": sel["indices"],
        "lrclr/scores": sel["scores"],
        "lrclr/scores_mask": region_mask,
        "lrclr/region_text_attention": attention,
        "lrclr/pool_weights": pool_w,
    })
    out.update(itm_out)
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out


__all__ = ["lrclr_region", "lrclr_itm", "sample_hard_negatives", "score_entropy", "LRCLR",
           "EMBED_SOURCES"]
