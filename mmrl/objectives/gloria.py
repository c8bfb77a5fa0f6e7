"""GLoRIA (Huang et al., ICCV 2021): word->region attention and the local loss (METHODS.md §3).

Objective `gloria_local` (§3.2), for every caption i against every image b of the batch:

  s_{t,r}  = e_{i,t} . c_{b,r}            words e, regions c (not normalised)
  alpha    = softmax_r(tau1 * s)                   paper; exact=False (default)
           = softmax_r(tau1 * softmax_t(s))        code's double softmax; exact=True
  ctx_t    = sum_r alpha_{t,r} c_{b,r};   R_t = cos(e_{i,t}, ctx_t)
  Z(b, i)  = (1/tau2) log sum_t exp(tau2 R_t)      paper; exact=False
           =          log sum_t exp(tau2 R_t)      code drops 1/tau2; exact=True
  S_{b,i}  = tau3 Z(b, i);  L = CE(S_{b,.}, b) + CE(S_{.,i}, i)   (means over valid rows)

The B x B x W x R attention is the cost (§3.5): with `caption_chunk=C > 0` captions are
processed C at a time under `lax.map` with a rematerialised body, so forward and backward hold
O(B * C * W * R) instead of O(B^2 * W * R); the result equals the plain form. With
`negatives_group=G > 0` (a deviation from the paper and code, off by default; docs/scaling.md) the
batch is cut into B / G groups of G consecutive examples and each image meets only the captions
of its group (the loss is the exact one within each group, averaged over the valid rows of all
groups): O(B * G * W * R), linear in B. The data pipeline shuffles, so a group is a random
subset; with G = the per-device batch, no caption leaves its device (like clip_nce's
negatives_group). G = B is the exact form. The global loss is
`clip_nce` with tau 0.1, image_to_text_weight 0.5, sum_directions=True (§3.2), configured next
to it.

Method `gloria` (heads, §3.1): image regions -> Linear(no bias) to the text width, image global ->
Linear to the text width, no text projection; words are word-pieces summed per word
(`batch['token_to_word']`), with [CLS] as word 0 by default (the code's training words).
Outputs: 'image_embed', 'text_embed' [B, D]; 'image_regions' [B, R, D], 'region_mask' [B, R];
'text_words' [B, W, D], 'word_mask' [B, W].
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.gloria_heads import word_features
from mmrl.heads.projection import LinearProjection
from mmrl.objectives.contrastive import NEG_INF, symmetric_nce, valid_mean
from mmrl.objectives.methods import METHODS, Method
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import masked_softmax, valid_rows


COS_EPS = 1e-8  # GLoRIA's cosine clamp on |a| |b|


# Mean over the rows that take part; shared with MGCA.
masked_mean = valid_mean


def word_region_attention(words: jax.Array, word_mask: jax.Array, regions: jax.Array,
                          region_mask: jax.Array, *, tau1: float, exact: bool) -> jax.Array:
  """alpha f32[C, B, W, R]: attention of caption c's words over image b's regions.

  Args:
    words: f[C, W, D] caption word features.
    word_mask: bool[C, W].
    regions: f[B, R, D] image region features.
    region_mask: bool[B, R].
    tau1: the attention sharpness.
    exact: the code's double softmax (softmax over words first, then over regions of tau1 times
      it) instead of the paper's softmax_r(tau1 * s).
  """
  s = jnp.einsum("cwd,brd->cbwr", words.astype(jnp.float32), regions.astype(jnp.float32))
  if exact:
    s = tau1 * masked_softmax(s, word_mask[:, None, :, None], axis=2)
  else:
    s = tau1 * s
  return masked_softmax(s, region_mask[None, :, None, :], axis=3)


def _safe_norm(x: jax.Array) -> jax.Array:
  """||x|| over the last axis with a finite gradient at 0 (zero-padded words and contexts)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), COS_EPS * COS_EPS))


def _caption_scores(words, word_mask, regions, region_mask, *, tau1, tau2, exact):
  """Z f32[C, B] (caption c against image b) and alpha f32[C, B, W, R]."""
  alpha = word_region_attention(words, word_mask, regions, region_mask, tau1=tau1, exact=exact)
  ctx = jnp.einsum("cbwr,brd->cbwd", alpha, regions.astype(jnp.float32))
  e = words.astype(jnp.float32)
  dot = jnp.einsum("cwd,cbwd->cbw", e, ctx)
  norms = _safe_norm(e)[:, None, :] * _safe_norm(ctx)
  rel = dot / jnp.maximum(norms, COS_EPS)
  z = jax.nn.logsumexp(jnp.where(word_mask[:, None, :], tau2 * rel, NEG_INF), axis=-1)
  if not exact:
    z = z / tau2
  return z, alpha


def gloria_local_logits(words: jax.Array, word_mask: jax.Array, regions: jax.Array,
                        region_mask: jax.Array, *, tau1: float = 4.0, tau2: float = 5.0,
                        tau3: float = 10.0, exact: bool = False,
                        caption_chunk: int = 0) -> jax.Array:
  """S f32[B_images, B_captions] = tau3 * Z(b, i) (module docstring).

  Args:
    words: f[B, W, D] word features of each caption.
    word_mask: bool[B, W].
    regions: f[B, R, D] region features of each image.
    region_mask: bool[B, R].
    tau1, tau2, tau3: GLoRIA's temperatures (4, 5, 10).
    exact: reproduce the code (double softmax, no 1/tau2); default the paper's form.
    caption_chunk: 0 = all captions at once; C > 0 = C captions per `lax.map` step (rematerialised),
      memory O(B * C * W * R). B need not be a multiple of C (the last chunk is padded).
  """
  b_cap = words.shape[0]
  word_mask = word_mask.astype(bool)
  region_mask = region_mask.astype(bool)
  kw = dict(tau1=tau1, tau2=tau2, exact=exact)
  if caption_chunk <= 0 or caption_chunk >= b_cap:
    z, _ = _caption_scores(words, word_mask, regions, region_mask, **kw)
  else:
    c = int(caption_chunk)
    n = -(-b_cap // c)
    pad = n * c - b_cap
    w = jnp.pad(words.astype(jnp.float32), ((0, pad), (0, 0), (0, 0)))
    m = jnp.pad(word_mask, ((0, pad), (0, 0)))
    w = w.reshape((n, c) + w.shape[1:])
    m = m.reshape((n, c) + m.shape[1:])

    @jax.checkpoint
    def body(xs):
      return _caption_scores(xs[0], xs[1], regions, region_mask, **kw)[0]

    z = jax.lax.map(body, (w, m)).reshape(n * c, -1)[:b_cap]
  return tau3 * z.T


def gloria_attention_maps(words: jax.Array, word_mask: jax.Array, regions: jax.Array,
                          region_mask: jax.Array, *, tau1: float = 4.0,
                          exact: bool = False) -> jax.Array:
  """alpha f32[B, W, R]: each caption's word->region attention on its own image (for the
  localisation evaluators; no gradient). Reshape R to the image's `grid_hw` for a heat map."""
  def one(w, wm, r, rm):
    return word_region_attention(w[None], wm[None], r[None], rm[None], tau1=tau1,
                                 exact=exact)[0, 0]
  alpha = jax.vmap(one)(words, word_mask.astype(bool), regions, region_mask.astype(bool))
  return jax.lax.stop_gradient(alpha)


def _region_mask(outputs: Mapping[str, Any], regions: jax.Array, key: str) -> jax.Array:
  if key in outputs:
    return jnp.asarray(outputs[key]).astype(bool)
  return jnp.ones(regions.shape[:2], bool)


@OBJECTIVES.register("gloria_local")
def gloria_local(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
                 tau1: float = 4.0, tau2: float = 5.0, tau3: float = 10.0, exact: bool = False,
                 caption_chunk: int = 0, negatives_group: int = 0,
                 words_key: str = "text_words",
                 word_mask_key: str = "word_mask", regions_key: str = "image_regions",
                 region_mask_key: str = "region_mask",
                 return_aux: bool = False) -> tuple[jax.Array, Metrics]:
  """GLoRIA's local loss l0 + l1 (module docstring; METHODS.md §3.2).

  Args:
    outputs: needs `words_key` [B, W, D], `word_mask_key` bool[B, W], `regions_key` [B, R, D];
      `region_mask_key` bool[B, R] is optional (all regions valid without it).
    batch: `batch['valid']` (bool[B]) drops padding examples from rows and columns; captions
      without any valid word are dropped the same way.
    rng: unused.
    tau1, tau2, tau3: 4, 5, 10 as the paper and code.
    exact: True reproduces the code (double softmax, missing 1/tau2); False (default) the paper.
    caption_chunk: captions per chunk (0 = all at once); see `gloria_local_logits`.
    negatives_group: 0 = every caption of the (global) batch is a negative (the paper); G > 0 =
      only the captions of the same block of G consecutive examples (module docstring; a
      deviation). Must divide B.
    return_aux: also return 'aux/attention' f32[B, W, R] (each caption on its own image) in the
      metrics. Off in training configs: the train loop logs metrics as scalars.

  Returns:
    (l0 + l1, metrics) with loss_i2t (l0), loss_t2i (l1), acc_i2t, acc_t2i.
  """
  del rng
  for key in (words_key, word_mask_key, regions_key):
    if key not in outputs:
      raise ConfigError(f"gloria_local needs the model output {key!r} (method 'gloria' provides "
                        f"it); known outputs: {sorted(outputs)}")
  if caption_chunk < 0:
    raise ConfigError(f"gloria_local caption_chunk={caption_chunk} must be >= 0 (0 = no chunks)")
  words = outputs[words_key]
  word_mask = jnp.asarray(outputs[word_mask_key]).astype(bool)
  regions = outputs[regions_key]
  region_mask = _region_mask(outputs, regions, region_mask_key)
  b = words.shape[0]
  ok = valid_rows(batch, b) & jnp.any(word_mask, axis=1) & jnp.any(region_mask, axis=1)
  g = int(negatives_group)
  if g < 0 or (g and b % g):
    raise ConfigError(f"gloria_local negatives_group={g} must be 0 (the whole batch) or a "
                      f"positive divisor of the batch size {b}")
  if 0 < g < b:
    return _grouped_local(words, word_mask, regions, region_mask, ok, group=g,
                          tau1=tau1, tau2=tau2, tau3=tau3, exact=exact,
                          caption_chunk=caption_chunk)
  s = gloria_local_logits(words, word_mask, regions, region_mask, tau1=tau1, tau2=tau2,
                          tau3=tau3, exact=exact, caption_chunk=caption_chunk)
  # Both directions summed (GLoRIA): twice the lambda = 1/2 mean.
  loss, metrics = symmetric_nce(s.astype(jnp.float32), ok[:, None] & ok[None, :], ok,
                                image_to_text_weight=0.5)
  if return_aux:
    metrics["aux/attention"] = gloria_attention_maps(words, word_mask, regions, region_mask,
                                                     tau1=tau1, exact=exact)
  return 2.0 * loss, metrics


def _block_ce(logits, valid):
  """Per-row CE with the diagonal as target over the valid columns, and argmax == diagonal."""
  x = jnp.where(valid[None, :], logits.astype(jnp.float32), NEG_INF)
  ce = jax.nn.logsumexp(x, axis=-1) - jnp.diagonal(x)
  return ce, jnp.argmax(x, axis=-1) == jnp.arange(x.shape[0])


def _grouped_local(words, word_mask, regions, region_mask, ok, *, group, **kw):
  """GLoRIA's local loss within blocks of `group` consecutive examples (negatives_group)."""
  n = words.shape[0] // group

  def blocks(x):
    return x.reshape((n, group) + x.shape[1:])

  def one(w, wm, r, rm, v):
    s = gloria_local_logits(w, wm, r, rm, **kw)  # [images, captions] of one block
    ce_i2t, ok_i2t = _block_ce(s, v)
    ce_t2i, ok_t2i = _block_ce(s.T, v)
    return ce_i2t, ce_t2i, ok_i2t, ok_t2i

  ce_i2t, ce_t2i, acc_i2t, acc_t2i = (
      x.reshape(-1) for x in jax.vmap(one)(*(blocks(x) for x in (
          words, word_mask, regions, region_mask, ok))))
  loss_i2t, loss_t2i = masked_mean(ce_i2t, ok), masked_mean(ce_t2i, ok)
  per_block = jnp.sum(blocks(ok), axis=1, keepdims=True) - 1
  negatives = jnp.broadcast_to(per_block, blocks(ok).shape).reshape(-1)
  # Both directions summed, as the exact form: 2 * (l0 / 2 + l1 / 2).
  return loss_i2t + loss_t2i, {
      "loss_i2t": loss_i2t, "loss_t2i": loss_t2i, "acc_i2t": masked_mean(acc_i2t, ok),
      "acc_t2i": masked_mean(acc_t2i, ok), "negatives": masked_mean(negatives, ok)}


@METHODS.register("gloria")
class GLoRIA(Method):
  """GLoRIA heads (METHODS.md §3.1; module docstring).

  Reads config.method.{max_words, word_include_cls, word_pool}. The text tower's width D is the
  shared width (the paper's 768 with Bio_ClinicalBERT).
  """

  options = {
      "max_words": 96,             # W, static word slots per report (GLoRIA: 96)
      "word_include_cls": True,    # [CLS] is word 0 (the authors' code keeps it)
      "word_pool": "sum",          # sum | mean of a word's word-piece features
  }

  def apply_heads(self, image, text, batch, *, train, dtype):
    c = self.cfg
    d = int(text.tokens.shape[-1])
    max_words = int(c.max_words)
    if max_words < 1:
      raise ConfigError(f"config.method.max_words={max_words} must be >= 1 (GLoRIA: 96)")
    words, word_mask = word_features(text, batch, max_words=max_words,
                                     include_cls=bool(c.word_include_cls),
                                     mode=str(c.word_pool))
    regions = LinearProjection(d, use_bias=False, dtype=dtype,
                               name="image_local_projection")(image.local, train=train)
    image_embed = LinearProjection(d, dtype=dtype, name="image_global_projection")(
        image.global_embedding, train=train)
    return {
        "image_embed": image_embed.astype(jnp.float32),
        "text_embed": text.global_embedding.astype(jnp.float32),
        "image_regions": regions.astype(jnp.float32),
        "region_mask": jnp.ones(regions.shape[:2], bool),
        "text_words": words,
        "word_mask": word_mask,
    }


__all__ = ["gloria_local", "gloria_local_logits", "gloria_attention_maps", "word_region_attention",
           "GLoRIA", "masked_softmax", "masked_mean"]
