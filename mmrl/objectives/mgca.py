"""MGCA (Wang et al., NeurIPS 2022): instance, token and prototype alignment (METHODS.md §4).

Objectives (each a pure function, float32, finite -1e9 masks, vectorised over the batch):

- ITA is `clip_nce` with tau 0.07, image_to_text_weight 0.5, sum_directions=True (§4.2).
- `tca`, token-level cross-modal alignment, intra-sample (§4.2). With normalised word
  embeddings w, patch embeddings p and tau_l:
    word side   a_{t,r} = softmax_r(w_t . p_r / tau_l);  c_t = normalize(sum_r a_{t,r} p_r)
                sigma_{t,t'} = w_t . c_{t'} / tau_l
                L_word = 1/|V| sum_b sum_t omega_{b,t} [CE(sigma_{t,.}, t) + CE(sigma_{.,t}, t)] / 2
    patch side  the same with patches as queries over the (masked) words; the context is
                normalised unless normalize_patch_ctx=False (the code's ViT path, §4.5).
    L_tca = L_word + L_patch (bidirectional) or L_word.
  omega are the token weights (no gradient): 'uniform' (1 / #valid tokens, the code's ResNet
  patch weights) or 'cls_attn' (MGCA's: the last layer's [CLS] -> token attention, head-mean,
  summed per word (over the word's own pieces by default; the code's shifted pairing with
  exact=True, below) / per patch, clipped to its own 10th-90th percentile over the valid entries
  (`clipped_token_weights`, linear interpolation as torch.quantile) and normalised to sum 1).
  'cls_attn' reads outputs 'word_cls_attention' [B, W] / 'region_cls_attention' [B, R], which
  method 'mgca' emits when the towers return [CLS] attention (config.model.text.cls_attention,
  config.model.image.cls_attention; ViT only). Without a word row 'cls_attn' is an error; without
  a patch row (ResNet has no [CLS]) the patch side falls back to uniform weights, as the code
  does for ResNet, and the metric 'patch_weights_cls' says which was used (1 = [CLS], 0 = uniform).
  Pad words are masked as negatives by default; pad_word_negatives=True keeps them (code, §4.5).
  Words and word weights, mmrl (default) vs the authors' code (HKU-MedAI/MGCA
  `mgca/models/backbones/encoder.py`, `BertEncoder.aggregate_tokens` + `forward`):
    mmrl      a word's weight is the [CLS] attention summed over the word's *own* pieces; [SEP] is
              not a word.
    code      `aggregate_tokens` zips the token list with `attentions[-1][:, :, 0, 1:]`, which
              starts at token 1, so the word made of pieces at positions P gets
              sum_{i in P} a[i + 1] (the attention of the *next* positions; the last word gets
              [SEP]'s); [SEP] is kept as a word (its embedding, weight a[sep + 1] = 0 on
              padding), a valid key / negative / anchor (weight 0); the quantile clipping runs
              over the non-zero weights only. In a full row ([SEP] at position L-1) the zip
              stops at L-1 entries, so the last word and [SEP] are dropped.
    tca exact=True (with word_weights='cls_attn') reproduces the code: method 'mgca' builds the
    code's words and weights (`code_words`) and the clipping skips zero weights. pad word
    negatives and the unnormalised ViT patch context stay separate options (above).
- `proto_swap`, cross-modal prototype assignment (CPA, §4.2): logits q = p_hat . W_k with unit
  rows W (K prototypes), codes Q = Sinkhorn(q / eps) in the log domain (fp32, stop-gradient),
  predictions P = softmax(q / tau_p), L = 1/2 [H(Q^v, P^u) + H(Q^u, P^v)].

Method `mgca` (heads, §4.1): `MLPProjection(hidden, embed_dim, norm='batch', output_norm='batch',
output_norm_affine=False)` for the image global, the text global ([CLS]), the patches and the
words (word-pieces summed per word from `batch['token_to_word']`), and `Prototypes(K)`.
Outputs: 'image_embed', 'text_embed' [B, d]; 'image_regions_local' [B, R, d], 'region_mask';
'text_words_local' [B, W, d], 'word_mask'; 'prototypes' [K, d] (unit rows); when the towers
return [CLS] attention, 'word_cls_attention' f32[B, W] (the text row summed over each word's
pieces, MGCA's merged word weights) and 'region_cls_attention' f32[B, R] (ViT), no gradient.

Over 400 lines on purpose: one job, MGCA's three objectives, which share the token weighting and the
exact-mode pairing written down above; they are one loss family (ARCHITECTURE.md: one file
per loss family).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.gloria_heads import pool_words, word_features
from mmrl.heads.projection import MLPProjection
from mmrl.objectives.contrastive import l2_normalize
from mmrl.objectives.gloria import NEG_INF, masked_mean, masked_softmax
from mmrl.objectives.methods import METHODS, Method, objective_options
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import valid_rows

TOKEN_WEIGHTS = ("uniform", "cls_attn")


def _check_weights(name: str, value: str) -> None:
  if value not in TOKEN_WEIGHTS:
    raise ConfigError(f"tca {name}={value!r} is not known; use one of {TOKEN_WEIGHTS} "
                      "('cls_attn' = MGCA's clipped [CLS] attention)")


def _uniform_weights(mask: jax.Array) -> jax.Array:
  m = mask.astype(jnp.float32)
  return m / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)


def clipped_token_weights(raw: jax.Array, mask: jax.Array, low: float = 0.1,
                          high: float = 0.9) -> jax.Array:
  """MGCA's token weights omega f32[B, N] from raw [CLS] attention (no gradient).

  Per row: the `low` and `high` quantiles of the valid entries (linear interpolation, as
  torch.quantile), valid entries clipped to [q_low, q_high], invalid ones 0, then normalised to
  sum 1. A row without valid entries is all 0.
  """
  raw = jax.lax.stop_gradient(jnp.asarray(raw, jnp.float32))
  mask = jnp.asarray(mask).astype(bool)
  x = jnp.where(mask, raw, jnp.nan)
  any_valid = jnp.any(mask, axis=-1, keepdims=True)
  x_safe = jnp.where(any_valid, x, 0.0)  # all-NaN rows would warn / give NaN quantiles
  lo = jnp.nanquantile(x_safe, low, axis=-1, keepdims=True)
  hi = jnp.nanquantile(x_safe, high, axis=-1, keepdims=True)
  w = jnp.where(mask, jnp.clip(raw, lo, hi), 0.0)
  return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)


def _one_side(queries, q_mask, keys, k_mask, *, tau, normalize_ctx, mask_negatives, omega):
  """One TCA side for all samples: (per-sample weighted loss [B], attention [B, Q, K]).

  queries f32[B, Q, d] (normalised), keys f32[B, K, d] (normalised); the attention of each query
  over the sample's own valid keys, the context of each query, and a two-way CE between the
  queries and the contexts of the same sample (the positive is the query's own context).
  """
  att = masked_softmax(jnp.einsum("bqd,bkd->bqk", queries, keys) / tau, k_mask[:, None, :],
                       axis=-1)
  ctx = jnp.einsum("bqk,bkd->bqd", att, keys)
  if normalize_ctx:
    ctx = l2_normalize(ctx)
  sim = jnp.einsum("bqd,bpd->bqp", queries, ctx) / tau
  neg_ok = q_mask if mask_negatives else jnp.ones_like(q_mask)
  diag = jnp.diagonal(sim, axis1=1, axis2=2)
  ce_rows = jax.nn.logsumexp(jnp.where(neg_ok[:, None, :], sim, NEG_INF), axis=2) - diag
  ce_cols = jax.nn.logsumexp(jnp.where(neg_ok[:, :, None], sim, NEG_INF), axis=1) - diag
  omega = jax.lax.stop_gradient(omega)
  per_sample = jnp.sum(omega * 0.5 * (ce_rows + ce_cols), axis=-1)
  return per_sample, att


def _need(outputs: Mapping[str, Any], keys, objective: str) -> None:
  for key in keys:
    if key not in outputs:
      raise ConfigError(f"{objective} needs the model output {key!r} (method 'mgca' provides "
                        f"it); known outputs: {sorted(outputs)}")


@OBJECTIVES.register("tca")
def tca(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
        tau: float = 0.1, bidirectional: bool = True, word_weights: str = "uniform",
        patch_weights: str = "uniform", normalize_word_ctx: bool = True,
        normalize_patch_ctx: bool = True, pad_word_negatives: bool = False,
        words_key: str = "text_words_local", word_mask_key: str = "word_mask",
        regions_key: str = "image_regions_local", region_mask_key: str = "region_mask",
        word_attention_key: str = "word_cls_attention",
        region_attention_key: str = "region_cls_attention", clip_low: float = 0.1,
        clip_high: float = 0.9, exact: bool = False,
        return_aux: bool = False) -> tuple[jax.Array, Metrics]:
  """MGCA's token-level alignment L_word (+ L_patch) (module docstring; METHODS.md §4.2).

  Args:
    outputs: needs `words_key` [B, W, d], `word_mask_key` bool[B, W], `regions_key` [B, R, d];
      `region_mask_key` bool[B, R] is optional (all regions valid). Embeddings are normalised here.
    batch: `batch['valid']` (bool[B]) drops padding examples; samples without a valid word or
      region are dropped the same way.
    rng: unused.
    tau: tau_l (0.1).
    bidirectional: add the patch side (MGCA default True).
    word_weights, patch_weights: 'uniform' | 'cls_attn' (module docstring).
    word_attention_key, region_attention_key: the raw [CLS] attention rows [B, W] / [B, R]
      read by 'cls_attn'.
    clip_low, clip_high: the quantiles 'cls_attn' clips to (MGCA 0.1, 0.9).
    exact: the authors' word weights (module docstring): needs word_weights='cls_attn'; method
      'mgca' then emits the code's words ([SEP] kept) and shifted attention, and the clipping
      quantiles run over the non-zero weights (the code's `nonzero()`), so [SEP]'s 0 stays 0.
    normalize_word_ctx, normalize_patch_ctx: L2-normalise the attended contexts (the code leaves
      the patch-side context unnormalised for ViT: normalize_patch_ctx=False reproduces it).
    pad_word_negatives: keep pad words as negatives of the word-side CE (the code does; their
      weight is 0). Default False: padding changes nothing.
    return_aux: add 'aux/word_patch_attention' [B, W, R] and 'aux/patch_word_attention'
      [B, R, W] to the metrics (not in training configs: the loop logs scalars).

  Returns:
    (L_word + L_patch, metrics loss_word, loss_patch, patch_weights_cls).
  """
  del rng
  _need(outputs, (words_key, word_mask_key, regions_key), "tca")
  _check_weights("word_weights", word_weights)
  _check_weights("patch_weights", patch_weights)
  if not 0.0 <= clip_low <= clip_high <= 1.0:
    raise ConfigError(f"tca clip_low={clip_low}, clip_high={clip_high} must satisfy "
                      "0 <= clip_low <= clip_high <= 1 (MGCA 0.1, 0.9)")
  if exact and word_weights != "cls_attn":
    raise ConfigError(f"tca exact=True reproduces MGCA's [CLS]-attention word weights; it needs "
                      f"word_weights='cls_attn' (got {word_weights!r}) and method 'mgca'")
  if word_weights == "cls_attn" and word_attention_key not in outputs:
    raise ConfigError(f"tca word_weights='cls_attn' needs the model output "
                      f"{word_attention_key!r}: set config.model.text.cls_attention=True (method "
                      f"'mgca' then emits it) or use word_weights='uniform'")
  words = l2_normalize(outputs[words_key])
  regions = l2_normalize(outputs[regions_key])
  word_mask = jnp.asarray(outputs[word_mask_key]).astype(bool)
  if region_mask_key in outputs:
    region_mask = jnp.asarray(outputs[region_mask_key]).astype(bool)
  else:
    region_mask = jnp.ones(regions.shape[:2], bool)
  b = words.shape[0]
  ok = valid_rows(batch, b) & jnp.any(word_mask, axis=1) & jnp.any(region_mask, axis=1)
  if word_weights == "cls_attn":
    raw = outputs[word_attention_key]
    weight_mask = word_mask & (jnp.asarray(raw) != 0) if exact else word_mask
    word_omega = clipped_token_weights(raw, weight_mask, clip_low, clip_high)
  else:
    word_omega = _uniform_weights(word_mask)
  patch_from_cls = patch_weights == "cls_attn" and region_attention_key in outputs
  if patch_from_cls:
    patch_omega = clipped_token_weights(outputs[region_attention_key], region_mask, clip_low,
                                        clip_high)
  else:  # 'uniform', or no [CLS] row (ResNet): uniform over the valid regions.
    patch_omega = _uniform_weights(region_mask)
  word_loss, word_att = _one_side(words, word_mask, regions, region_mask, tau=tau,
                                  normalize_ctx=normalize_word_ctx,
                                  mask_negatives=not pad_word_negatives, omega=word_omega)
  loss_word = masked_mean(word_loss, ok)
  metrics = {"loss_word": loss_word}
  loss = loss_word
  if bidirectional:
    metrics["patch_weights_cls"] = jnp.asarray(float(patch_from_cls), jnp.float32)
    patch_loss, patch_att = _one_side(regions, region_mask, words, word_mask, tau=tau,
                                      normalize_ctx=normalize_patch_ctx, mask_negatives=True,
                                      omega=patch_omega)
    loss_patch = masked_mean(patch_loss, ok)
    metrics["loss_patch"] = loss_patch
    loss = loss + loss_patch
    if return_aux:
      metrics["aux/patch_word_attention"] = jax.lax.stop_gradient(patch_att)
  if return_aux:
    metrics["aux/word_patch_attention"] = jax.lax.stop_gradient(word_att)
  return loss, metrics


def log_sinkhorn(logits: jax.Array, valid: jax.Array, iterations: int = 3) -> jax.Array:
  """log Q f32[B, K]: MGCA's Sinkhorn-Knopp on exp(logits) in the log domain.

  As the code on Q = exp(logits)^T [K, B]: divide by the total; `iterations` times scale rows to
  sum 1/K and columns (valid examples only) to sum 1/B_valid; return Q / colsum, transposed
  (each valid row sums to 1). Invalid rows are -1e9 (codes 0).
  """
  lq = jnp.where(valid[None, :], logits.astype(jnp.float32).T, NEG_INF)
  k = lq.shape[0]
  n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  lq = lq - jax.nn.logsumexp(lq)
  for _ in range(int(iterations)):
    lq = lq - jax.nn.logsumexp(lq, axis=1, keepdims=True) - math.log(k)
    lq = lq - jax.nn.logsumexp(lq, axis=0, keepdims=True) - jnp.log(n)
    lq = jnp.where(valid[None, :], lq, NEG_INF)
  lq = lq - jax.nn.logsumexp(lq, axis=0, keepdims=True)
  return jnp.where(valid[:, None], lq.T, NEG_INF)


@OBJECTIVES.register("proto_swap")
def proto_swap(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
               tau: float = 0.2, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
               image_key: str = "image_embed", text_key: str = "text_embed",
               prototypes_key: str = "prototypes") -> tuple[jax.Array, Metrics]:
  """MGCA's cross-modal prototype (swapped) prediction (module docstring; METHODS.md §4.2).

  Args:
    outputs: needs [B, d] `image_key`, `text_key` and [K, d] `prototypes_key` (normalised here).
    batch: `batch['valid']` drops padding examples (from the mean and the Sinkhorn marginals).
    rng: unused.
    tau: tau_p, the prediction temperature (0.2).
    epsilon: the Sinkhorn entropy (0.05).
    sinkhorn_iterations: 3.

  Returns:
    (loss, metrics loss_i2t (codes of images, predictions from text), loss_t2i, code_entropy).
  """
  del rng
  _need(outputs, (image_key, text_key, prototypes_key), "proto_swap")
  if sinkhorn_iterations < 1:
    raise ConfigError(f"proto_swap sinkhorn_iterations={sinkhorn_iterations} must be >= 1 (3)")
  protos = l2_normalize(outputs[prototypes_key])
  img = l2_normalize(outputs[image_key])
  txt = l2_normalize(outputs[text_key])
  valid = valid_rows(batch, img.shape[0])
  q_img = img @ protos.T
  q_txt = txt @ protos.T
  code_img = jnp.exp(jax.lax.stop_gradient(log_sinkhorn(q_img / epsilon, valid,
                                                        sinkhorn_iterations)))
  code_txt = jnp.exp(jax.lax.stop_gradient(log_sinkhorn(q_txt / epsilon, valid,
                                                        sinkhorn_iterations)))
  logp_img = jax.nn.log_softmax(q_img / tau, axis=-1)
  logp_txt = jax.nn.log_softmax(q_txt / tau, axis=-1)
  l_i2t = masked_mean(-jnp.sum(code_img * logp_txt, axis=-1), valid)
  l_t2i = masked_mean(-jnp.sum(code_txt * logp_img, axis=-1), valid)
  ent = -jnp.sum(code_img * jnp.log(jnp.maximum(code_img, 1e-30)), axis=-1)
  metrics = {"loss_i2t": l_i2t, "loss_t2i": l_t2i, "code_entropy": masked_mean(ent, valid)}
  return 0.5 * (l_i2t + l_t2i), metrics


def code_word_ids(token_to_word: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """token_to_word i32[B, L] rewritten to the authors' word list (module docstring): [SEP] (the
  last attended position) becomes the word after the last word; in a full row (no padding) the
  word holding position L-2 and [SEP] are dropped (-1)."""
  ids = jnp.asarray(token_to_word).astype(jnp.int32)
  ok = jnp.asarray(attention_mask) > 0
  b, l = ids.shape
  pos = jnp.arange(l, dtype=jnp.int32)[None, :]
  sep = jnp.sum(ok, axis=1, dtype=jnp.int32)[:, None] - 1      # [CLS] tokens [SEP] pads
  full = sep == l - 1
  next_word = jnp.max(ids, axis=1, keepdims=True) + 1
  ids = jnp.where((pos == sep) & ~full & (sep > 0), next_word, ids)
  last = ids[:, l - 2:l - 1]
  return jnp.where(full & (ids == last) & (last >= 0), -1, ids)


def code_words(tokens: jax.Array, cls_attention: jax.Array, token_to_word: jax.Array,
               attention_mask: jax.Array, max_words: int, mode: str = "sum"
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The authors' words, word mask and raw word weights (MGCA `aggregate_tokens`, exact=True).

  Args:
    tokens: f[B, L, D] token features; cls_attention: f32[B, L] [CLS] -> position attention
      (head-mean, 0 on padding); token_to_word, attention_mask: i32[B, L] (batch contract).
    max_words: W word slots; mode: 'sum' | 'mean' over a word's pieces (the code sums).

  Returns:
    words f32[B, W, D], word_mask bool[B, W], raw weights f32[B, W]: for each word the sum over
    its pieces' positions i of cls_attention[i + 1] ([SEP]: the position after it), no gradient.
  """
  ids = code_word_ids(token_to_word, attention_mask)
  ok = jnp.asarray(attention_mask) > 0
  att = jnp.asarray(cls_attention, jnp.float32)
  shifted = jnp.concatenate([att[:, 1:], jnp.zeros_like(att[:, :1])], axis=1)
  words, mask = pool_words(tokens, ids, ok, max_words, mode)
  weights, _ = pool_words(shifted[..., None], ids, ok, max_words, "sum")
  return words, mask, jax.lax.stop_gradient(weights[..., 0])


class Prototypes(nn.Module):
  """K learnable prototypes [K, d], returned with unit rows (METHODS.md §11.3).

  The code renormalises the weight rows in place before each forward; here the rows are
  normalised in the forward pass (the gradient flows through the normalisation).
  """
  num_prototypes: int
  dim: int

  @nn.compact
  def __call__(self) -> jax.Array:
    w = self.param("weight", nn.initializers.lecun_normal(), (self.num_prototypes, self.dim),
                   jnp.float32)
    return l2_normalize(w)


@METHODS.register("mgca")
class MGCA(Method):
  """MGCA heads (METHODS.md §4.1; module docstring).

  Reads config.method.{embed_dim, projection_hidden, projection_norm, num_prototypes, max_words,
  word_pool}.
  """

  options = {
      "num_prototypes": 500,       # K cross-modal prototypes (MGCA: 500)
      "max_words": 111,            # W, static word slots per report (MGCA: 111)
      "word_pool": "sum",          # sum | mean of a word's word-piece features
  }

  def apply_heads(self, image, text, batch, *, train, dtype):
    c = self.cfg
    max_words = int(c.max_words)
    if max_words < 1:
      raise ConfigError(f"config.method.max_words={max_words} must be >= 1 (MGCA: 111)")
    tca_options = objective_options(self.cfg, "tca") or {}
    exact = bool(tca_options.get("exact", False))
    word_attention = None
    if exact:  # the authors' words and shifted word weights (module docstring)
      b, l = text.tokens.shape[:2]
      to_word = (jnp.asarray(batch["token_to_word"]) if "token_to_word" in batch
                 else jnp.full((b, l), -1, jnp.int32))
      am = batch["attention_mask"] if "attention_mask" in batch else text.token_mask
      att = (text.cls_attention if text.cls_attention is not None
             else jnp.zeros((b, l), jnp.float32))
      words, word_mask, word_attention = code_words(text.tokens, att, to_word, am, max_words,
                                                    str(c.word_pool))
    else:
      words, word_mask = word_features(text, batch, max_words=max_words, include_cls=False,
                                       mode=str(c.word_pool))

    def proj(name):
      return MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim),
                           norm=str(c.projection_norm), output_norm=str(c.projection_norm),
                           output_norm_affine=False, dtype=dtype, name=name)
    out = {
        "image_embed": proj("image_projection")(image.global_embedding, train=train),
        "text_embed": proj("text_projection")(text.global_embedding, train=train),
        "image_regions_local": proj("image_local_projection")(image.local, train=train),
        "text_words_local": proj("text_local_projection")(words, train=train),
        "word_mask": word_mask,
        "prototypes": Prototypes(int(c.num_prototypes), int(c.embed_dim),
                                 name="prototypes")(),
    }
    out = {k: v.astype(jnp.float32) if v.dtype != bool else v for k, v in out.items()}
    out["region_mask"] = jnp.ones(out["image_regions_local"].shape[:2], bool)
    if word_attention is not None and text.cls_attention is not None:
      out["word_cls_attention"] = word_attention
    elif text.cls_attention is not None:
      b, l = text.cls_attention.shape
      to_word = (jnp.asarray(batch["token_to_word"]) if "token_to_word" in batch
                 else jnp.full((b, l), -1, jnp.int32))
      ok = (jnp.asarray(batch["attention_mask"]) > 0 if "attention_mask" in batch
            else text.token_mask)
      attn, _ = pool_words(text.cls_attention[..., None], to_word, ok, max_words, "sum")
      out["word_cls_attention"] = jax.lax.stop_gradient(attn[..., 0])
    if image.cls_attention is not None:
      out["region_cls_attention"] = jax.lax.stop_gradient(
          image.cls_attention.astype(jnp.float32))
    return out


__all__ = ["tca", "proto_swap", "log_sinkhorn", "clipped_token_weights", "code_word_ids",
           "code_words", "Prototypes", "MGCA"]
