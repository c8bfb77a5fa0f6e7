"""Global contrastive objectives: `clip_nce` (METHODS.md §1, all-pairs InfoNCE).

$L = 1/|V| sum_{b in V} [lam CE(v_b . u / tau, b) + (1 - lam) CE(u_b . v / tau, b)]$ over the
valid examples V, with cosine similarity and negatives from the other modality. Used by ConVIRT
(tau 0.1, lam 0.75), LoVT, MGCA, GLoRIA-global, ...
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.objectives.registry import OBJECTIVES, Metrics
from mmrl.ops.masking import NEG_INF, l2_normalize  # re-exported for the objectives



def resolve_tau(outputs: dict[str, Any], *, tau: float, learnable_tau: bool,
                tau_key: str = "log_tau", min_tau: float = 0.01,
                max_tau: float = 1.0) -> jax.Array:
  """The temperature: fixed `tau`, or exp(clip(outputs[tau_key], log min_tau, log max_tau))."""
  if not learnable_tau:
    return jnp.asarray(tau, jnp.float32)
  if tau_key not in outputs:
    raise ConfigError(f"learnable_tau=True needs the model output {tau_key!r}; the method's "
                      f"heads provide it (known outputs: {sorted(outputs)})")
  log_tau = jnp.asarray(outputs[tau_key], jnp.float32)
  return jnp.exp(jnp.clip(log_tau, math.log(min_tau), math.log(max_tau)))


def _masked_ce(logits: jax.Array, col_ok: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row CE with the diagonal as target, and whether the argmax is the diagonal."""
  logits = jnp.where(col_ok, logits, NEG_INF)
  diag = jnp.diagonal(logits)
  ce = jax.nn.logsumexp(logits, axis=-1) - diag
  correct = jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0])
  return ce, correct


def valid_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of x over the rows where `valid` is True (0 when none is)."""
  n_valid = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  return jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)) / n_valid


def symmetric_nce(logits: jax.Array, pair_ok: jax.Array, valid: jax.Array, *,
                  image_to_text_weight: float = 0.5) -> tuple[jax.Array, Metrics]:
  """InfoNCE in both directions over a [B, B] logit matrix whose diagonal holds the positives.

  `pair_ok[i, j]`: may j serve as a candidate for i (masked ones get -1e9); `valid[i]`: does row
  i count in the mean. Returns (lam * loss_i2t + (1 - lam) * loss_t2i, per-direction metrics).
  Shared by every objective that turns an all-pairs score into a contrastive loss.
  """
  ce_i2t, ok_i2t = _masked_ce(logits, pair_ok)
  ce_t2i, ok_t2i = _masked_ce(logits.T, pair_ok.T)
  loss_i2t, loss_t2i = valid_mean(ce_i2t, valid), valid_mean(ce_t2i, valid)
  lam = image_to_text_weight
  loss = lam * loss_i2t + (1.0 - lam) * loss_t2i
  return loss, {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i,
                "acc_i2t": valid_mean(ok_i2t, valid), "acc_t2i": valid_mean(ok_t2i, valid)}


@OBJECTIVES.register("clip_nce")
def clip_nce(outputs: dict[str, Any], batch: dict[str, Any], *, rng: jax.Array | None = None,
             tau: float = 0.1, learnable_tau: bool = False, image_to_text_weight: float = 0.5,
             sum_directions: bool = False, image_key: str = "image_embed",
             text_key: str = "text_embed", tau_key: str = "log_tau", min_tau: float = 0.01,
             max_tau: float = 1.0, negatives_group: int = 0,
             same_modality_negatives: bool = False) -> tuple[jax.Array, Metrics]:
  """All-pairs InfoNCE between `outputs[image_key]` and `outputs[text_key]` (METHODS.md §1).

  Args:
    outputs: model outputs; needs [B,d] `image_key`, `text_key` (and `tau_key` if learnable).
    batch: needs nothing; `batch['valid']` (bool[B]) masks padding examples out of rows and
      columns when present.
    rng: unused.
    tau: the fixed temperature (and the learnable one's initial value, used by the heads).
    learnable_tau: read log tau from `outputs[tau_key]`, clipped to [min_tau, max_tau].
    image_to_text_weight: lambda, the weight of the image->text direction (ConVIRT 0.75).
    sum_directions: return the sum 2*(lam L_i2t + (1-lam) L_t2i) (MGCA/GLoRIA's "sum") instead of
      the weighted mean.
    negatives_group: 0 = negatives from the whole (global) batch; G > 0 = only from the same
      block of G consecutive examples (reproduces per-device negatives of the official code when G
      is the per-device batch). Must divide B.
    same_modality_negatives: not supported (no reproduced method uses it).

  Returns:
    (loss, metrics) with metrics loss_i2t, loss_t2i, acc_i2t, acc_t2i, tau, negatives (mean
    number of valid negatives per valid row).
  """
  del rng
  if same_modality_negatives:
    raise ConfigError("clip_nce same_modality_negatives=True is not implemented; set it to False")
  if not 0.0 <= image_to_text_weight <= 1.0:
    raise ConfigError(f"clip_nce image_to_text_weight={image_to_text_weight} must be in [0, 1]")
  img = l2_normalize(outputs[image_key])
  txt = l2_normalize(outputs[text_key])
  b = img.shape[0]
  valid = batch.get("valid") if isinstance(batch, dict) else None
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  t = resolve_tau(outputs, tau=tau, learnable_tau=learnable_tau, tau_key=tau_key,
                  min_tau=min_tau, max_tau=max_tau)

  pair_ok = valid[:, None] & valid[None, :]
  if negatives_group:
    if b % negatives_group:
      raise ConfigError(f"clip_nce negatives_group={negatives_group} does not divide the batch "
                        f"size {b}; use a divisor of {b} or 0 for global negatives")
    group = jnp.arange(b) // negatives_group
    pair_ok = pair_ok & (group[:, None] == group[None, :])

  logits = jnp.einsum("id,jd->ij", img, txt, precision=jax.lax.Precision.HIGHEST) / t
  loss, metrics = symmetric_nce(logits, pair_ok, valid,
                                image_to_text_weight=image_to_text_weight)
  if sum_directions:
    loss = 2.0 * loss
  negatives = valid_mean(jnp.sum(pair_ok, axis=-1) - 1, valid)
  metrics.update(tau=t, negatives=negatives)
  return loss, metrics
