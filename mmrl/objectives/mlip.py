"""MLIP (Li et al., CVPR 2024; METHODS.md §8, a reconstruction of the §8.2 spec [O]).

Objectives (pure functions, float32, finite -1e9 masks, vectorised over the batch):

- `soft_clip_nce`, the global ITC with soft targets (§8.2 "divergence encoder", ALBEF-style).
  With s = v^ u^T / tau over valid pairs and target similarities s' (no gradient):
      y^{v2u}_i = alpha softmax_j(s'_ij) + (1 - alpha) 1[j = i]
      y^{u2v}_i = alpha softmax_j(s'_ji) + (1 - alpha) 1[j = i]
      L = 1/2 [1/|V| sum_i CE_soft(s_i., y^{v2u}_i) + 1/|V| sum_i CE_soft(s_.i, y^{u2v}_i)]
  s' comes from outputs['image_embed_target'] / ['text_embed_target'] when present (an EMA
  teacher, §8.2 m = 0.995, can fill them later); the trainer has no EMA teacher yet, so by default
  s' = stop_gradient(s) of the *online* embeddings (self-distillation; the EMA is pending).
- TKP (token-knowledge-patch) is the shared MGCA `tca` on the knowledge-enhanced words
  'text_words_knowledge' (w~ = w + CrossAttn(w, knowledge), §8.2 steps 1-2) and the patches.
  §8.2 step 3 (higher weight for concept-linked tokens) is not implemented: `tca` has uniform
  weights only.
- Category level is the shared MGCA `proto_swap` (log-domain Sinkhorn) with prototypes_key=
  'knowledge_prototypes': K prototypes = the knowledge embeddings of the vocabulary's findings
  passed through a trainable projection (so they start from, and stay tied to, the knowledge;
  the projection trains). The multi-positive-by-labels variant is not implemented.
- ITM and text-swap (§8.2) are not implemented (need a Fusion module and hard-negative sampling).

Method `mlip` (`MLIP.apply_heads`) outputs, besides the tower features:
  image_embed, text_embed f32[B,d]               global MLP projections (soft_clip_nce, eval)
  image_regions_local f32[B,R,d], region_mask     projected patches           (when tca listed)
  text_words_local f32[B,W,d], word_mask          projected words (pieces summed per word)
  text_words_knowledge f32[B,W,d]                 w~, knowledge-attended words
  word_knowledge_attention f32[B,W,K]             token->finding attention (interpretability)
  knowledge_prototypes f32[K,d]                   projected knowledge (tca or proto_swap listed)
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
from mmrl.heads.mlip_heads import KnowledgeAttention, encode_knowledge
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.objectives.contrastive import NEG_INF, l2_normalize, resolve_tau, valid_mean
from mmrl.objectives.methods import METHODS, Method
from mmrl.objectives.registry import OBJECTIVES, Metrics

_HIGHEST = jax.lax.Precision.HIGHEST


def _valid(batch: Any, b: int) -> jax.Array:
  valid = batch.get("valid") if isinstance(batch, dict) else None
  return jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)


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
                  alpha: float = 0.4, image_key: str = "image_embed",
                  text_key: str = "text_embed", target_image_key: str = "image_embed_target",
                  target_text_key: str = "text_embed_target", tau_key: str = "log_tau",
                  min_tau: float = 0.01, max_tau: float = 1.0) -> tuple[jax.Array, Metrics]:
  """MLIP's soft-target ITC (module docstring; METHODS.md §8.2).

  Args:
    outputs: needs `image_key`, `text_key` f[B,d]; optional `target_image_key`,
      `target_text_key` f[B,d] (teacher embeddings; both or neither), else the online ones.
    batch: optional 'valid' bool[B]; invalid examples are neither rows nor candidates.
    rng: unused.
    tau: ITC temperature (0.07); learnable_tau reads `outputs[tau_key]` (clip_nce's rule).
    alpha: soft-target weight (ALBEF 0.4); alpha = 0 is the symmetric clip_nce.

  Returns:
    (loss, metrics loss_i2t, loss_t2i, acc_i2t, acc_t2i, tau, target_source (1 = teacher)).
  """
  del rng
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"soft_clip_nce alpha={alpha} must be in [0, 1] (MLIP/ALBEF: 0.4)")
  for key in (image_key, text_key):
    if key not in outputs:
      raise ConfigError(f"soft_clip_nce needs the model output {key!r} (method 'mlip' provides "
                        f"it); known outputs: {sorted(outputs)}")
  has_t = (target_image_key in outputs, target_text_key in outputs)
  if has_t[0] != has_t[1]:
    raise ConfigError(f"soft_clip_nce needs both {target_image_key!r} and {target_text_key!r} "
                      f"or neither; got only one")
  img, txt = l2_normalize(outputs[image_key]), l2_normalize(outputs[text_key])
  if has_t[0]:
    t_img, t_txt = l2_normalize(outputs[target_image_key]), l2_normalize(outputs[target_text_key])
  else:
    t_img, t_txt = img, txt
  t_img, t_txt = jax.lax.stop_gradient(t_img), jax.lax.stop_gradient(t_txt)
  valid = _valid(batch, img.shape[0])
  t = resolve_tau(outputs, tau=tau, learnable_tau=learnable_tau, tau_key=tau_key,
                  min_tau=min_tau, max_tau=max_tau)
  logits = jnp.einsum("id,jd->ij", img, txt, precision=_HIGHEST) / t
  target = jnp.einsum("id,jd->ij", t_img, t_txt, precision=_HIGHEST) / jax.lax.stop_gradient(t)
  col_ok = valid[None, :] & valid[:, None]
  ce_i2t, acc_i2t = _soft_ce(logits, target, col_ok, alpha)
  ce_t2i, acc_t2i = _soft_ce(logits.T, target.T, col_ok, alpha)
  l_i2t, l_t2i = valid_mean(ce_i2t, valid), valid_mean(ce_t2i, valid)
  metrics = {"loss_i2t": l_i2t, "loss_t2i": l_t2i, "acc_i2t": valid_mean(acc_i2t, valid),
             "acc_t2i": valid_mean(acc_t2i, valid), "tau": t,
             "target_source": jnp.asarray(float(has_t[0]), jnp.float32)}
  return 0.5 * (l_i2t + l_t2i), jax.lax.stop_gradient(metrics)


def _listed(method: Method, name: str) -> bool:
  return any(obj_name == name for obj_name, _, _ in method.objectives())


@METHODS.register("mlip")
class MLIP(Method):
  """MLIP heads (module docstring; METHODS.md §8.2).

  Reads config.method.{embed_dim, projection_hidden, projection_norm, knowledge_path,
  knowledge_tokenizer, knowledge_max_tokens} and config.method.mlip.{max_words, word_pool,
  knowledge_heads}. Word/patch/knowledge heads exist only when 'tca' is listed, the knowledge
  prototypes when 'tca' or 'proto_swap' is, so ablations are config edits.
  """

  uses_model = True  # the knowledge embeddings run the model's own text tower

  def apply_heads(self, image, text, batch, *, train, dtype, model):
    c = self.cfg
    if "mlip" not in c:
      raise ConfigError("config.method.mlip is missing; MLIP needs config.method.mlip.{max_words,"
                        " word_pool, knowledge_heads} (see experiments/configs/mlip.py)")
    p = c.mlip
    norm = str(c.get("projection_norm", "none"))

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
      max_tokens = int(c.get("knowledge_max_tokens", 64))
      try:
        tokens = knowledge_lib.knowledge_tokens(str(c.get("knowledge_path", "")),
                                                str(c.get("knowledge_tokenizer", "")),
                                                max_tokens)
      except knowledge_lib.KnowledgeError as e:
        raise ConfigError(f"config.method.knowledge_path: {e}") from None
      k_feats = encode_knowledge(model.text_tower, tokens)
      # No BatchNorm on the K knowledge rows: a per-step batch of the same rows is degenerate.
      knowledge = f32(MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim),
                                    norm="none", dtype=dtype,
                                    name="knowledge_projection")(k_feats, train=train))
      out["knowledge_prototypes"] = l2_normalize(knowledge)
    if use_tca:
      max_words = int(p.get("max_words", 111))
      if max_words < 1:
        raise ConfigError(f"config.method.mlip.max_words={max_words} must be >= 1 (MGCA: 111)")
      words, word_mask = word_features(text, batch, max_words=max_words, include_cls=False,
                                       mode=str(p.get("word_pool", "sum")))
      words = f32(proj("text_local_projection")(words, train=train))
      regions = f32(proj("image_local_projection")(image.local, train=train))
      enhanced, att = KnowledgeAttention(num_heads=int(p.get("knowledge_heads", 1)), dtype=dtype,
                                         name="knowledge_attention")(words, knowledge)
      out.update(image_regions_local=regions, region_mask=jnp.ones(regions.shape[:2], bool),
                 text_words_local=words, word_mask=word_mask, text_words_knowledge=enhanced,
                 word_knowledge_attention=att)
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out


__all__ = ["soft_clip_nce", "MLIP"]
