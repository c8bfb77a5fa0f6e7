"""Liao et al. (MICCAI 2021): image-report mutual-information bounds with a learned critic.

METHODS.md §6. The `local_mi` method puts a critic (mmrl/heads/critics.py) on the tower
features and emits the all-pairs critic scores

    outputs['mi_scores'] f32[B_img, B_txt, R]   T(image i at location r, text j)

(R = 1 for the global image vector, R = h*w for the grid). With the concat-MLP critic the B x B
pairs' hidden activations [B,B,R,H] are the memory cost; config.method.critic_chunk = C > 0
evaluates C texts at a time (mmrl.heads.critics.concat_critic_scores: rematerialised lax.map,
O(B * C) memory, same scores and gradients). The `mi_bound` objective turns the
scores into a lower bound on I(image; text) and maximises it. With matched pairs P = {(i, i)}
and negatives N = {(i, j): i != j, both valid, different study (`exclude_same_study`)}:

  dv       I_DV   = mean_P T - log mean_N exp T                              (MINE without the
                                                                              moving average)
  infonce  I_NCE  = mean_i [T_ii - log (1/K_i) sum_{j in {i} + N_i} exp T_ij] (<= log K_i, K_i =
                                                                              1 + |N_i|)
           exact=True: Liao's released `infonce_bound_loss`, mean_P T - log sum_N exp T
                       = I_DV - log |N| (DV's gradients, not InfoNCE; METHODS.md §6.1, §11.5)
  jsd      J      = mean_P -softplus(-T) - mean_N softplus(T)                 (DIM, Hjelm et al.)
           trained on J; its MI read-out is I_NWJ(T + 1), as Poole et al. (2019) do: at the
           optimum T = log p(x,y)/(p(x)p(y)), and NWJ's optimal critic is 1 + that.
  nwj      I_NWJ  = mean_P T - exp(-1) mean_N exp T

Pairs (option `pairs`):
  global            R must be 1: one score matrix.
  local_max         a bound per location r over the batch, loss = -max_r I^r (the paper's
                    "select the local image feature with the highest MI", a batch-level max).
  local_per_sample  m*_i = argmax_r T[i,i,r] per image (no gradient through the choice); row i
                    of the score matrix is T[i, :, m*_i].

Text feature (config.method.text_feature):
  sentence            (default, the paper, §6.2) one random sentence encoded *alone*: the data
                      pipeline's training text view is that sentence only
                      (config.data.sentence_sampling='random_sentence', checked by
                      `LocalMI.check_config`), so the text tower sees no other sentence and the
                      feature is the tower's global embedding ([CLS] with model.text.global_pool=
                      'cls'). Exact (positions start at 0, [CLS]/[SEP] around the sentence, as
                      encoding the sentence by itself) and the cheapest: one text pass, no extra
                      view. (An attention mask restricted to the sentence inside the report would
                      keep the report's position ids and no [CLS] of its own, and cost the full
                      report's attention.)
  sentence_in_report  the previous behaviour: the whole report is encoded and one random valid
                      sentence is max/mean-pooled from its tokens inside the model (other
                      sentences reach it through self-attention).
  global              the report's global feature (the released code's global MI).
A report without a sentence (an empty text view) is not given another feature: the heads emit
'mi_text_ok' bool[B] and `mi_bound` drops those examples from the loss (rows and columns) and
counts them in the metric 'skipped_no_sentence' (per step). Outside training the pipeline feeds
the whole report, so in 'sentence' mode the evaluation-time scores read the report's feature.

All math in float32; masks are a finite -1e9; vectorised over locations (no Python loops).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.heads.critics import CRITICS, make_critic
from mmrl.objectives.methods import METHODS, Method
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import NEG_INF

ESTIMATORS = ("dv", "infonce", "jsd", "nwj")
PAIRS = ("global", "local_max", "local_per_sample")
TEXT_FEATURES = ("sentence", "sentence_in_report", "global")


# ---------------------------------------------------------------------------------------------
# Pure estimator math on a score matrix scores f32[..., B, B] (rows: images, columns: texts).
# pos_ok bool[B]: row i's matched pair counts; neg_ok bool[B, B]: (i, j) is a negative.
# ---------------------------------------------------------------------------------------------


def _masked_mean(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
  mask = jnp.broadcast_to(mask, x.shape)
  n = jnp.sum(mask, axis=axis).astype(jnp.float32)
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis) / jnp.maximum(n, 1.0)


def _masked_logsumexp(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
  """log sum_{mask} exp x; 0 where the mask is empty (finite; the term is then dropped)."""
  mask = jnp.broadcast_to(mask, x.shape)
  lse = jax.nn.logsumexp(jnp.where(mask, x, NEG_INF), axis=axis)
  return jnp.where(jnp.any(mask, axis=axis), lse, 0.0)


def _masked_logmeanexp(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
  mask = jnp.broadcast_to(mask, x.shape)
  n = jnp.sum(mask, axis=axis).astype(jnp.float32)
  return _masked_logsumexp(x, mask, axis) - jnp.log(jnp.maximum(n, 1.0))


def _positive_mean(scores: jax.Array, pos_ok: jax.Array, fn=lambda t: t) -> jax.Array:
  diag = jnp.diagonal(scores, axis1=-2, axis2=-1)
  return _masked_mean(fn(diag), pos_ok, axis=-1)


def dv_bound(scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array) -> jax.Array:
  """Donsker-Varadhan: mean_P T - log mean_N exp T. Shape scores.shape[:-2]."""
  scores = scores.astype(jnp.float32)
  return (_positive_mean(scores, pos_ok)
          - _masked_logmeanexp(scores, neg_ok, axis=(-2, -1)))


def infonce_bound(scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array,
                  exact: bool = False) -> jax.Array:
  """InfoNCE (per-row softmax, positive in the denominator); exact=True: Liao's variant."""
  scores = scores.astype(jnp.float32)
  if exact:  # mean_P T - logsumexp_N T (= DV - log |N|), as `mi_critics.infonce_bound_loss`
    return _positive_mean(scores, pos_ok) - _masked_logsumexp(scores, neg_ok, axis=(-2, -1))
  b = scores.shape[-1]
  candidates = neg_ok | (jnp.eye(b, dtype=bool) & pos_ok[:, None])
  per_row = (jnp.diagonal(scores, axis1=-2, axis2=-1)
             - _masked_logmeanexp(scores, candidates, axis=-1))
  return _masked_mean(per_row, pos_ok, axis=-1)


def jsd_bound(scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array) -> jax.Array:
  """The Jensen-Shannon objective mean_P -softplus(-T) - mean_N softplus(T) (not in nats)."""
  scores = scores.astype(jnp.float32)
  return (_positive_mean(scores, pos_ok, lambda t: -jax.nn.softplus(-t))
          - _masked_mean(jax.nn.softplus(scores), neg_ok, axis=(-2, -1)))


def nwj_bound(scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array) -> jax.Array:
  """Nguyen-Wainwright-Jordan: mean_P T - exp(-1) mean_N exp T."""
  scores = scores.astype(jnp.float32)
  return (_positive_mean(scores, pos_ok)
          - jnp.exp(_masked_logmeanexp(scores, neg_ok, axis=(-2, -1)) - 1.0))


def training_bound(estimator: str, scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array,
                   exact: bool = False) -> jax.Array:
  """The value `estimator` maximises (its loss is minus this)."""
  if estimator == "dv":
    return dv_bound(scores, pos_ok, neg_ok)
  if estimator == "infonce":
    return infonce_bound(scores, pos_ok, neg_ok, exact=exact)
  if estimator == "jsd":
    return jsd_bound(scores, pos_ok, neg_ok)
  if estimator == "nwj":
    return nwj_bound(scores, pos_ok, neg_ok)
  raise ConfigError(f"mi_bound estimator={estimator!r} is not known; use one of {ESTIMATORS}")


def mi_estimates(scores: jax.Array, pos_ok: jax.Array, neg_ok: jax.Array) -> dict[str, jax.Array]:
  """The MI read-out (nats) of each estimator from the same scores: 'dv', 'infonce', 'nwj' and
  'jsd' (= NWJ on T + 1, the JSD-trained critic's read-out, Poole et al. 2019)."""
  return {
      "dv": dv_bound(scores, pos_ok, neg_ok),
      "infonce": infonce_bound(scores, pos_ok, neg_ok),
      "jsd": nwj_bound(scores.astype(jnp.float32) + 1.0, pos_ok, neg_ok),
      "nwj": nwj_bound(scores, pos_ok, neg_ok),
  }


def pair_masks(valid: jax.Array, study_id: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(pos_ok bool[B], neg_ok bool[B,B]): valid rows; i != j, both valid, other study."""
  valid = jnp.asarray(valid).astype(bool)
  b = valid.shape[0]
  neg_ok = valid[:, None] & valid[None, :] & ~jnp.eye(b, dtype=bool)
  if study_id is not None:
    study_id = jnp.asarray(study_id)
    neg_ok = neg_ok & (study_id[:, None] != study_id[None, :])
  return valid, neg_ok


def select_pairs(scores: jax.Array, pairs: str, bound_fn) -> tuple[jax.Array, jax.Array]:
  """The score matrix [B,B] the loss uses, and the selected location(s) (f32 for metrics).

  Args:
    scores: f32[B,B,R].
    pairs: 'global' | 'local_max' | 'local_per_sample'.
    bound_fn: scores [..., B, B] -> bound [...] (for local_max's per-location bound).
  """
  if pairs == "global":
    if scores.shape[-1] != 1:
      raise ConfigError(f"mi_bound pairs='global' needs one score per pair, got {scores.shape[-1]} "
                        "locations; use pairs='local_max' or 'local_per_sample' for grids")
    return scores[..., 0], jnp.zeros((), jnp.float32)
  if pairs == "local_max":
    per_location = bound_fn(jnp.moveaxis(scores, -1, 0))             # [R]
    r = jnp.argmax(per_location)
    return scores[:, :, r], r.astype(jnp.float32)
  if pairs == "local_per_sample":
    diag = jnp.diagonal(jax.lax.stop_gradient(scores), axis1=0, axis2=1)  # [R, B]
    r = jnp.argmax(diag, axis=0)                                     # [B]
    chosen = jnp.take_along_axis(scores, r[:, None, None], axis=-1)[..., 0]  # [B,B]
    return chosen, jnp.mean(r.astype(jnp.float32))
  raise ConfigError(f"mi_bound pairs={pairs!r} is not known; use one of {PAIRS}")


@OBJECTIVES.register("mi_bound")
def mi_bound(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
             estimator: str = "infonce", pairs: str = "local_max",
             exclude_same_study: bool = True, exact: bool = False,
             scores_key: str = "mi_scores", text_ok_key: str = "mi_text_ok"
             ) -> tuple[jax.Array, Metrics]:
  """Minus an MI lower bound over the critic scores `outputs[scores_key]` (module docstring).

  Args:
    outputs: needs `scores_key`, f32[B,B,R] (row: image, column: text, R locations).
    batch: `valid` bool[B] (optional) masks padding rows and columns; `study_id` [B] (needed
      when exclude_same_study) removes same-study pairs from the negatives.
    rng: unused.
    estimator: 'dv' | 'infonce' | 'jsd' | 'nwj'.
    pairs: 'global' | 'local_max' | 'local_per_sample'.
    exclude_same_study: drop negatives whose image and text come from the same study (Liao).
    exact: with estimator='infonce', Liao's released form (= DV - log|N|); the default fixes it.
    scores_key: the outputs key holding the scores.
    text_ok_key: optional outputs key, bool[B]: examples whose text feature exists (a report
      without a sentence has none); the others are dropped from rows and columns and counted.

  Returns:
    (loss, metrics): loss = -bound; metrics 'bound' (the maximised value), 'mi_dv',
    'mi_infonce', 'mi_jsd', 'mi_nwj' (each estimator's MI read-out in nats on the selected
    scores), 'negatives' (mean negatives per valid row), 'location' (selected grid index; mean
    over images for local_per_sample), 'skipped_no_sentence' (valid examples dropped for having
    no text feature in this step).
  """
  del rng
  if estimator not in ESTIMATORS:
    raise ConfigError(f"mi_bound estimator={estimator!r} is not known; use one of {ESTIMATORS}")
  if pairs not in PAIRS:
    raise ConfigError(f"mi_bound pairs={pairs!r} is not known; use one of {PAIRS}")
  if scores_key not in outputs:
    raise ConfigError(f"mi_bound needs the model output {scores_key!r} (the local_mi method's "
                      f"critic scores); known outputs: {sorted(outputs)}")
  scores = jnp.asarray(outputs[scores_key], jnp.float32)
  if scores.ndim != 3 or scores.shape[0] != scores.shape[1]:
    raise ValueError(f"outputs[{scores_key!r}] must be [B,B,R]; got {scores.shape}")
  b = scores.shape[0]
  valid = batch.get("valid") if isinstance(batch, Mapping) else None
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  skipped = jnp.zeros((), jnp.float32)
  if text_ok_key in outputs:
    text_ok = jnp.asarray(outputs[text_ok_key]).astype(bool)
    skipped = jnp.sum(valid & ~text_ok).astype(jnp.float32)
    valid = valid & text_ok
  study_id = None
  if exclude_same_study:
    if "study_id" not in batch:
      raise ConfigError("mi_bound exclude_same_study=True needs batch['study_id'] (the data "
                        "pipeline provides it); pass it or set exclude_same_study=False")
    study_id = batch["study_id"]
  pos_ok, neg_ok = pair_masks(valid, study_id)

  def bound_fn(s):
    return training_bound(estimator, s, pos_ok, neg_ok, exact=exact)

  chosen, location = select_pairs(scores, pairs, bound_fn)
  bound = bound_fn(chosen)
  estimates = jax.lax.stop_gradient(mi_estimates(chosen, pos_ok, neg_ok))
  metrics = {f"mi_{k}": v for k, v in estimates.items()}
  metrics["bound"] = bound
  metrics["negatives"] = _masked_mean(jnp.sum(neg_ok, axis=-1).astype(jnp.float32), pos_ok, -1)
  metrics["location"] = location
  metrics["skipped_no_sentence"] = skipped
  return -bound, metrics


# ---------------------------------------------------------------------------------------------
# The method: a critic on the tower features.
# ---------------------------------------------------------------------------------------------


def select_sentence(sentences: jax.Array, sentence_mask: jax.Array,
                    rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One sentence feature per report [B,D], uniform over the valid sentences (the first valid
  one when rng is None), and ok bool[B]: the report has a sentence (else its row is zeros and
  the objective skips it; no fallback feature)."""
  mask = jnp.asarray(sentence_mask).astype(bool)
  if rng is None:
    idx = jnp.argmax(mask, axis=-1)
  else:
    idx = jax.random.categorical(rng, jnp.where(mask, 0.0, NEG_INF), axis=-1)
  chosen = jnp.take_along_axis(sentences, idx[:, None, None], axis=1)[:, 0]
  ok = jnp.any(mask, axis=-1)
  return jnp.where(ok[:, None], chosen, jnp.zeros_like(chosen)), ok


class SentenceSampler(nn.Module):
  """`select_sentence` with a key from the 'dropout' RNG stream (no params; first sentence when
  the stream is absent)."""

  @nn.compact
  def __call__(self, sentences, sentence_mask):
    rng = self.make_rng("dropout") if self.has_rng("dropout") else None
    return select_sentence(sentences, sentence_mask, rng)


@METHODS.register("local_mi")
class LocalMI(Method):
  """Liao et al. (METHODS.md §6): a critic on (image grid or global) x (sentence or report).

  Reads config.method.{critic, critic_hidden, critic_dim, critic_chunk, text_feature} and the
  `pairs` option
  of its `mi_bound` objective ('global' scores the image global vector, the local pairs score
  every grid cell). text_feature (module docstring): 'sentence' = the tower's global feature of
  the one-sentence text view; 'sentence_in_report' draws one random valid sentence of the
  jointly encoded report every step (the 'dropout' RNG stream; the first sentence without it);
  'global'. Outputs 'mi_scores' f32[B,B,R], 'mi_text_ok' bool[B] (has a text feature) and
  'mi_text_feature' f32[B,D] (the critic's text input).
  """

  options = {
      "critic": "concat_mlp",       # concat_mlp | separable | bilinear
      "critic_hidden": (1024, 512), # concat_mlp widths (separable: g/h hidden widths)
      "critic_dim": 256,            # separable only
      "critic_chunk": 0,            # concat_mlp: texts per chunk of the B x B pairs (0 = all)
      "text_feature": "sentence",   # sentence | sentence_in_report | global
  }

  def check_config(self, config) -> None:
    """text_feature='sentence' needs the one-sentence training text view."""
    text_feature = str(self.cfg.text_feature)
    sampling = str(config.data.get("sentence_sampling", "all"))
    if text_feature == "sentence" and sampling != "random_sentence":
      raise ConfigError(
          f"config.method.text_feature='sentence' encodes one sampled sentence alone, so it "
          f"needs config.data.sentence_sampling='random_sentence' (got {sampling!r}); set it, "
          "or use text_feature='sentence_in_report' (a sentence pooled from the jointly encoded "
          "report) or 'global' (the report feature)")

  def _pairs(self) -> str:
    for name, _, options in self.objectives():
      if name == "mi_bound":
        return str(options["pairs"])
    raise ConfigError("config.method.name='local_mi' needs an objective "
                      "dict(name='mi_bound', ...) in config.method.objectives")

  def apply_heads(self, image, text, batch, *, train, dtype):
    del batch, train
    c = self.cfg
    kind = str(c.critic)
    if kind not in CRITICS:
      raise ConfigError(f"config.method.critic={kind!r} is not known; use one of {CRITICS}")
    text_feature = str(c.text_feature)
    if text_feature not in TEXT_FEATURES:
      raise ConfigError(f"config.method.text_feature={text_feature!r} is not known; use one of "
                        f"{TEXT_FEATURES}")
    pairs = self._pairs()
    if pairs == "global":
      x = image.global_embedding[:, None, :]
    else:
      x = image.local
    if text_feature == "sentence_in_report":
      y, ok = SentenceSampler(name="sentence_sampler")(text.sentences, text.sentence_mask)
    elif text_feature == "sentence":  # the text view is the sentence alone (module docstring)
      y, ok = text.global_embedding, jnp.any(text.sentence_mask, axis=-1)
    else:
      y, ok = text.global_embedding, jnp.ones(text.global_embedding.shape[:1], bool)
    critic = make_critic(kind, hidden=tuple(c.critic_hidden), dim=int(c.critic_dim),
                         dtype=dtype, name="critic", chunk_size=int(c.critic_chunk))
    return {"mi_scores": critic(x, y), "mi_text_ok": ok, "mi_text_feature": y}


__all__ = ["mi_bound", "LocalMI", "SentenceSampler", "dv_bound", "infonce_bound", "jsd_bound",
           "nwj_bound", "mi_estimates", "training_bound", "pair_masks", "select_pairs",
           "select_sentence", "ESTIMATORS", "PAIRS"]
