"""LRCLR (METHODS.md §9.2): region selection, the region loss and zero-shot scoring against
float64 numpy references; masking; straight-through gradients; vectorisation; the tiny and full
configs."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import lrclr as lrclr_config
from mmrl.config_errors import ConfigError
from mmrl.evaluation.evaluators import zero_shot
from mmrl.heads.region_selection import Fusion, RegionSelector, select_top_k
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives.lrclr import LRCLR, sample_hard_negatives
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective
from mmrl import loop
from mmrl.train import state as state_lib


# ----------------------------------------------------------------------------- references


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _lse(xs):
  m = max(xs)
  return m + math.log(sum(math.exp(x - m) for x in xs))


def _side(queries, keys, tau):
  """One intra-sample TCA side with loops: queries/keys are lists of unit float64 vectors."""
  ctx = []
  for q in queries:
    logits = [q @ k / tau for k in keys]
    z = _lse(logits)
    c = sum(math.exp(l - z) * k for l, k in zip(logits, keys))
    ctx.append(c / np.linalg.norm(c))
  n = len(queries)
  sigma = [[queries[i] @ ctx[j] / tau for j in range(n)] for i in range(n)]
  total = 0.0
  for i in range(n):
    rows = _lse(sigma[i]) - sigma[i][i]
    cols = _lse([sigma[j][i] for j in range(n)]) - sigma[i][i]
    total += 0.5 * (rows + cols) / n
  return total


def reference_region_loss(words, wmask, regions, rmask, scores, valid, tau, entropy_weight):
  """tca over the valid selected regions and words + entropy_weight * mean H(softmax rho)."""
  w, r = _unit(words), _unit(regions)
  word_l, patch_l, ents = [], [], []
  for b in range(w.shape[0]):
    if not valid[b]:
      continue
    ws = [w[b, t] for t in range(w.shape[1]) if wmask[b, t]]
    rs = [r[b, k] for k in range(r.shape[1]) if rmask[b, k]]
    s = np.asarray(scores[b], np.float64)
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    ents.append(float(-(p * np.log(p)).sum()))
    if not ws or not rs:
      continue
    word_l.append(_side(ws, rs, tau))
    patch_l.append(_side(rs, ws, tau))
  return float(np.mean(word_l) + np.mean(patch_l) + entropy_weight * np.mean(ents))


def _region_case(b=3, w=5, k=4, r=7, d=6, seed=0):
  rng = np.random.default_rng(seed)
  words = rng.normal(size=(b, w, d)).astype(np.float32)
  regions = rng.normal(size=(b, k, d)).astype(np.float32)
  wmask = rng.random((b, w)) < 0.7
  wmask[:, 0] = True
  rmask = np.ones((b, k), bool)
  rmask[1, -1] = False
  scores = rng.normal(size=(b, r)).astype(np.float32)
  return words, wmask, regions, rmask, scores


def _region_out(words, wmask, regions, rmask, scores):
  return {"text_words_local": words, "word_mask": wmask, "lrclr/region_embed": regions,
          "lrclr/region_mask": rmask, "lrclr/scores": scores}


# ----------------------------------------------------------------------------- region loss


def test_lrclr_region_equals_float64_numpy_reference():
  words, wmask, regions, rmask, scores = _region_case()
  valid = np.array([1, 1, 0], bool)
  loss, m = jax.jit(lambda o, bb: get_objective("lrclr_region")(
      o, bb, rng=None, tau=0.1, entropy_weight=0.3))(
          _region_out(words, wmask, regions, rmask, scores), {"valid": valid})
  ref = reference_region_loss(words, wmask, regions, rmask, scores, valid, 0.1, 0.3)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert float(m["selected_valid"]) == pytest.approx(3.5)


def test_padded_words_and_selected_slots_do_not_change_the_region_loss():
  words, wmask, regions, rmask, scores = _region_case(b=2)
  fn = jax.jit(lambda o: get_objective("lrclr_region")(o, {}, rng=None)[0])
  loss = fn(_region_out(words, wmask, regions, rmask, scores))
  junk = 1e3 * np.random.default_rng(3).normal(size=(2, 2, 6)).astype(np.float32)
  out = _region_out(np.concatenate([words, junk], 1),
                    np.concatenate([wmask, np.zeros((2, 2), bool)], 1),
                    np.concatenate([regions, junk], 1),
                    np.concatenate([rmask, np.zeros((2, 2), bool)], 1), scores)
  np.testing.assert_allclose(fn(out), loss, rtol=1e-6)


def test_lrclr_region_is_vectorised_over_the_batch():
  words, wmask, regions, rmask, scores = _region_case(b=4)
  fn = lambda *a: get_objective("lrclr_region")(_region_out(*a), {}, rng=None)[0]
  jaxpr = str(jax.make_jaxpr(fn)(words, wmask, regions, rmask, scores))
  fn = jax.jit(fn)
  assert "while" not in jaxpr and "scan" not in jaxpr
  singles = [fn(words[i:i + 1], wmask[i:i + 1], regions[i:i + 1], rmask[i:i + 1],
                scores[i:i + 1]) for i in range(4)]
  np.testing.assert_allclose(fn(words, wmask, regions, rmask, scores), np.mean(singles),
                             rtol=1e-5)


def test_bad_options_name_the_key_and_the_fix():
  words, wmask, regions, rmask, scores = _region_case()
  with pytest.raises(ConfigError, match="entropy_weight"):
    get_objective("lrclr_region")(_region_out(words, wmask, regions, rmask, scores), {},
                                  rng=None, entropy_weight=-1.0)
  with pytest.raises(ConfigError, match="top_k"):
    select_top_k(jnp.zeros((1, 3, 2)), jnp.zeros((1, 3)), jnp.ones((1, 3), bool), 4)
  with pytest.raises(ConfigError, match="estimator"):
    select_top_k(jnp.zeros((1, 3, 2)), jnp.zeros((1, 3)), jnp.ones((1, 3), bool), 2,
                 estimator="perturbed")


# ----------------------------------------------------------------------------- selection


def test_selection_picks_the_top_k_of_the_scores_and_never_a_padding_region():
  rng = np.random.default_rng(0)
  b, r, d, k = 4, 9, 3, 3
  regions = rng.normal(size=(b, r, d)).astype(np.float32)
  scores = rng.normal(size=(b, r)).astype(np.float32)
  mask = rng.random((b, r)) < 0.6
  mask[:, :k] = True
  scores[~mask] += 100.0  # padding has the best raw scores: it must still lose
  for estimator in ("straight_through", "hard"):
    sel, sel_mask, idx = jax.jit(lambda *a, e=estimator: select_top_k(*a, k, estimator=e))(
        regions, scores, mask)
    sel, sel_mask, idx = map(np.asarray, (sel, sel_mask, idx))
    for i in range(b):
      valid_idx = [j for j in range(r) if mask[i, j]]
      want = sorted(valid_idx, key=lambda j: -scores[i, j])[:k]
      assert list(idx[i]) == want
      assert sel_mask[i].all() and mask[i, idx[i]].all()
      np.testing.assert_array_equal(sel[i], regions[i, idx[i]])


def test_extra_slots_beyond_the_valid_regions_are_masked_and_zero():
  regions = np.arange(12, dtype=np.float32).reshape(1, 4, 3) + 1.0
  mask = np.array([[True, False, True, False]])
  sel, sel_mask, idx = select_top_k(regions, np.zeros((1, 4)), mask, 3)
  assert list(np.asarray(sel_mask[0])) == [True, True, False]
  assert set(np.asarray(idx[0, :2]).tolist()) == {0, 2}
  assert np.all(np.asarray(sel[0, 2]) == 0)


def test_straight_through_scores_receive_the_soft_top_k_gradient():
  rng = np.random.default_rng(1)
  regions = rng.normal(size=(2, 6, 3)).astype(np.float32)
  scores = rng.normal(size=(2, 6)).astype(np.float32)
  mask = np.ones((2, 6), bool)
  mask[1, 4:] = False
  coef = rng.normal(size=(2, 2, 3)).astype(np.float32)
  f = lambda s, e: jnp.sum(select_top_k(regions, s, mask, 2, estimator=e,
                                        temperature=0.5)[0] * coef)
  grad = np.asarray(jax.grad(f)(scores, "straight_through"), np.float64)
  assert np.all(np.asarray(jax.grad(f)(scores, "hard")) == 0)
  _, _, idx = select_top_k(regions, scores, mask, 2)
  idx = np.asarray(idx)
  # Reference: with the selection fixed, d/drho of sum_k (c_k . p_{idx_k}) softmax(rho/T)_{idx_k}
  # over the valid regions, by float64 central differences.

  def surrogate(s):
    total = 0.0
    for b in range(2):
      v = [j for j in range(6) if mask[b, j]]
      z = np.exp(s[b, v] / 0.5 - np.max(s[b, v] / 0.5))
      p = dict(zip(v, z / z.sum()))
      total += sum(coef[b, k] @ regions[b, idx[b, k]] * p[idx[b, k]] for k in range(2))
    return total
  ref = np.zeros_like(grad)
  s0 = scores.astype(np.float64)
  for b in range(2):
    for j in range(6):
      e = np.zeros_like(s0)
      e[b, j] = 1e-6
      ref[b, j] = (surrogate(s0 + e) - surrogate(s0 - e)) / 2e-6
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
  assert np.all(grad[1, 4:] == 0) and np.any(grad[0] != 0)


def test_text_sim_scores_are_the_max_cosine_over_valid_tokens():
  rng = np.random.default_rng(2)
  regions = rng.normal(size=(2, 5, 4)).astype(np.float32)
  tokens = rng.normal(size=(2, 3, 4)).astype(np.float32)
  tmask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  sel = RegionSelector(top_k=2, scoring="text_sim", hidden=6)
  variables = jax.jit(sel.init)(jax.random.PRNGKey(0), regions, None, tokens, tmask)
  out = jax.jit(sel.apply)(variables, regions, None, tokens, tmask)
  p = variables["params"]
  pr = _unit(regions @ np.asarray(p["region_key"]["kernel"]) + np.asarray(p["region_key"]["bias"]))
  pt = _unit(tokens @ np.asarray(p["token_key"]["kernel"]) + np.asarray(p["token_key"]["bias"]))
  ref = np.array([[max(pr[b, r] @ pt[b, t] for t in range(3) if tmask[b, t]) for r in range(5)]
                  for b in range(2)])
  np.testing.assert_allclose(out["scores"], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.sort(np.asarray(out["indices"]), 1),
                                np.sort(np.argsort(-ref, 1)[:, :2], 1))


# ----------------------------------------------------------------------------- fusion


def test_padding_tokens_and_regions_do_not_change_the_fused_outputs():
  rng = np.random.default_rng(4)
  regions = rng.normal(size=(2, 3, 8)).astype(np.float32)
  tokens = rng.normal(size=(2, 5, 8)).astype(np.float32)
  rmask = np.array([[1, 1, 0], [1, 1, 1]], bool)
  tmask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  fusion = Fusion(num_layers=2, num_heads=2, mlp_dim=16)
  variables = jax.jit(fusion.init)(jax.random.PRNGKey(0), regions, rmask, tokens, tmask)
  apply = jax.jit(lambda r, t: fusion.apply(variables, r, rmask, t, tmask))
  r1, t1, w1 = apply(regions, tokens)
  regions2 = np.where(rmask[..., None], regions, 1e3).astype(np.float32)
  tokens2 = np.where(tmask[..., None], tokens, -1e3).astype(np.float32)
  r2, t2, w2 = apply(regions2, tokens2)
  np.testing.assert_allclose(np.asarray(r1)[rmask], np.asarray(r2)[rmask], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(t1)[tmask], np.asarray(t2)[tmask], rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(w1)[~np.broadcast_to(tmask[:, None, :], w1.shape)] == 0)
  np.testing.assert_allclose(np.asarray(w1).sum(-1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- zero-shot


def test_build_prompts_gives_a_positive_and_a_negative_per_chexpert_label():
  prompts = zero_shot.build_prompts()
  assert len(prompts) == 14
  assert prompts[5] == ("There is edema.", "No edema.")
  assert zero_shot.build_prompts(["Edema"], positive="{finding}", negative="no {finding}") == [
      ("edema", "no edema")]


def test_zero_shot_scores_and_auc_equal_numpy_loops():
  rng = np.random.default_rng(5)
  n, c, d = 7, 3, 4
  img = rng.normal(size=(n, d))
  pos, neg = rng.normal(size=(c, d)), rng.normal(size=(c, d))
  cond = rng.normal(size=(n, c, 2, d))
  got = zero_shot.zero_shot_scores(img, pos, neg, tau=0.1)
  got_cond = zero_shot.zero_shot_scores(cond, pos, neg, tau=0.1)
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  for i in range(n):
    for j in range(c):
      for embed, out in ((lambda: (img[i], img[i]), got), (lambda: tuple(cond[i, j]), got_cond)):
        vp, vn = embed()
        lp, ln = cos(vp, pos[j]) / 0.1, cos(vn, neg[j]) / 0.1
        want = math.exp(lp) / (math.exp(lp) + math.exp(ln))
        assert out[i, j] == pytest.approx(want, rel=1e-9)
  labels = rng.random((n, c)) < 0.5
  labels[0], labels[1] = True, False
  scores = np.round(got, 1)  # ties count one half
  m = zero_shot.zero_shot_auc(scores, labels, findings=["a", "b", "c"])
  for j, name in enumerate("abc"):
    p, q = scores[labels[:, j], j], scores[~labels[:, j], j]
    want = np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x in p for y in q])
    assert m[f"zero_shot/auc/{name}"] == pytest.approx(want)
  assert m["zero_shot/mean_auc"] == pytest.approx(
      np.mean([m[f"zero_shot/auc/{x}"] for x in "abc"]))


# ----------------------------------------------------------------------------- matching (ITM)


def reference_itm(logits, mask, valid):
  """Mean BCE over the counted (row valid, slot unmasked) slots; labels (1, 0, 0). float64."""
  terms = []
  for b in range(logits.shape[0]):
    for k in range(3):
      if valid[b] and mask[b, k]:
        z, y = float(logits[b, k]), 1.0 if k == 0 else 0.0
        p = 1.0 / (1.0 + math.exp(-z))
        terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
  return float(np.mean(terms))


def test_lrclr_itm_equals_numpy_bce_and_masks_slots_and_rows():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 3)).astype(np.float32) * 2
  mask = rng.random((5, 3)) < 0.8
  mask[:, 0] = True
  valid = np.array([1, 1, 0, 1, 1], bool)
  out = {"lrclr/itm_logits": logits, "lrclr/itm_mask": mask}
  loss, m = get_objective("lrclr_itm")(out, {"valid": valid}, rng=None)
  np.testing.assert_allclose(loss, reference_itm(logits, mask, valid), rtol=1e-5)
  # Masked slots and invalid rows change nothing, whatever their logits.
  noisy = np.where(mask & valid[:, None], logits, 1e4).astype(np.float32)
  loss2, _ = get_objective("lrclr_itm")({"lrclr/itm_logits": noisy, "lrclr/itm_mask": mask},
                                        {"valid": valid}, rng=None)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  right = [(logits[b, k] > 0) == (k == 0) for b in range(5) for k in range(3)
           if valid[b] and mask[b, k]]
  assert float(m["acc"]) == pytest.approx(np.mean(right))
  with pytest.raises(ConfigError, match="lrclr_itm needs the model output 'lrclr/itm_logits'"):
    get_objective("lrclr_itm")({}, {}, rng=None)


def test_lrclr_itm_gradient_is_sigmoid_minus_label_over_the_count():
  logits = np.array([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]], np.float32)
  mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
  g = jax.grad(lambda z: get_objective("lrclr_itm")(
      {"lrclr/itm_logits": z, "lrclr/itm_mask": mask}, {}, rng=None)[0])(logits)
  labels = np.array([1.0, 0.0, 0.0])
  want = np.where(mask, (1 / (1 + np.exp(-logits)) - labels) / mask.sum(), 0.0)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_hard_negatives_are_valid_other_study_candidates_and_argmax_without_rng():
  rng = np.random.default_rng(1)
  img = rng.normal(size=(6, 4)).astype(np.float32)
  txt = rng.normal(size=(6, 4)).astype(np.float32)
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  study = np.array([0, 0, 1, 2, 3, 4])
  ok = valid[:, None] & valid[None, :] & ~np.eye(6, dtype=bool) & (study[:, None] != study)
  nt, nt_ok, ni, ni_ok = sample_hard_negatives(img, txt, ok, None, temperature=0.07)
  sim = _unit(img) @ _unit(txt).T
  for i in range(5):
    assert nt_ok[i] and ok[i, nt[i]] and nt[i] == np.argmax(np.where(ok[i], sim[i], -9))
    assert ni_ok[i] and ok[ni[i], i] and ni[i] == np.argmax(np.where(ok[:, i], sim[:, i], -9))
  assert not nt_ok[5] and not ni_ok[5]
  for seed in range(5):
    nt, _, ni, _ = sample_hard_negatives(img, txt, ok, jax.random.key(seed), temperature=1.0)
    assert all(ok[i, nt[i]] and ok[ni[i], i] for i in range(5))


def test_itm_trains_the_fusion_layers_and_zero_shot_embeddings_ignore_the_report():
  config = lrclr_config.get_config("tiny")
  method = LRCLR(config.method.to_json())
  b, r, l, d = 4, 8, 10, 6
  rng = np.random.default_rng(0)
  t2w = np.where(np.arange(l) < 7, np.arange(l) // 2, -1)[None].repeat(b, 0).astype(np.int32)
  batch = {"token_to_word": t2w, "attention_mask": (t2w >= 0).astype(np.int32),
           "valid": np.ones(b, bool), "study_id": np.arange(b, dtype=np.int32)}

  def feats(tokens):
    return (ImageFeatures(global_embedding=np.zeros((b, d), np.float32),
                          local=rng.normal(size=(b, r, d)).astype(np.float32), grid_hw=(2, 4)),
            TextFeatures(global_embedding=tokens[:, 0], tokens=tokens, token_mask=t2w >= 0,
                         sentences=np.zeros((b, 1, d), np.float32),
                         sentence_mask=np.ones((b, 1), bool)))
  image, text = feats(rng.normal(size=(b, l, d)).astype(np.float32))

  class Heads(nn.Module):
    @nn.compact
    def __call__(self, image, text):
      return method.apply_heads(image, text, batch, train=True, dtype=jnp.float32)
  heads = Heads()
  shapes = jax.eval_shape(lambda: heads.init(jax.random.key(0), image, text))
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)

  def loss_fn(p, image, text):
    out = heads.apply(p, image, text, rngs={"dropout": jax.random.key(2)})
    return get_objective("lrclr_itm")(out, batch, rng=None)[0], out
  grads, out = jax.jit(jax.grad(loss_fn, has_aux=True))(params, image, text)
  assert out["lrclr/itm_logits"].shape == (b, 3) and np.asarray(out["lrclr/itm_mask"]).all()
  neg = np.asarray(out["lrclr/itm_negatives"])
  assert np.all(neg != np.arange(b)[:, None])
  fusion = jax.tree_util.tree_leaves_with_path(grads["params"]["fusion"])
  dead = [jax.tree_util.keystr(k) for k, g in fusion if not np.abs(np.asarray(g)).max() > 0]
  assert not dead, f"fusion params without gradient from lrclr_itm: {dead}"
  # The image embedding (zero-shot, retrieval) does not depend on the paired report.
  _, other_text = feats(rng.normal(size=(b, l, d)).astype(np.float32))
  embed = jax.jit(lambda t: heads.apply(params, image, t, rngs={
      "dropout": jax.random.key(2)})["image_embed"])
  np.testing.assert_allclose(embed(other_text), embed(text), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- configs


def test_embed_prompts_runs_the_text_tower_on_one_sentence_prompts():
  from data_pipeline.tokenization import ReportTokenizer  # pylint: disable=g-import-not-at-top
  config = lrclr_config.get_config("tiny")
  model, _ = state_lib.model_and_optimizer(config)
  dummy = state_lib.dummy_batch(config, 2)
  shapes = jax.eval_shape(lambda bb: model.init({"params": jax.random.PRNGKey(0)}, bb,
                                                train=False), dummy)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
  n = 2 * len(zero_shot.CHEXPERT_LABELS)
  image = np.zeros((n,) + dummy["image"].shape[1:], np.float32)
  apply_text = jax.jit(lambda bb: model.apply(variables, {**bb, "image": image},
                                              train=False)["text_embed"])
  pos, neg = zero_shot.embed_prompts(apply_text, ReportTokenizer(), zero_shot.build_prompts(),
                                     max_tokens=config.data.max_tokens,
                                     max_sentences=config.data.max_sentences)
  assert pos.shape == neg.shape == (14, config.method.embed_dim)
  assert np.all(np.isfinite(pos)) and not np.allclose(pos, neg)


def _tiny_outputs(config, b=4):
  model, _ = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config, b)
  rng = np.random.default_rng(0)
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  batch["input_ids"] = rng.integers(0, 100, size=batch["input_ids"].shape).astype(np.int32)
  batch["attention_mask"][:, 40:] = 0
  batch["token_to_word"] = np.where(np.arange(64) < 40, np.arange(64) // 2, -1)[None].repeat(
      b, 0).astype(np.int32)
  shapes = jax.eval_shape(lambda bb: model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, bb, train=False), batch)
  variables = jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
  out = jax.jit(lambda v, bb: model.apply(v, bb, train=True, rngs={
      "dropout": jax.random.PRNGKey(2)}))(variables, batch)
  return out, batch


def test_lrclr_total_loss_is_nce_plus_half_the_region_reference_and_selects_top_scores():
  config = lrclr_config.get_config("tiny")
  out, batch = _tiny_outputs(config)
  loss, m = jax.jit(lambda o, bb: total_loss(o, bb, config, jax.random.PRNGKey(0)))(out, batch)
  img, txt = _unit(out["image_embed"]), _unit(out["text_embed"])
  logits = img @ txt.T / 0.07
  ce = lambda row, t: _lse(list(row)) - row[t]
  nce = np.mean([0.5 * ce(logits[i], i) + 0.5 * ce(logits[:, i], i) for i in range(4)])
  region = reference_region_loss(out["text_words_local"], out["word_mask"],
                                 out["lrclr/region_embed"], out["lrclr/region_mask"],
                                 out["lrclr/scores"], np.ones(4, bool), 0.1, 0.0)
  itm = reference_itm(out["lrclr/itm_logits"], out["lrclr/itm_mask"], np.ones(4, bool))
  np.testing.assert_allclose(loss, nce + 0.5 * region + itm, rtol=1e-4)
  sel, scores = np.asarray(out["lrclr/selected"]), np.asarray(out["lrclr/scores"])
  np.testing.assert_array_equal(np.sort(sel, 1), np.sort(np.argsort(-scores, 1)[:, :4], 1))
  assert np.isfinite(float(m["lrclr_region/loss"]))


def test_tiny_lrclr_config_trains_six_steps_end_to_end(tmp_path, synthetic_cache):
  config = lrclr_config.get_config("tiny")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  config.data.synthetic.workers = 1
  config.train.async_checkpoint = False
  config.eval.retrieval.enabled = False
  last = loop.train_and_evaluate(config, tmp_path / "run")
  print("tiny lrclr last metrics:", {k: float(v) for k, v in last.items()
                                     if np.ndim(v) == 0 and "loss" in k})
  assert np.isfinite(last["loss"]) and np.isfinite(last["lrclr_region/loss"])


def test_full_lrclr_config_builds_abstractly():
  config = lrclr_config.get_config()
  model, tx = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=True, rngs=rngs), variables)
  assert out["lrclr/selected"].shape == (2, 16)
  assert out["lrclr/scores"].shape == (2, 196)
  assert out["lrclr/region_embed"].shape == (2, 16, 128)
  assert out["image_embed"].shape == (2, 128)
  assert out["lrclr/region_text_attention"].shape == (2, 16, 128)
  jax.eval_shape(tx.init, variables["params"])
