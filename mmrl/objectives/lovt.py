"""LoVT (Müller et al., ECCV 2022; METHODS.md §5): the `lovt` method and `intra_local_nce`.

Method `lovt` (heads in `mmrl.heads.lovt_heads`):
  regions  y_a = ImageFeatures.local [B,R,Dl] (ResNet-50 conv5: 7x7), sentences y_b =
  TextFeatures.sentences [B,S,Dt] with sentence_mask;
  globals  image: `avgpool_mha` over regions (or the tower's 'avg'), report: `sentence_mha` over
  sentences (or the tower's global); mlp2 projections -> 'image_embed', 'text_embed' [B,d] for
  `clip_nce` (tau 0.1, lambda 0.75);
  locals   masked mlp2 -> z_a [B,R,d], z_b [B,S,d]; `lovt_symmetric` cross-attention -> regions
  attended from sentences z_{b->a} [B,R,d], sentences attended from regions z_{a->b} [B,S,d].

Objective `intra_local_nce` (§5.2), one modality at a time, within each sample:
  s_ij = cos(z_i, z^att_j) / tau over valid positions j (padding: -1e9);
  p_ij = 1[d_ij <= delta] kappa(d_ij) m_j, rows normalised (soft spatial positives);
  l_{l->att} = mean_b sum_i w_bi [-sum_j p_ij s_ij + logsumexp_j s_ij]  (positives are in the
  denominator; no cross-sample negatives), and l_{att->l} the same with s^T;
  w = attention-pool weights (stop-gradient), masked and renormalised; returns l_{l->att} +
  l_{att->l}. LoVT: image tau 0.3, delta 0.5 relative to the grid diagonal, kappa(d) = exp(-d);
  report tau 0.3, delta 0 absolute (the only positive is the sentence itself).

No all-pairs (cross-sample) term is computed here: memory is O(B N^2), N = R or S, so there is no
chunked form. The global all-pairs term is `clip_nce` (mmrl.objectives.contrastive).

Outputs of the `lovt` heads (all under the 'lovt/' prefix, masks bool, True = valid):
  region_embed, region_attended, region_mask, region_weights    [B,R,d], [B,R,d], [B,R], [B,R]
  sentence_embed, sentence_attended, sentence_mask, sentence_weights   same with S
  attention_r2s f32[B,R,S], attention_s2r f32[B,S,R] (for localisation evaluators), has_pair [B]
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmrl.config_errors import ConfigError
from mmrl.heads.lovt_heads import AttentionPool, MaskedMLPProjection, SymmetricCrossAttention
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives.contrastive import NEG_INF, l2_normalize
from mmrl.objectives.methods import METHODS, Method
from mmrl.objectives.registry import OBJECTIVES, Metrics

PREFIX = "lovt"
SIDES = ("image", "report")
THRESHOLD_TYPES = ("relative", "absolute")
IMAGE_POOLS = ("avgpool_mha", "avg")
TEXT_POOLS = ("sentence_mha", "tower")


# ---------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------


def grid_coordinates(h: int, w: int) -> np.ndarray:
  """(row, col) of each cell of an h x w grid in row-major order, f64[h*w, 2]."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)


def positive_weights(coords: np.ndarray, *, threshold: float, threshold_type: str = "relative",
                     scale: float = 1.0, smooth_weights: bool = False,
                     smooth_lambda: float = 1.0) -> np.ndarray:
  """Un-normalised positive weights 1[d_ij <= threshold] * kappa(d_ij), f32[N, N].

  Args:
    coords: f[N, k] positions (grid cells or sequence indices).
    threshold: delta, on distances divided by `scale` when threshold_type='relative'.
    threshold_type: 'relative' (LoVT image: scale = grid diagonal) or 'absolute'.
    scale: the relative unit (grid diagonal sqrt(H^2 + W^2); sequence length N).
    smooth_weights: multiply by kappa(d) = exp(-smooth_lambda * d), else binary.
    smooth_lambda: lambda of kappa.
  """
  if threshold_type not in THRESHOLD_TYPES:
    raise ConfigError(f"intra_local_nce threshold_type={threshold_type!r} is not known; use one "
                      f"of {THRESHOLD_TYPES}")
  coords = np.asarray(coords, np.float64)
  if threshold_type == "relative":
    coords = coords / float(scale)
  dist = np.sqrt(np.sum((coords[:, None, :] - coords[None, :, :]) ** 2, axis=-1))
  pos = (dist <= threshold).astype(np.float64)
  if smooth_weights:
    pos = pos * np.exp(-smooth_lambda * dist)
  return pos.astype(np.float32)


def intra_sample_nce(local: jax.Array, attended: jax.Array, mask: jax.Array, weights: jax.Array,
                     pos_weights: jax.Array, tau: float | jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """LoVT's local intra-sample InfoNCE, both directions, per sample (METHODS.md §5.2).

  Args:
    local: f[B, N, d] local features z (anchors of l->att).
    attended: f[B, N, d] cross-modal attended features z^att (same N).
    mask: bool[B, N] valid positions.
    weights: f[B, N] anchor weights (masked and renormalised here; pass ones for uniform).
    pos_weights: f[N, N] un-normalised positive weights (see `positive_weights`).
    tau: temperature.

  Returns:
    (loss_l2att f32[B], loss_att2l f32[B], acc_l2att f32[B], acc_att2l f32[B]); accuracies are the
    anchor-weighted fraction whose most similar candidate is its own position.
  """
  mask = jnp.asarray(mask, bool)
  z = l2_normalize(local)
  za = l2_normalize(attended)
  n = z.shape[1]
  s = jnp.einsum("bid,bjd->bij", z, za, precision=jax.lax.Precision.HIGHEST) / tau
  col = mask[:, None, :]
  p = jnp.asarray(pos_weights, jnp.float32)[None] * col
  p = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-12)
  w = jnp.asarray(weights, jnp.float32) * mask
  w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)
  eye = jnp.arange(n)

  def direction(scores):
    masked = jnp.where(col, scores, NEG_INF)
    ce = jax.nn.logsumexp(masked, axis=-1) - jnp.sum(p * scores, axis=-1)
    hit = (jnp.argmax(masked, axis=-1) == eye[None, :]).astype(jnp.float32)
    return jnp.sum(w * ce, axis=-1), jnp.sum(w * hit, axis=-1)

  l_ab, acc_ab = direction(s)
  l_ba, acc_ba = direction(jnp.swapaxes(s, 1, 2))
  return l_ab, l_ba, acc_ab, acc_ba


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


def _side_keys(side: str, prefix: str) -> dict[str, str]:
  if side not in SIDES:
    raise ConfigError(f"intra_local_nce side={side!r} is not known; use 'image' (regions vs "
                      "sentences attended into regions) or 'report' (sentences vs regions "
                      "attended into sentences)")
  unit = "region" if side == "image" else "sentence"
  return {k: f"{prefix}/{unit}_{k}" for k in ("embed", "attended", "mask", "weights")}


@OBJECTIVES.register("intra_local_nce")
def intra_local_nce(outputs: dict[str, Any], batch: dict[str, Any], *,
                    rng: jax.Array | None = None, side: str = "image", tau: float = 0.3,
                    threshold: float = 0.5, threshold_type: str = "relative",
                    smooth_weights: bool = True, smooth_lambda: float = 1.0,
                    use_weights: bool = True, weights_stop_gradient: bool = True,
                    prefix: str = PREFIX) -> tuple[jax.Array, Metrics]:
  """LoVT local intra-sample contrastive loss l_{l->att} + l_{att->l} for one modality.

  Args:
    outputs: model outputs with '<prefix>/{region|sentence}_{embed,attended,mask,weights}' (the
      `lovt` heads), '<prefix>/has_pair' (optional) and, for side='image', outputs['image'] (an
      `ImageFeatures`, whose static grid_hw gives the region coordinates).
    batch: `batch['valid']` (bool[B], optional) drops padding examples from the mean.
    rng: unused.
    side: 'image' (regions; grid distances) or 'report' (sentences; index distances).
    tau: temperature (LoVT 0.3).
    threshold: delta, the largest distance that is a positive (LoVT image 0.5, report 0).
    threshold_type: 'relative' (image: distances / grid diagonal; report: / S slots) or
      'absolute'.
    smooth_weights: weight positives by exp(-smooth_lambda * d) (LoVT image True).
    smooth_lambda: lambda of the smooth weights (LoVT 1.0).
    use_weights: weight anchors by the attention-pool weights (LoVT True), else uniformly.
    weights_stop_gradient: no gradient through the weights (LoVT `l_weights_stop_grad`).
    prefix: the heads' output prefix.

  Returns:
    (loss, metrics): loss = l_{l->att} + l_{att->l} averaged over valid samples; metrics
    loss_l2att, loss_att2l, acc_l2att, acc_att2l, positives (mean positives per anchor).
  """
  del rng
  keys = _side_keys(side, prefix)
  missing = [k for k in keys.values() if k not in outputs]
  if missing:
    raise ConfigError(f"intra_local_nce needs the model outputs {missing}; use "
                      f"config.method.name='lovt' (known outputs: {sorted(outputs)})")
  local, attended = outputs[keys["embed"]], outputs[keys["attended"]]
  mask = jnp.asarray(outputs[keys["mask"]], bool)
  b, n = mask.shape
  if side == "image":
    image = outputs.get("image")
    if not isinstance(image, ImageFeatures):
      raise ConfigError("intra_local_nce side='image' needs outputs['image'] (ImageFeatures) for "
                        "the region grid")
    h, w = image.grid_hw
    if h * w != n:
      raise ConfigError(f"intra_local_nce: grid_hw={image.grid_hw} has {h * w} cells but "
                        f"{keys['embed']} has {n} regions")
    coords, scale = grid_coordinates(h, w), math.sqrt(h * h + w * w)
  else:
    coords, scale = np.arange(n, dtype=np.float64)[:, None], float(n)
  pos = positive_weights(coords, threshold=threshold, threshold_type=threshold_type, scale=scale,
                         smooth_weights=smooth_weights, smooth_lambda=smooth_lambda)
  if use_weights:
    weights = jnp.asarray(outputs[keys["weights"]], jnp.float32)
    if weights_stop_gradient:
      weights = jax.lax.stop_gradient(weights)
  else:
    weights = jnp.ones((b, n), jnp.float32)
  l_ab, l_ba, acc_ab, acc_ba = intra_sample_nce(local, attended, mask, weights, pos, tau)

  ok = jnp.any(mask, axis=1)
  valid = batch.get("valid") if isinstance(batch, Mapping) else None
  if valid is not None:
    ok = ok & jnp.asarray(valid, bool)
  if f"{prefix}/has_pair" in outputs:
    ok = ok & jnp.asarray(outputs[f"{prefix}/has_pair"], bool)
  n_ok = jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)

  def vmean(x):
    return jnp.sum(jnp.where(ok, x, 0.0)) / n_ok

  loss_ab, loss_ba = vmean(l_ab), vmean(l_ba)
  pos_count = jnp.sum((jnp.asarray(pos)[None] > 0) & mask[:, None, :], axis=-1)  # [B,N]
  positives = jnp.sum(jnp.where(mask & ok[:, None], pos_count, 0)) / jnp.maximum(
      jnp.sum(mask & ok[:, None]), 1)
  metrics = {"loss_l2att": loss_ab, "loss_att2l": loss_ba, "acc_l2att": vmean(acc_ab),
             "acc_att2l": vmean(acc_ba), "positives": positives.astype(jnp.float32)}
  return loss_ab + loss_ba, metrics


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


def _uniform(mask: jax.Array) -> jax.Array:
  m = mask.astype(jnp.float32)
  return m / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)


@METHODS.register("lovt")
class LoVT(Method):
  """LoVT (METHODS.md §5): global mlp2 embeddings + local projections + symmetric cross-attention.

  Reads config.method.{embed_dim, projection_hidden, projection_norm ('batch' as LoVT),
  image_pool ('avgpool_mha' | 'avg'), text_pool ('sentence_mha' | 'tower'), pool_heads (8),
  attention_norm ('batch' | 'layer' | 'none')}. Params: image_pool/, text_pool/,
  image_projection/, text_projection/, image_local_projection/, text_local_projection/,
  cross_attention/. Outputs 'image_embed', 'text_embed' [B, embed_dim] and the 'lovt/...' local
  features, masks, weights and attention maps listed in the module docstring.
  """

  options = {
      "image_pool": "avgpool_mha",  # avgpool_mha | avg: how regions pool into the global
      "text_pool": "sentence_mha",  # sentence_mha | tower: how sentences pool into the global
      "pool_heads": 8,              # heads of the attention pools
      "attention_norm": "batch",    # batch | layer | none, in the symmetric cross-attention
  }

  def apply_heads(self, image: ImageFeatures, text: TextFeatures, batch: Mapping[str, Any], *,
                  train: bool, dtype: Any) -> dict[str, Any]:
    c = self.cfg
    d, hidden = int(c.embed_dim), int(c.projection_hidden)
    norm = str(c.projection_norm)
    image_pool = str(c.image_pool)
    text_pool = str(c.text_pool)
    heads = int(c.pool_heads)
    if image_pool not in IMAGE_POOLS:
      raise ConfigError(f"config.method.image_pool={image_pool!r} is not known; use one of "
                        f"{IMAGE_POOLS}")
    if text_pool not in TEXT_POOLS:
      raise ConfigError(f"config.method.text_pool={text_pool!r} is not known; use one of "
                        f"{TEXT_POOLS}")

    regions = image.local
    region_mask = batch.get("region_mask")
    region_mask = (jnp.ones(regions.shape[:2], bool) if region_mask is None
                   else jnp.asarray(region_mask, bool))
    sentences = text.sentences
    sentence_mask = jnp.asarray(text.sentence_mask, bool)
    if batch.get("sentence_mask") is not None:
      sentence_mask = sentence_mask & jnp.asarray(batch["sentence_mask"], bool)

    if image_pool == "avgpool_mha":
      image_global, region_weights = AttentionPool(heads, dtype=dtype, name="image_pool")(
          regions, region_mask)
    else:
      image_global, region_weights = image.global_embedding, _uniform(region_mask)
    if text_pool == "sentence_mha":
      text_global, sentence_weights = AttentionPool(heads, dtype=dtype, name="text_pool")(
          sentences, sentence_mask)
    else:
      text_global, sentence_weights = text.global_embedding, _uniform(sentence_mask)

    out: dict[str, Any] = {}
    for side, x in (("image", image_global), ("text", text_global)):
      out[f"{side}_embed"] = MLPProjection(hidden=hidden, out=d, norm=norm, dtype=dtype,
                                           name=f"{side}_projection")(x, train=train)
    z_a = MaskedMLPProjection(hidden, d, norm=norm, dtype=dtype, name="image_local_projection")(
        regions, region_mask, train=train)
    z_b = MaskedMLPProjection(hidden, d, norm=norm, dtype=dtype, name="text_local_projection")(
        sentences, sentence_mask, train=train)
    att = SymmetricCrossAttention(d, norm=str(c.attention_norm), dtype=dtype,
                                  name="cross_attention")(z_a, z_b, region_mask, sentence_mask,
                                                          train=train)
    p = PREFIX
    out.update({
        f"{p}/region_embed": z_a, f"{p}/region_attended": att["region_attended"],
        f"{p}/region_mask": region_mask, f"{p}/region_weights": region_weights,
        f"{p}/sentence_embed": z_b, f"{p}/sentence_attended": att["sentence_attended"],
        f"{p}/sentence_mask": sentence_mask, f"{p}/sentence_weights": sentence_weights,
        f"{p}/attention_r2s": att["attention_r2s"], f"{p}/attention_s2r": att["attention_s2r"],
        f"{p}/has_pair": jnp.any(region_mask, axis=1) & jnp.any(sentence_mask, axis=1),
    })
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out
