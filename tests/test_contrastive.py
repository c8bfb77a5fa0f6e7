"""clip_nce (METHODS.md §1) against a float64 numpy reference; masking; gradients; total_loss."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from mmrl.config_errors import ConfigError
from mmrl.objectives import contrastive  # noqa: F401  (registers clip_nce)
from mmrl.objectives.methods import get_method, total_loss
from mmrl.objectives.registry import OBJECTIVES, get_objective


def reference_nce(img, txt, tau, lam, valid=None):
  """Loops in float64: lam * CE(v_b . u / tau, b) + (1 - lam) * CE(u_b . v / tau, b)."""
  img = np.asarray(img, np.float64)
  txt = np.asarray(txt, np.float64)
  b = img.shape[0]
  valid = np.ones(b, bool) if valid is None else np.asarray(valid)
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  idx = [i for i in range(b) if valid[i]]
  i2t, t2i = [], []
  for i in idx:
    row = [img[i] @ txt[j] / tau for j in idx]
    i2t.append(-row[idx.index(i)] + math.log(sum(math.exp(r) for r in row)))
    col = [txt[i] @ img[j] / tau for j in idx]
    t2i.append(-col[idx.index(i)] + math.log(sum(math.exp(c) for c in col)))
  li, lt = float(np.mean(i2t)), float(np.mean(t2i))
  return lam * li + (1 - lam) * lt, li, lt


def _embeds(b=6, d=5, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32)


def test_clip_nce_equals_float64_numpy_reference():
  img, txt = _embeds()
  loss, m = OBJECTIVES.get("clip_nce")({"image_embed": img, "text_embed": txt}, {},
                                       rng=None, tau=0.1, image_to_text_weight=0.75)
  ref, li, lt = reference_nce(img, txt, 0.1, 0.75)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["loss_i2t"], li, rtol=1e-5)
  np.testing.assert_allclose(m["loss_t2i"], lt, rtol=1e-5)
  assert float(m["negatives"]) == 5.0
  assert float(m["tau"]) == pytest.approx(0.1)


def test_clip_nce_accuracy_is_one_for_identical_embeddings():
  img, _ = _embeds()
  _, m = get_objective("clip_nce")({"image_embed": img, "text_embed": img}, {}, rng=None)
  assert float(m["acc_i2t"]) == 1.0 and float(m["acc_t2i"]) == 1.0


def test_invalid_row_changes_nothing_for_the_others():
  img, txt = _embeds(b=6)
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  out = {"image_embed": img, "text_embed": txt}
  loss, m = get_objective("clip_nce")(out, {"valid": valid}, rng=None, tau=0.1,
                                      image_to_text_weight=0.75)
  keep = valid.nonzero()[0]
  loss_sub, _ = get_objective("clip_nce")(
      {"image_embed": img[keep], "text_embed": txt[keep]}, {}, rng=None, tau=0.1,
      image_to_text_weight=0.75)
  np.testing.assert_allclose(loss, loss_sub, rtol=1e-6)
  np.testing.assert_allclose(loss, reference_nce(img, txt, 0.1, 0.75, valid)[0], rtol=1e-5)
  assert float(m["negatives"]) == 4.0
  # Different values in the invalid row change neither the loss nor the others' gradients.
  def grads(i):
    return jax.grad(lambda i: get_objective("clip_nce")(
        {"image_embed": i, "text_embed": txt}, {"valid": valid}, rng=None)[0])(i)
  img2 = img.copy()
  img2[2] = 1e3
  np.testing.assert_allclose(grads(img2)[keep], grads(img)[keep], rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grads(img2))[2] == 0)


def test_clip_nce_gradients_match_finite_differences():
  img, txt = _embeds(b=3, d=4)

  def f(i, t):
    return get_objective("clip_nce")({"image_embed": i, "text_embed": t},
                                     {"valid": jnp.array([True, True, False])}, rng=None,
                                     tau=0.5, image_to_text_weight=0.75)[0]

  with jax.enable_x64(True):
    check_grads(f, (img.astype(np.float64), txt.astype(np.float64)), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


def test_learnable_tau_is_read_from_outputs_and_clipped():
  img, txt = _embeds()
  out = {"image_embed": img, "text_embed": txt, "log_tau": jnp.log(0.2)}
  loss, m = get_objective("clip_nce")(out, {}, rng=None, learnable_tau=True)
  np.testing.assert_allclose(loss, reference_nce(img, txt, 0.2, 0.5)[0], rtol=1e-5)
  out["log_tau"] = jnp.log(1e-5)
  _, m = get_objective("clip_nce")(out, {}, rng=None, learnable_tau=True, min_tau=0.01)
  assert float(m["tau"]) == pytest.approx(0.01)
  g = jax.grad(lambda lt: get_objective("clip_nce")(
      {"image_embed": img, "text_embed": txt, "log_tau": lt}, {}, rng=None,
      learnable_tau=True)[0])(jnp.log(0.2))
  assert np.isfinite(g) and g != 0


def test_negatives_group_equals_per_block_losses():
  img, txt = _embeds(b=6)
  loss, m = get_objective("clip_nce")({"image_embed": img, "text_embed": txt}, {}, rng=None,
                                      negatives_group=3, image_to_text_weight=0.75)
  a = reference_nce(img[:3], txt[:3], 0.1, 0.75)[0]
  b = reference_nce(img[3:], txt[3:], 0.1, 0.75)[0]
  np.testing.assert_allclose(loss, (a + b) / 2, rtol=1e-5)
  assert float(m["negatives"]) == 2.0


def test_bf16_embeddings_give_a_float32_loss():
  img, txt = _embeds()
  loss, _ = get_objective("clip_nce")({"image_embed": jnp.asarray(img, jnp.bfloat16),
                                       "text_embed": jnp.asarray(txt, jnp.bfloat16)}, {},
                                      rng=None)
  assert loss.dtype == jnp.float32


def test_total_loss_weights_and_namespaces_objectives():
  img, txt = _embeds()
  method = ml_collections.ConfigDict(dict(name="convirt", objectives=[
      dict(name="clip_nce", weight=2.0, tau=0.1, image_to_text_weight=0.75),
      dict(name="clip_nce", weight=0.5, tau=0.2)]))
  loss, m = total_loss({"image_embed": img, "text_embed": txt}, {}, method,
                       jax.random.PRNGKey(0))
  a = reference_nce(img, txt, 0.1, 0.75)[0]
  b = reference_nce(img, txt, 0.2, 0.5)[0]
  np.testing.assert_allclose(loss, 2 * a + 0.5 * b, rtol=1e-5)
  assert {"loss", "clip_nce/loss", "clip_nce/acc_i2t", "clip_nce_1/loss"} <= set(m)


def test_unknown_objective_and_method_list_the_known_names():
  with pytest.raises(ConfigError, match="known: .*clip_nce"):
    total_loss({}, {}, ml_collections.ConfigDict(dict(objectives=[dict(name="clip_nse")])),
               jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="config.method.name='convrt'.*known: .*convirt"):
    get_method(ml_collections.ConfigDict(dict(name="convrt", objectives=[])))
