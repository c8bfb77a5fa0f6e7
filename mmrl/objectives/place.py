"""PLACE (METHODS.md §7, a reconstruction of §7.2): pathology queries, set alignment, CCE.

Objectives (pure functions, float32 math, finite -1e9 masks, vectorised over the batch):

- `set_align` (PCMA, §7.2): V-PORs o [B,K,d] (the VPOE query embeddings) against T-PORs t [B,S,d]
  (the sentence embeddings). FILIP-style pair score, every sentence finds its best query:

      S(b, b') = 1/|S_b'| sum_s m_{b',s} max_k cos(o_{b,k}, t_{b',s})

  then the symmetric InfoNCE of §1 on S / tau_p (tau_p = 0.07). `chunk_size > 0` computes the
  [B,B] score over blocks of `chunk_size` reports with a rematerialised `lax.map`, so the
  [B,chunk,K,S] block (not [B,B,K,S]) is the largest live tensor, forward and backward.
- `corr_predict` (CCE, §7.2): target C_b = softmax_row(h^ h^T / tau_c) from stop-gradient,
  L2-normalised patch features; prediction C~_b the same from the predictor's features h~;
  loss = mean over valid (b, p) of KL(C_{b,p.} || C~_{b,p.}).
- The instance loss is the shared `clip_nce` on 'image_embed' / 'text_embed' (listed in the
  config's objectives; nothing PLACE-specific).

Method `place` (`PLACE.apply_heads`) builds the heads and returns, besides the tower features:
  image_embed, text_embed f[B,d]       MLP projections of the two global vectors (clip_nce, eval)
  query_embed f[B,K,d]                 projected V-PORs            (when set_align is listed)
  query_attention f32[B,K,N]           last VPOE layer's cross-attention, head-mean (localisation)
  sentence_embed f[B,S,d], sentence_mask bool[B,S]   projected T-PORs and their mask
  corr_pred f32[B,N,D], corr_target f32[B,N,D] (stop-gradient), corr_hidden bool[B,N]
                                       (when corr_predict is listed)
  log_tau []                           when an objective asks for a learnable temperature

CCE target: corr_predict target='teacher' (the PLACE config, §7.2) reads the patch features of
the EMA image encoder (momentum 0.996, config.train.ema), `outputs['teacher']['corr_target']`
(`PLACE.teacher_heads` runs only the teacher's image tower); target='online' uses the
stop-gradient online patch features 'corr_target' (no teacher needed).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.projection import LogTemperature, MLPProjection
from mmrl.heads.query_decoder import CorrelationPredictor, QueryDecoder
from mmrl.objectives.contrastive import NEG_INF, l2_normalize, resolve_tau, symmetric_nce, valid_mean
from mmrl.objectives.methods import METHODS, Method, objective_options, teacher_outputs
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import valid_rows

AGGREGATES = ("max_mean",)
CORR_ROWS = ("all", "hidden")
TARGETS = ("online", "teacher")
_HIGHEST = jax.lax.Precision.HIGHEST


def _valid(batch: Any, b: int) -> jax.Array:
  """The row mask of a plain-dict batch (a non-dict Mapping is treated as having none, as before)."""
  return valid_rows(batch if isinstance(batch, dict) else None, b)


def _set_block(query: jax.Array, sent: jax.Array, sent_mask: jax.Array) -> jax.Array:
  """Scores f32[Bi,C] of all images against C reports: masked mean over s of max over k."""
  cos = jnp.einsum("ikd,csd->icks", query, sent, precision=_HIGHEST)
  best = jnp.max(cos, axis=2)                                       # [Bi, C, S]
  m = sent_mask.astype(jnp.float32)
  total = jnp.sum(best * m[None], axis=-1)
  return total / jnp.maximum(jnp.sum(m, axis=-1), 1.0)[None]


def set_scores(query: jax.Array, sent: jax.Array, sent_mask: jax.Array, *,
               chunk_size: int = 0) -> jax.Array:
  """FILIP-style set-to-set scores S[b, b'] (module docstring), float32.

  Args:
    query: f[Bi,K,d] image-side observations (L2-normalised here).
    sent: f[Bt,S,d] report sentences (L2-normalised here).
    sent_mask: bool[Bt,S]; a report with no valid sentence scores 0 against every image.
    chunk_size: 0 = one einsum over all pairs ([Bi,Bt,K,S] live); C > 0 = blocks of C reports
      ([Bi,C,K,S] live, recomputed in the backward pass). Bt need not be a multiple of C.

  Returns:
    f32[Bi,Bt].
  """
  query = l2_normalize(query)
  sent = l2_normalize(sent)
  sent_mask = jnp.asarray(sent_mask).astype(bool)
  bt = sent.shape[0]
  if chunk_size < 0:
    raise ConfigError(f"set_align chunk_size={chunk_size} must be >= 0 (0 = no chunking)")
  if chunk_size == 0 or chunk_size >= bt:
    return _set_block(query, sent, sent_mask)
  n = -(-bt // chunk_size)
  pad = n * chunk_size - bt
  sent = jnp.pad(sent, ((0, pad), (0, 0), (0, 0)))
  sent_mask = jnp.pad(sent_mask, ((0, pad), (0, 0)))
  sent = sent.reshape(n, chunk_size, *sent.shape[1:])
  sent_mask = sent_mask.reshape(n, chunk_size, sent_mask.shape[-1])
  block = jax.checkpoint(lambda args: _set_block(query, *args))
  out = jax.lax.map(block, (sent, sent_mask))                       # [n, Bi, C]
  out = jnp.transpose(out, (1, 0, 2)).reshape(query.shape[0], n * chunk_size)
  return out[:, :bt]


@OBJECTIVES.register("set_align")
def set_align(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
              tau: float = 0.07, learnable_tau: bool = False, image_to_text_weight: float = 0.5,
              aggregate: str = "max_mean", chunk_size: int = 0,
              image_key: str = "query_embed", text_key: str = "sentence_embed",
              mask_key: str = "sentence_mask", tau_key: str = "log_tau",
              min_tau: float = 0.01, max_tau: float = 1.0) -> tuple[jax.Array, Metrics]:
  """PCMA: InfoNCE over the set-to-set scores of V-PORs and T-PORs (METHODS.md §7.2).

  Args:
    outputs: needs `image_key` f[B,K,d] and `text_key` f[B,S,d]; the sentence mask is
      `outputs[mask_key]` when present, and-ed with `batch['sentence_mask']` when present.
    batch: optional 'valid' bool[B] and 'sentence_mask' bool[B,S].
    rng: unused.
    tau: tau_p (PLACE 0.07); learnable_tau reads `outputs[tau_key]` as clip_nce does.
    image_to_text_weight: lambda of §1 (0.5 = symmetric).
    aggregate: 'max_mean' (max over queries, mean over sentences); 'sinkhorn' is not implemented.
    chunk_size: see `set_scores`; results equal the plain form.

  Returns:
    (loss, metrics): loss_i2t, loss_t2i, acc_i2t, acc_t2i, tau, pos_score (mean positive-pair
    score), active_queries (mean number of distinct queries that win some sentence of the
    positive pair: a collapse monitor). Examples without any valid sentence, or with
    valid=False, are left out of rows and columns.
  """
  del rng
  if aggregate not in AGGREGATES:
    raise ConfigError(f"set_align aggregate={aggregate!r} is not implemented; use one of "
                      f"{AGGREGATES}")
  if not 0.0 <= image_to_text_weight <= 1.0:
    raise ConfigError(f"set_align image_to_text_weight={image_to_text_weight} must be in [0, 1]")
  query, sent = outputs[image_key], outputs[text_key]
  if query.ndim != 3 or sent.ndim != 3 or query.shape[-1] != sent.shape[-1]:
    raise ConfigError(f"set_align needs {image_key!r} [B,K,d] and {text_key!r} [B,S,d]; got "
                      f"{query.shape} and {sent.shape}")
  b, s = sent.shape[0], sent.shape[1]
  mask = jnp.ones((b, s), bool)
  if mask_key in outputs:
    mask = mask & jnp.asarray(outputs[mask_key]).astype(bool)
  if isinstance(batch, dict) and "sentence_mask" in batch:
    mask = mask & jnp.asarray(batch["sentence_mask"]).astype(bool)
  valid = _valid(batch, b) & jnp.any(mask, axis=-1)
  t = resolve_tau(outputs, tau=tau, learnable_tau=learnable_tau, tau_key=tau_key,
                  min_tau=min_tau, max_tau=max_tau)

  scores = set_scores(query, sent, mask, chunk_size=chunk_size)
  logits = scores / t
  pair_ok = valid[:, None] & valid[None, :]
  loss, metrics = symmetric_nce(logits, pair_ok, valid,
                                image_to_text_weight=image_to_text_weight)

  # Which query wins each sentence of the positive pair (monitoring only).
  pos_cos = jnp.einsum("bkd,bsd->bsk", l2_normalize(query), l2_normalize(sent),
                       precision=_HIGHEST)
  winner = jax.nn.one_hot(jnp.argmax(pos_cos, axis=-1), query.shape[1], dtype=jnp.float32)
  used = jnp.any((winner * mask[..., None].astype(jnp.float32)) > 0, axis=1)
  metrics.update(tau=t, pos_score=valid_mean(jnp.diagonal(scores), valid),
                 active_queries=valid_mean(jnp.sum(used, axis=-1), valid))
  return loss, jax.lax.stop_gradient(metrics)


def _row_log_softmax(feats: jax.Array, col_ok: jax.Array, tau: float) -> jax.Array:
  """log softmax_row(f f^T / tau) f32[B,N,N] with masked columns at -1e9 (f already unit)."""
  logits = jnp.einsum("bnd,bmd->bnm", feats, feats, precision=_HIGHEST) / tau
  logits = jnp.where(col_ok[:, None, :], logits, NEG_INF)
  return jax.nn.log_softmax(logits, axis=-1)


@OBJECTIVES.register("corr_predict")
def corr_predict(outputs: dict[str, Any], batch: dict[str, Any], *,
                 rng: jax.Array | None = None, tau: float = 0.1, mask_ratio: float = 0.5,
                 rows: str = "all", target: str = "online", pred_key: str = "corr_pred",
                 target_key: str = "corr_target", hidden_key: str = "corr_hidden",
                 patch_mask_key: str = "patch_mask",
                 teacher_key: str = "teacher") -> tuple[jax.Array, Metrics]:
  """CCE: KL between target and predicted patch-correlation rows (METHODS.md §7.2).

  Args:
    outputs: needs `pred_key` f[B,N,D] (predicted patch features) and `target_key` f[B,N,D]
      (stop-gradient is applied here too); optional `hidden_key` bool[B,N] (patches the predictor
      saw as mask tokens) and `patch_mask_key` bool[B,N] (False = padding patch).
    batch: optional 'valid' bool[B].
    rng: unused (the heads draw the patch mask).
    tau: tau_c, the correlation temperature (both target and prediction).
    mask_ratio: the fraction of patches the PLACE heads hide from the predictor. The heads read
      it from this entry of config.method.objectives; the loss itself only validates it.
    rows: 'all' (the §7.2 mean over every valid patch row) or 'hidden' (only hidden rows).
    target: 'online' (`outputs[target_key]`) or 'teacher' (`outputs[teacher_key][target_key]`,
      the EMA image encoder's patch features, §7.2).

  Returns:
    (loss, metrics): kl_hidden, kl_visible (mean KL over hidden / visible rows), target_entropy
    (mean row entropy of the target; log N means collapsed features), hidden_fraction.
  """
  del rng
  if rows not in CORR_ROWS:
    raise ConfigError(f"corr_predict rows={rows!r} is not known; use one of {CORR_ROWS}")
  if not 0.0 <= mask_ratio < 1.0:
    raise ConfigError(f"corr_predict mask_ratio={mask_ratio} must be in [0, 1); PLACE uses 0.5")
  if tau <= 0:
    raise ConfigError(f"corr_predict tau={tau} must be > 0 (tau_c, e.g. 0.1)")
  if target not in TARGETS:
    raise ConfigError(f"corr_predict target={target!r} is not known; use one of {TARGETS}")
  source = (teacher_outputs(outputs, teacher_key, (target_key,), "corr_predict")
            if target == "teacher" else outputs)
  pred = l2_normalize(outputs[pred_key])
  h = jax.lax.stop_gradient(l2_normalize(source[target_key]))
  if pred.shape != h.shape or pred.ndim != 3:
    raise ConfigError(f"corr_predict needs {pred_key!r} and {target_key!r} of one shape "
                      f"[B,N,D]; got {pred.shape} and {h.shape}")
  b, n, _ = pred.shape
  patch_ok = jnp.ones((b, n), bool)
  if patch_mask_key in outputs:
    patch_ok = jnp.asarray(outputs[patch_mask_key]).astype(bool)
  hidden = outputs.get(hidden_key)
  hidden = jnp.zeros((b, n), bool) if hidden is None else jnp.asarray(hidden).astype(bool)
  row_ok = patch_ok & _valid(batch, b)[:, None]

  logp_t = _row_log_softmax(h, patch_ok, tau)
  logp_s = _row_log_softmax(pred, patch_ok, tau)
  p_t = jnp.exp(logp_t)
  kl = jnp.sum(jnp.where(patch_ok[:, None, :], p_t * (logp_t - logp_s), 0.0), axis=-1)  # [B,N]
  entropy = -jnp.sum(jnp.where(patch_ok[:, None, :], p_t * logp_t, 0.0), axis=-1)

  def rmean(x, w):
    w = w.astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)

  weight = row_ok & hidden if rows == "hidden" else row_ok
  loss = rmean(kl, weight)
  metrics = {
      "kl_hidden": rmean(kl, row_ok & hidden), "kl_visible": rmean(kl, row_ok & ~hidden),
      "target_entropy": rmean(entropy, row_ok), "hidden_fraction": rmean(hidden, row_ok),
  }
  return loss, jax.lax.stop_gradient(metrics)



@METHODS.register("place")
class PLACE(Method):
  """PLACE (METHODS.md §7.2): global MLP projections + VPOE queries + CCE predictor.

  Reads config.method.{embed_dim, projection_hidden, projection_norm} and config.method.place.
  {num_queries, decoder_layers, decoder_heads, decoder_mlp_dim, predictor_layers,
  predictor_heads, predictor_mlp_dim}. The VPOE and its projections exist only when 'set_align'
  is among the objectives, the CCE predictor only when 'corr_predict' is (whose mask_ratio it
  reads), so ablations are config edits. Outputs: see the module docstring.
  """

  options = {"place": {            # config.method.place.*; defaults: the paper's ViT-B/16 setup
      "num_queries": 16,           # K pathology-observation queries (VPOE)
      "decoder_layers": 2,         # VPOE query-decoder layers
      "decoder_heads": 12,         # VPOE attention heads
      "decoder_mlp_dim": 3072,     # VPOE MLP width
      "predictor_layers": 2,       # CCE correlation-predictor layers
      "predictor_heads": 12,       # CCE predictor attention heads
      "predictor_mlp_dim": 3072,   # CCE predictor MLP width
  }}

  teacher_towers = ("image",)  # the CCE target needs only the EMA image encoder

  def teacher_heads(self, image, text, batch, *, train, dtype):
    """The EMA image encoder's patch features, the CCE target (§7.2)."""
    del text, batch, train, dtype
    return {"corr_target": image.local.astype(jnp.float32)}

  def apply_heads(self, image, text, batch, *, train, dtype):
    c = self.cfg
    p = c.place
    norm = str(c.projection_norm)

    def proj(name):
      return MLPProjection(hidden=int(c.projection_hidden), out=int(c.embed_dim), norm=norm,
                           dtype=dtype, name=name)

    out: dict[str, Any] = {
        "image_embed": proj("image_projection")(image.global_embedding, train=train),
        "text_embed": proj("text_projection")(text.global_embedding, train=train),
    }
    if objective_options(self.cfg, "set_align") is not None:
      queries, attention = QueryDecoder(
          num_queries=int(p.num_queries), num_layers=int(p.decoder_layers),
          num_heads=int(p.decoder_heads), mlp_dim=int(p.decoder_mlp_dim), dtype=dtype,
          name="query_decoder")(image.local)
      out["query_embed"] = proj("query_projection")(queries, train=train)
      out["query_attention"] = attention
      out["sentence_embed"] = proj("sentence_projection")(text.sentences, train=train)
      mask = jnp.asarray(text.sentence_mask).astype(bool)
      if "sentence_mask" in batch:
        mask = mask & jnp.asarray(batch["sentence_mask"]).astype(bool)
      out["sentence_mask"] = mask
    corr = objective_options(self.cfg, "corr_predict")
    if corr is not None:
      pred, hidden = CorrelationPredictor(
          num_layers=int(p.predictor_layers), num_heads=int(p.predictor_heads),
          mlp_dim=int(p.predictor_mlp_dim), mask_ratio=float(corr["mask_ratio"]),
          dtype=dtype, name="correlation_predictor")(image.local, text.tokens, text.token_mask,
                                                     train=train)
      out["corr_pred"] = pred
      out["corr_target"] = jax.lax.stop_gradient(image.local.astype(jnp.float32))
      out["corr_hidden"] = hidden
    init_tau = self.learnable_tau()
    if init_tau is not None:
      out["log_tau"] = LogTemperature(init_tau, name="temperature")()
    return out
