"""MLIP (Li et al., CVPR 2024; METHODS.md §8, a reconstruction of the §8.2 spec [O]).

Objectives (pure functions, float32, finite -1e9 masks, vectorised over the batch):

- `soft_clip_nce`, the global ITC with soft targets (§8.2 "divergence encoder", ALBEF-style).
  With s = v^ u^T / tau over valid pairs and target similarities s' (no gradient):
      y^{v2u}_i = alpha softmax_j(s'_ij) + (1 - alpha) 1[j = i]
      y^{u2v}_i = alpha softmax_j(s'_ji) + (1 - alpha) 1[j = i]
      L = 1/2 [1/|V| sum_i CE_soft(s_i., y^{v2u}_i) + 1/|V| sum_i CE_soft(s_.i, y^{u2v}_i)]
  target='teacher' (the MLIP config): s' from the divergence encoder, the EMA teacher of both
  towers and the global projections (§8.2, m = 0.995; config.train.ema), which sees the same
  batch; its embeddings arrive as outputs['teacher']['image_embed' / 'text_embed'].
  target='online': s' = stop_gradient(s) of the online embeddings (no teacher needed).
- TKP (token-knowledge-patch) is the shared MGCA `tca` on the knowledge-enhanced words
  'text_words_knowledge' (w~ = w + CrossAttn(w, knowledge), §8.2 steps 1-2) and the patches.
  §8.2 step 3 (higher weight for concept-linked tokens) is not implemented: `tca` has uniform
  weights only.
- Category level is the shared MGCA `proto_swap` (log-domain Sinkhorn) with prototypes_key=
  'knowledge_prototypes': K prototypes = the knowledge embeddings of the vocabulary's findings
  passed through a trainable projection (so they start from, and stay tied to, the knowledge;
  the projection trains). The multi-positive-by-labels variant is not implemented.
- `itm` (§8.2 "ITM and text-swap"): BCE on a binary logit from the fused [CLS] of (image,
  report) pairs. Per example b the heads build P pairs: (v_b, u_b) positive; (v_b, u_j) with
  j ~ softmax_j(s_bj / tau_n) over valid j != b (ALBEF hard negative text; the online
  similarities, no gradient); (v_j, u_b) likewise for images; and with text_swap, (v_b, u~_b)
  where u~_b is report b with one random sentence replaced by a random sentence of another
  random report (re-encoded by the text tower), a negative. Outside training the hardest
  negative and the first sentences are used (deterministic). Fusion: 2 layers of bidirectional
  cross-attention (LRCLR's `Fusion`) between projected patches and report tokens.

Method `mlip` (`MLIP.apply_heads`) outputs, besides the tower features:
  image_embed, text_embed f32[B,d]               global MLP projections (soft_clip_nce, eval)
  image_regions_local f32[B,R,d], region_mask     projected patches           (when tca listed)
  text_words_local f32[B,W,d], word_mask          projected words (pieces summed per word)
  text_words_knowledge f32[B,W,d]                 w~, knowledge-attended words
  word_knowledge_attention f32[B,W,K]             token->finding attention (interpretability)
  knowledge_prototypes f32[K,d]                   projected knowledge (tca or proto_swap listed)
  itm_logits f32[B,P], itm_labels f32[B,P], itm_pair_mask bool[B,P]   (when itm listed; P = 4
                                                  with text_swap, else 3; column 0 positive)
Teacher (`MLIP.teacher_heads`, run on the EMA variables by the train step): image_embed,
text_embed from the towers and the global projections only.
  log_tau []                                      when an objective asks for a learnable tau
Knowledge embeddings: the model's own text tower (same parameters) runs on the statically
tokenised descriptions every step (K x D sequences), stop-gradient, mean over descriptions.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmrl import knowledge as knowledge_lib
from mmrl.config_errors import ConfigError
from mmrl.heads.gloria_heads import word_features
from mmrl.heads.mlip_heads import (ImageTextMatching, KnowledgeAttention, encode_knowledge,
                                   sample_negatives, swap_sentences)
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.objectives.contrastive import NEG_INF, l2_normalize, resolve_tau, valid_mean
from mmrl.objectives.methods import METHODS, Method, objective_options, teacher_outputs
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import valid_rows

_HIGHEST = jax.lax.Precision.HIGHEST
TARGETS = ("online", "teacher")



def _valid(batch: Any, b: int) -> jax.Array:
  """The row mask of a plain-dict batch (a non-dict Mapping is treated as having none, as before)."""
  return valid_rows(batch if isinstance(batch, dict) else None, b)


def _soft_ce(logits: jax.Array, target_logits: jax.Array, col_ok: jax.Array,
             alpha: float) -> tuple[jax.Array, jax.Array]:
  """Per-row soft CE (rows of [B,B] logits, diagonal positive) and argmax-is-diagonal."""
  b = logits.shape[0]
  logits = jnp.where(col_ok, logits, NEG_INF)
  target_logits = jnp.where(col_ok, target_logits, NEG_INF)
  y = alpha * jax.nn.softmax(target_logits, axis=-1) + (1.0 - alpha) * jnp.eye(b)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.sum(jnp.where(col_ok, y * logp, 0.0), axis=-1)
  return ce, jnp.argmax(logits, axis=-1) == jnp.arange(b)


@OBJECTIVES.register("soft_clip_nce")
def soft_clip_nce(outputs: dict[str, Any], batch: dict[str, Any], *,
                  rng: jax.Array | None = None, tau: float = 0.07, learnable_tau: bool = False,
                  alpha: float = 0.4, target: str = "online", image_key: str = "image_embed",
                  text_key: str = "text_embed", teacher_key: str = "teacher",
                  tau_key: str = "log_tau", min_tau: float = 0.01,
                  max_tau: float = 1.0) -> tuple[jax.Array, Metrics]:
  """MLIP's soft-target ITC (module docstring; METHODS.md §8.2).

  Args:
    outputs: needs `image_key`, `text_key` f[B,d]; with target='teacher' also
      `outputs[teacher_key][image_key]` / `[text_key]` (the EMA teacher's embeddings, which the
      train step provides when config.train.ema.enabled).
    batch: optional 'valid' bool[B]; invalid examples are neither rows nor candidates.
    rng: unused.
    tau: ITC temperature (0.07); learnable_tau reads `outputs[tau_key]` (clip_nce's rule).
    alpha: soft-target weight (ALBEF 0.4); alpha = 0 is the symmetric clip_nce.
    target: 'teacher' (s' from the EMA teacher, §8.2) or 'online' (s' = stop-gradient online
      similarities: self-distillation without a teacher).

  Returns:
    (loss, metrics loss_i2t, loss_t2i, acc_i2t, acc_t2i, tau, target_source (1 = teacher)).
  """
  del rng
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"soft_clip_nce alpha={alpha} must be in [0, 1] (MLIP/ALBEF: 0.4)")
  if target not in TARGETS:
    raise ConfigError(f"soft_clip_nce target={target!r} is not known; use one of {TARGETS}")
  for key in (image_key, text_key):
    if key not in outputs:
      raise ConfigError(f"soft_clip_nce needs the model output {key!r} (method 'mlip' provides "
                        f"it); known outputs: {sorted(outputs)}")
  img, txt = l2_normalize(outputs[image_key]), l2_normalize(outputs[text_key])
  if target == "teacher":
    teacher = teacher_outputs(outputs, teacher_key, (image_key, text_key), "soft_clip_nce")
    t_img, t_txt = l2_normalize(teacher[image_key]), l2_normalize(teacher[text_key])
  else:
    t_img, t_txt = img, txt
  t_img, t_txt = jax.lax.stop_gradient(t_img), jax.lax.stop_gradient(t_txt)
  valid = _valid(batch, img.shape[0])
  t = resolve_tau(outputs, tau=tau, learnable_tau=learnable_tau, tau_key=tau_key,
                  min_tau=min_tau, max_tau=max_tau)
  logits = jnp.einsum("id,jd->ij", img, txt, precision=_HIGHEST) / t
  t_logits = jnp.einsum("id,jd->ij", t_img, t_txt, precision=_HIGHEST) / jax.lax.stop_gradient(t)
  col_ok = valid[None, :] & valid[:, None]
  ce_i2t, acc_i2t = _soft_ce(logits, t_logits, col_ok, alpha)
  ce_t2i, acc_t2i = _soft_ce(logits.T, t_logits.T, col_ok, alpha)
  l_i2t, l_t2i = valid_mean(ce_i2t, valid), valid_mean(ce_t2i, valid)
  metrics = {"loss_i2t": l_i2t, "loss_t2i": l_t2i, "acc_i2t": valid_mean(acc_i2t, valid),
             "acc_t2i": valid_mean(acc_t2i, valid), "tau": t,
             "target_source": jnp.asarray(float(target == "teacher"), jnp.float32)}
  return 0.5 * (l_i2t + l_t2i), jax.lax.stop_gradient(metrics)


@OBJECTIVES.register("itm")
def itm(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
        negatives_tau: float = 0.07, text_swap: bool = True, logits_key: str = "itm_logits",
        labels_key: str = "itm_labels", mask_key: str = "itm_pair_mask"
        ) -> tuple[jax.Array, Metrics]:
  """Image-text matching: binary cross-entropy on the ITM logits (METHODS.md §8.2, §11.4).

      L = sum_{b,p} m_bp BCE(sigmoid(z_bp), y_bp) / sum_{b,p} m_bp

  Args:
    outputs: `logits_key` f[B,P] (the MLIP heads: column 0 the positive pair, 1 image + hard
      negative text, 2 text + hard negative image, 3 image + its text-swapped report),
      `labels_key` f[B,P] in {0, 1} and `mask_key` bool[B,P] (which pairs exist).
    batch: optional 'valid' bool[B] (invalid rows never count).
    rng: unused (the heads sample the negatives).
    negatives_tau, text_swap: read by the MLIP heads (the hard-negative sampling temperature and
      whether to build text-swap pairs); validated here.

  Returns:
    (loss, metrics acc (thresholded at 0), pos_prob, neg_prob (mean sigmoid on positive /
    negative pairs), pairs (mean number of pairs per valid row)).
  """
  del rng, text_swap
  if negatives_tau <= 0:
    raise ConfigError(f"itm negatives_tau={negatives_tau} must be > 0 (ALBEF samples hard "
                      "negatives from softmax(sim / 0.07))")
  for key in (logits_key, labels_key, mask_key):
    if key not in outputs:
      raise ConfigError(f"itm needs the model output {key!r} (method 'mlip' provides it when "
                        f"'itm' is among config.method.objectives); known: {sorted(outputs)}")
  z = jnp.asarray(outputs[logits_key], jnp.float32)
  y = jax.lax.stop_gradient(jnp.asarray(outputs[labels_key], jnp.float32))
  m = jnp.asarray(outputs[mask_key]).astype(bool) & _valid(batch, z.shape[0])[:, None]
  bce = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
  w = m.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w), 1.0)
  loss = jnp.sum(jnp.where(m, bce, 0.0)) / n
  p = jax.nn.sigmoid(z)
  pos, neg = w * y, w * (1.0 - y)
  metrics = {
      "acc": jnp.sum(jnp.where(m, ((z > 0) == (y > 0.5)).astype(jnp.float32), 0.0)) / n,
      "pos_prob": jnp.sum(pos * p) / jnp.maximum(jnp.sum(pos), 1.0),
      "neg_prob": jnp.sum(neg * p) / jnp.maximum(jnp.sum(neg), 1.0),
      "pairs": jnp.sum(w) / jnp.maximum(jnp.sum(jnp.any(m, axis=-1)), 1.0),
  }
  return loss, jax.lax.stop_gradient(metrics)


def _listed(method: Method, name: str) -> bool:
  return objective_options(method.cfg, name) is not None


@METHODS.register("mlip")
class MLIP(Method):
  """MLIP heads (module docstring; METHODS.md §8.2).

  Reads config.method.{embed_dim, projection_hidden, projection_norm, knowledge_path,
  knowledge_tokenizer, knowledge_max_tokens} and config.method.mlip.{max_words, word_pool,
  knowledge_heads}. Word/patch/knowledge heads exist only when 'tca' is listed, the knowledge
  prototypes when 'tca' or 'proto_swap' is, so ablations are config edits.
  """

  options = {
      "knowledge_path": "",          # '' = data_pipeline/knowledge/chest_xray_findings.json
      "knowledge_tokenizer": "",     # tokenizer of the knowledge texts ('' = the default)
      "knowledge_max_tokens": 64,    # token slots per knowledge text
      "mlip": {                      # config.method.mlip.*
          "max_words": 111,          # W, static word slots per report (as MGCA)
          "word_pool": "sum",        # sum | mean of a word's word-piece features
          "knowledge_heads": 1,      # heads of the word -> knowledge attention
          "itm_width": 256,          # ITM fusion width
          "itm_layers": 2,           # ITM fusion layers
          "itm_heads": 4,            # ITM attention heads
          "itm_mlp_dim": 0,          # ITM MLP width (0 = 4 x itm_width)
      },
  }

  uses_model = True  # the knowledge embeddings run the model's own text tower

  def apply_heads(self, image, text, batch, *, train, dtype, model):
    c = self.cfg
    p = c.mlip
    norm = str(c.projection_norm)

    def proj(name):
      return MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim), norm=norm,
                           dtype=dtype, name=name)

    f32 = lambda x: x.astype(jnp.float32)
    out: dict[str, Any] = {
        "image_embed": f32(proj("image_projection")(image.global_embedding, train=train)),
        "text_embed": f32(proj("text_projection")(text.global_embedding, train=train)),
    }
    use_tca = _listed(self, "tca")
    if use_tca or _listed(self, "proto_swap"):
      max_tokens = int(c.knowledge_max_tokens)
      try:
        tokens = knowledge_lib.knowledge_tokens(str(c.knowledge_path),
                                                str(c.knowledge_tokenizer), max_tokens)
      except knowledge_lib.KnowledgeError as e:
        raise ConfigError(f"config.method.knowledge_path: {e}") from None
      k_feats = encode_knowledge(model.text_tower, tokens)
      # No BatchNorm on the K knowledge rows: a per-step batch of the same rows is degenerate.
      knowledge = f32(MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim),
                                    norm="none", dtype=dtype,
                                    name="knowledge_projection")(k_feats, train=train))
      out["knowledge_prototypes"] = l2_normalize(knowledge)
    if use_tca:
      max_words = int(p.max_words)
      if max_words < 1:
        raise ConfigError(f"config.method.mlip.max_words={max_words} must be >= 1 (MGCA: 111)")
      words, word_mask = word_features(text, batch, max_words=max_words, include_cls=False,
                                       mode=str(p.word_pool))
      words = f32(proj("text_local_projection")(words, train=train))
      regions = f32(proj("image_local_projection")(image.local, train=train))
      enhanced, att = KnowledgeAttention(num_heads=int(p.knowledge_heads), dtype=dtype,
                                         name="knowledge_attention")(words, knowledge)
      out.update(image_regions_local=regions, region_mask=jnp.ones(regions.shape[:2], bool),
                 text_words_local=words, word_mask=word_mask, text_words_knowledge=enhanced,
                 word_knowledge_attention=att)
    itm_opts = objective_options(self.cfg, "itm")
    if itm_opts is not None:
      out.update(self._itm(out, image, text, batch, itm_opts, train=train, dtype=dtype,
                           model=model))
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out

  def _itm(self, out, image, text, batch, opts, *, train, dtype, model) -> dict[str, Any]:
    """ITM pairs and logits (module docstring): positives, ALBEF hard negatives from the online
    similarities (sampled in training, the hardest otherwise), optional text-swap negatives."""
    p = self.cfg.mlip
    b = out["image_embed"].shape[0]
    valid = _valid(batch, b)
    sim = jnp.einsum("id,jd->ij", l2_normalize(out["image_embed"]),
                     l2_normalize(out["text_embed"]), precision=_HIGHEST)
    tau = float(opts["negatives_tau"])
    keys = list(jax.random.split(model.make_rng("dropout"), 4)) if train else [None] * 4
    neg_text, ok_text = sample_negatives(sim, valid, keys[0], tau=tau)
    neg_image, ok_image = sample_negatives(sim.T, valid, keys[1], tau=tau)
    ar = jnp.arange(b, dtype=jnp.int32)
    image_index = [ar, ar, neg_image]
    text_index = [ar, neg_text, ar]
    pair_ok = [valid, ok_text, ok_image]
    tokens = text.tokens
    token_mask = jnp.asarray(batch["attention_mask"]) > 0
    if bool(opts["text_swap"]):
      donor, ok_donor = sample_negatives(jnp.zeros_like(sim), valid, keys[2], tau=1.0)
      swapped, ok_swap = swap_sentences(batch["input_ids"], batch["attention_mask"],
                                        batch["token_to_sentence"], donor,
                                        text.sentences.shape[1], keys[3])
      swapped_text = model.encode_text(dict(batch, **swapped), train=train)
      tokens = jnp.concatenate([tokens, swapped_text.tokens.astype(tokens.dtype)], axis=0)
      token_mask = jnp.concatenate([token_mask, swapped["attention_mask"] > 0], axis=0)
      image_index.append(ar)
      text_index.append(ar + b)
      pair_ok.append(ok_donor & ok_swap)
    width = int(p.itm_width)
    logits = ImageTextMatching(width=width, num_layers=int(p.itm_layers),
                               num_heads=int(p.itm_heads),
                               mlp_dim=int(p.itm_mlp_dim) or 4 * width, dtype=dtype,
                               name="itm")(image.local, tokens, token_mask,
                                           jnp.stack(image_index, -1), jnp.stack(text_index, -1))
    labels = jnp.zeros(logits.shape, jnp.float32).at[:, 0].set(1.0)
    return {"itm_logits": logits, "itm_labels": labels, "itm_pair_mask": jnp.stack(pair_ok, -1)}

  def teacher_heads(self, image, text, batch, *, train, dtype, model=None):
    """The divergence encoder's outputs: the EMA towers' global projections (§8.2)."""
    del batch, model
    c = self.cfg
    proj = lambda name: MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim),
                                      norm=str(c.projection_norm), dtype=dtype,
                                      name=name)
    f32 = lambda x: x.astype(jnp.float32)
    return {"image_embed": f32(proj("image_projection")(image.global_embedding, train=train)),
            "text_embed": f32(proj("text_projection")(text.global_embedding, train=train))}


__all__ = ["soft_clip_nce", "itm", "MLIP"]
