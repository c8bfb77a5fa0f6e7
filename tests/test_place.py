"""PLACE (METHODS.md §7.2): set_align and corr_predict against float64 numpy references; masking;
gradients; vectorisation; the chunked score; the QueryDecoder; the tiny and full configs."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import place as place_config
from mmrl.config_errors import ConfigError
from mmrl.heads.query_decoder import CorrelationPredictor, QueryDecoder
from mmrl.objectives import place
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective
from mmrl import loop
from mmrl.train import state as state_lib


# ----------------------------------------------------------------------------- references


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ce(row, target):
  return -row[target] + math.log(sum(math.exp(r) for r in row))


def reference_set_align(query, sent, mask, valid, tau, lam):
  """Loops in float64: S[b,c] = mean_{valid s} max_k cos(q_bk, t_cs); NCE over S / tau."""
  q, t = _unit(query), _unit(sent)
  b, k, s = q.shape[0], q.shape[1], t.shape[1]
  scores = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      vals = [max(q[i, kk] @ t[j, ss] for kk in range(k)) for ss in range(s) if mask[j, ss]]
      scores[i, j] = sum(vals) / len(vals) if vals else 0.0
  idx = [i for i in range(b) if valid[i] and mask[i].any()]
  i2t = [_ce([scores[i, j] / tau for j in idx], idx.index(i)) for i in idx]
  t2i = [_ce([scores[j, i] / tau for j in idx], idx.index(i)) for i in idx]
  li, lt = float(np.mean(i2t)), float(np.mean(t2i))
  return lam * li + (1 - lam) * lt, li, lt, scores


def reference_corr_predict(pred, target, tau, patch_mask, hidden, valid, rows="all"):
  """Loops in float64: mean over rows of KL(softmax(t_p . t / tau) || softmax(h_p . h / tau))."""
  p, t = _unit(pred), _unit(target)
  kls = []
  for b in range(p.shape[0]):
    if not valid[b]:
      continue
    cols = [m for m in range(p.shape[1]) if patch_mask[b, m]]
    for r in cols:
      if rows == "hidden" and not hidden[b, r]:
        continue
      lt = np.array([t[b, r] @ t[b, m] / tau for m in cols])
      ls = np.array([p[b, r] @ p[b, m] / tau for m in cols])
      logp = lt - math.log(np.exp(lt).sum())
      logq = ls - math.log(np.exp(ls).sum())
      kls.append(float(np.sum(np.exp(logp) * (logp - logq))))
  return float(np.mean(kls))


def _set_inputs(b=5, k=3, s=4, d=6, seed=0):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(b, k, d)).astype(np.float32)
  sent = rng.normal(size=(b, s, d)).astype(np.float32)
  mask = rng.random((b, s)) < 0.7
  mask[:, 0] = True
  return query, sent, mask


def _corr_inputs(b=3, n=5, d=4, seed=1):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(b, n, d)).astype(np.float32)
  target = rng.normal(size=(b, n, d)).astype(np.float32)
  hidden = rng.random((b, n)) < 0.5
  return pred, target, hidden


def _set_align(query, sent, mask, valid=None, **kw):
  batch = {"sentence_mask": mask} if valid is None else {"sentence_mask": mask, "valid": valid}
  return get_objective("set_align")({"query_embed": query, "sentence_embed": sent}, batch,
                                    rng=None, **kw)


# ----------------------------------------------------------------------------- set_align


def test_set_align_equals_float64_numpy_reference():
  query, sent, mask = _set_inputs()
  mask[3] = False  # a report without sentences leaves rows and columns
  valid = np.array([1, 1, 0, 1, 1], bool)
  loss, m = _set_align(query, sent, mask, valid, tau=0.07, image_to_text_weight=0.75)
  ref, li, lt, scores = reference_set_align(query, sent, mask, valid, 0.07, 0.75)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["loss_i2t"], li, rtol=1e-5)
  np.testing.assert_allclose(m["loss_t2i"], lt, rtol=1e-5)
  np.testing.assert_allclose(place.set_scores(query, sent, mask), scores, rtol=1e-5, atol=1e-6)


def test_padded_sentences_and_examples_do_not_change_set_align():
  query, sent, mask = _set_inputs(b=4, s=3)
  loss, _ = _set_align(query, sent, mask)
  # Two more sentence slots full of junk, masked out, plus a junk example with valid=False.
  rng = np.random.default_rng(5)
  sent_p = np.concatenate([sent, 1e3 * rng.normal(size=(4, 2, 6))], 1).astype(np.float32)
  mask_p = np.concatenate([mask, np.zeros((4, 2), bool)], 1)
  query_p = np.concatenate([query, rng.normal(size=(1, 3, 6))], 0).astype(np.float32)
  sent_p = np.concatenate([sent_p, rng.normal(size=(1, 5, 6))], 0).astype(np.float32)
  mask_p = np.concatenate([mask_p, np.ones((1, 5), bool)], 0)
  valid = np.array([1, 1, 1, 1, 0], bool)
  loss_p, grad = jax.jit(jax.value_and_grad(
      lambda s: _set_align(query_p, s, mask_p, valid)[0]))(sent_p)
  np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
  assert np.all(np.asarray(grad)[:, 3:] == 0) and np.all(np.asarray(grad)[4] == 0)


def test_chunked_set_align_equals_plain_set_align_in_value_and_gradient():
  query, sent, mask = _set_inputs(b=7)

  @jax.jit
  def f_and_grads(q, s):
    out = {}
    for chunk in (0, 2, 3):
      f = lambda q, s, c=chunk: _set_align(q, s, mask, tau=0.1, chunk_size=c)[0]
      out[chunk] = (f(q, s), jax.grad(f, argnums=(0, 1))(q, s))
    return out

  results = f_and_grads(query, sent)
  for chunk in (2, 3):  # 3 does not divide 7: the last block is padded
    np.testing.assert_allclose(place.set_scores(query, sent, mask, chunk_size=chunk),
                               place.set_scores(query, sent, mask), rtol=1e-6, atol=1e-7)
    (loss_chunk, g_chunk), (loss_plain, g_plain) = results[chunk], results[0]
    np.testing.assert_allclose(loss_chunk, loss_plain, rtol=1e-6)
    for a, b in zip(g_chunk, g_plain):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _largest_intermediate(fn, *args) -> int:
  """Elements of the largest array any equation (nested ones included) produces."""
  def walk(jaxpr):
    best = 0
    for eqn in jaxpr.eqns:
      for v in eqn.outvars:
        best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
      for p in eqn.params.values():
        for sub in p if isinstance(p, (list, tuple)) else [p]:
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            best = max(best, walk(getattr(inner, "jaxpr", inner)))
    return best
  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_chunked_set_align_never_holds_the_all_pairs_tensor_forward_or_backward():
  b, k, s, chunk = 16, 3, 4, 2
  query, sent, mask = _set_inputs(b=b, k=k, s=s)

  def grad_fn(chunk_size):
    return jax.grad(lambda q, t: _set_align(q, t, mask, chunk_size=chunk_size)[0],
                    argnums=(0, 1))

  all_pairs = b * b * k * s
  assert _largest_intermediate(grad_fn(0), query, sent) >= all_pairs
  assert _largest_intermediate(grad_fn(chunk), query, sent) <= b * chunk * k * s


def test_set_align_is_vectorised_over_the_batch():
  def n_eqns(fn, b):
    args = _set_inputs(b=b) if fn is _set_align else _corr_inputs(b=b)[:2]
    return len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)

  corr = lambda p, t: get_objective("corr_predict")(
      {"corr_pred": p, "corr_target": t}, {}, rng=None)
  assert n_eqns(_set_align, 2) == n_eqns(_set_align, 9)
  assert n_eqns(corr, 2) == n_eqns(corr, 9)


def test_set_align_gradients_match_finite_differences():
  query, sent, mask = _set_inputs(b=3, k=2, s=3, d=4)

  @jax.jit
  def f(q, s):
    return _set_align(q, s, mask, tau=0.5, image_to_text_weight=0.75)[0]

  with jax.enable_x64(True):
    check_grads(f, (query.astype(np.float64), sent.astype(np.float64)), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


def test_identical_sets_align_perfectly_and_use_every_query():
  # Example i's four observations are the basis vectors e_{4i} .. e_{4i+3}.
  query = np.eye(8, dtype=np.float32).reshape(2, 4, 8)
  _, m = _set_align(query, query, np.ones((2, 4), bool), tau=0.07)
  assert float(m["acc_i2t"]) == 1.0 and float(m["acc_t2i"]) == 1.0
  assert float(m["active_queries"]) == 4.0 and float(m["pos_score"]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- corr_predict


@pytest.mark.parametrize("rows", ["all", "hidden"])
def test_corr_predict_equals_float64_numpy_reference(rows):
  pred, target, hidden = _corr_inputs()
  patch_mask = np.ones(hidden.shape, bool)
  patch_mask[1, -2:] = False
  valid = np.array([1, 1, 0], bool)
  out = {"corr_pred": pred, "corr_target": target, "corr_hidden": hidden,
         "patch_mask": patch_mask}
  loss, m = get_objective("corr_predict")(out, {"valid": valid}, rng=None, tau=0.2, rows=rows)
  ref = reference_corr_predict(pred, target, 0.2, patch_mask, hidden, valid, rows)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  ref_hidden = reference_corr_predict(pred, target, 0.2, patch_mask, hidden, valid, "hidden")
  np.testing.assert_allclose(m["kl_hidden"], ref_hidden, rtol=1e-5)


def test_corr_predict_teacher_target_reads_the_ema_teacher_outputs():
  pred, target, hidden = _corr_inputs()
  online = np.zeros_like(target)  # ignored with target='teacher'
  out = {"corr_pred": pred, "corr_target": online, "corr_hidden": hidden,
         "teacher": {"corr_target": target}}
  loss, _ = get_objective("corr_predict")(out, {}, rng=None, tau=0.2, target="teacher")
  ref = reference_corr_predict(pred, target, 0.2, np.ones(hidden.shape, bool), hidden,
                               np.ones(3, bool))
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  grad = jax.grad(lambda t: get_objective("corr_predict")(
      dict(out, teacher={"corr_target": t}), {}, rng=None, target="teacher")[0])(target)
  assert np.all(np.asarray(grad) == 0)
  with pytest.raises(ConfigError, match="config.train.ema.enabled=True"):
    get_objective("corr_predict")({"corr_pred": pred, "corr_target": online}, {}, rng=None,
                                  target="teacher")


def test_padded_patches_do_not_change_corr_predict():
  pred, target, hidden = _corr_inputs(b=2, n=4)
  base = get_objective("corr_predict")({"corr_pred": pred, "corr_target": target}, {},
                                       rng=None)[0]
  junk = 1e3 * np.ones((2, 3, pred.shape[-1]), np.float32)
  out = {"corr_pred": np.concatenate([pred, junk], 1),
         "corr_target": np.concatenate([target, -junk], 1),
         "patch_mask": np.concatenate([np.ones((2, 4), bool), np.zeros((2, 3), bool)], 1)}
  padded = get_objective("corr_predict")(out, {}, rng=None)[0]
  np.testing.assert_allclose(padded, base, rtol=1e-6)


def test_corr_predict_gradients_match_finite_differences_and_skip_the_target():
  pred, target, _ = _corr_inputs(b=2, n=3, d=3)

  @jax.jit
  def f(p, t):
    return get_objective("corr_predict")({"corr_pred": p, "corr_target": t}, {}, rng=None,
                                         tau=0.5)[0]

  with jax.enable_x64(True):
    check_grads(lambda p: f(p, target.astype(np.float64)), (pred.astype(np.float64),),
                order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  assert np.all(np.asarray(jax.grad(f, argnums=1)(pred, target)) == 0)
  assert float(f(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_bad_options_name_the_key_and_the_fix():
  query, sent, mask = _set_inputs(b=2)
  with pytest.raises(ConfigError, match="aggregate='sinkhorn'.*max_mean"):
    _set_align(query, sent, mask, aggregate="sinkhorn")
  with pytest.raises(ConfigError, match=r"mask_ratio=1.0 must be in \[0, 1\)"):
    get_objective("corr_predict")({"corr_pred": query, "corr_target": query}, {}, rng=None,
                                  mask_ratio=1.0)


# ----------------------------------------------------------------------------- heads


def test_query_decoder_ignores_padded_patches_and_returns_attention_maps():
  rng = np.random.default_rng(0)
  patches = rng.normal(size=(2, 6, 8)).astype(np.float32)
  dec = QueryDecoder(num_queries=3, num_layers=2, num_heads=2, mlp_dim=16)
  params = jax.jit(dec.init)(jax.random.PRNGKey(0), patches)
  apply = jax.jit(dec.apply)
  q, attn = apply(params, patches)
  assert q.shape == (2, 3, 8) and attn.shape == (2, 3, 6)
  np.testing.assert_allclose(np.sum(attn, -1), 1.0, rtol=1e-5)
  padded = np.concatenate([patches, 1e3 * rng.normal(size=(2, 4, 8))], 1).astype(np.float32)
  pmask = np.concatenate([np.ones((2, 6), bool), np.zeros((2, 4), bool)], 1)
  q_p, attn_p = apply(params, padded, pmask)
  np.testing.assert_allclose(q_p, q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(attn_p[..., :6], attn, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(attn_p[..., 6:]) == 0)


def test_correlation_predictor_hides_mask_ratio_of_patches_only_in_training():
  rng = np.random.default_rng(0)
  patches = rng.normal(size=(3, 8, 8)).astype(np.float32)
  tokens = rng.normal(size=(3, 5, 4)).astype(np.float32)
  tmask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  pred_mod = CorrelationPredictor(num_layers=1, num_heads=2, mlp_dim=16, mask_ratio=0.25)
  params = jax.jit(lambda p, t, m: pred_mod.init({"params": jax.random.PRNGKey(0)}, p, t, m,
                                                 train=False))(patches, tokens, tmask)
  apply = jax.jit(pred_mod.apply, static_argnames="train")
  pred, hidden = apply(params, patches, tokens, tmask, train=True,
                       rngs={"dropout": jax.random.PRNGKey(1)})
  assert pred.shape == patches.shape
  np.testing.assert_array_equal(np.sum(hidden, -1), [2, 2, 2])
  a, hidden_eval = apply(params, patches, tokens, tmask, train=False)
  assert not np.any(hidden_eval)
  # Padded report tokens change nothing.
  tokens2 = tokens.copy()
  tokens2[~tmask] = 1e3
  b = apply(params, patches, tokens2, tmask, train=False)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- configs


def test_place_total_loss_is_the_sum_of_the_three_references():
  config = place_config.get_config("tiny")
  model, _ = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config, 4)
  rng = np.random.default_rng(0)
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  batch["input_ids"] = rng.integers(0, 100, size=batch["input_ids"].shape).astype(np.int32)
  batch["token_to_sentence"] = np.repeat(np.arange(4), 16)[None].repeat(4, 0).astype(np.int32)
  batch["sentence_mask"][:, 4:] = False
  # Random values in the init's shapes: cheaper than compiling the initialisers.
  shapes = jax.eval_shape(lambda b: model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, b, train=False), batch)
  variables = jax.tree.map(
      lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
  out = jax.jit(lambda v, b: model.apply(v, b, train=True, rngs={
      "dropout": jax.random.PRNGKey(2)}))(variables, batch)
  assert out["query_attention"].shape == (4, 4, 16)
  # The teacher forward (here with the online variables) runs the image tower only.
  teacher = jax.jit(lambda v, b: model.apply(v, b, train=True, teacher=True))(variables, batch)
  assert set(teacher) == {"corr_target"}
  np.testing.assert_allclose(teacher["corr_target"], out["corr_target"], rtol=1e-5, atol=1e-6)
  t_target = np.asarray(out["corr_target"])[::-1]  # a teacher that differs from the online one
  out = dict(out, teacher={"corr_target": t_target})
  loss, m = jax.jit(lambda o, b: total_loss(o, b, config, jax.random.PRNGKey(0)))(out, batch)
  valid = np.ones(4, bool)
  img, txt = _unit(out["image_embed"]), _unit(out["text_embed"])
  logits = img @ txt.T / 0.07
  nce = np.mean([0.5 * _ce(logits[i], i) + 0.5 * _ce(logits[:, i], i) for i in range(4)])
  pcma = reference_set_align(out["query_embed"], out["sentence_embed"], out["sentence_mask"],
                             valid, 0.07, 0.5)[0]
  cce = reference_corr_predict(out["corr_pred"], t_target, 0.1,
                               np.ones((4, 16), bool), out["corr_hidden"], valid)
  np.testing.assert_allclose(loss, nce + pcma + cce, rtol=1e-4)
  assert float(m["corr_predict/hidden_fraction"]) == 0.5


def test_tiny_place_config_trains_six_steps_end_to_end(tmp_path, synthetic_cache):
  config = place_config.get_config("tiny")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  config.data.synthetic.workers = 1
  last = loop.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(last["loss"])
  assert np.isfinite(last["set_align/loss"]) and np.isfinite(last["corr_predict/loss"])
  assert last["ema_decay"] == pytest.approx(0.996)  # the CCE target's EMA encoder is updated
  assert "retrieval/i2t_R@1" in last


def test_full_place_config_builds_abstractly():
  config = place_config.get_config()
  model, tx = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=True, rngs=rngs), variables)
  assert out["query_attention"].shape == (2, 16, 196)
  assert out["query_embed"].shape == (2, 16, 128)
  assert out["corr_pred"].shape == (2, 196, 768)
  jax.eval_shape(tx.init, variables["params"])
