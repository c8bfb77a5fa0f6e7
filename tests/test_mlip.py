"""MLIP (METHODS.md §8.2): soft_clip_nce (online and EMA-teacher targets), ITM (hard negatives,
text swap) and the knowledge attention against float64 numpy references; masking; gradients;
vectorisation; the knowledge file; the tiny and full configs."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import mlip as mlip_config
from mmrl import knowledge as knowledge_lib
from mmrl.config_errors import ConfigError
from mmrl.heads.mlip_heads import (ImageTextMatching, KnowledgeAttention, sample_negatives,
                                   swap_sentences)
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective
from mmrl import loop
from mmrl.train.optimizer import make_optimizer
from mmrl.train import state as state_lib
from test_mgca import reference_proto, reference_tca  # float64 loop references of tca / CPA

# ----------------------------------------------------------------------------- references


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_soft_itc(img, txt, valid, tau, alpha, t_img=None, t_txt=None):
  """Loops in float64 over valid rows and columns (module docstring of mmrl.objectives.mlip)."""
  v, u = _unit(img), _unit(txt)
  tv = v if t_img is None else _unit(t_img)
  tu = u if t_txt is None else _unit(t_txt)
  idx = [i for i in range(len(v)) if valid[i]]

  def direction(a, b, ta, tb):
    total = 0.0
    for i in idx:
      s = [a[i] @ b[j] / tau for j in idx]
      st = [ta[i] @ tb[j] / tau for j in idx]
      lse = math.log(sum(math.exp(x) for x in s))
      zt = sum(math.exp(x) for x in st)
      for n, j in enumerate(idx):
        y = alpha * math.exp(st[n]) / zt + (1 - alpha) * (i == j)
        total += -y * (s[n] - lse)
    return total / len(idx)

  return 0.5 * (direction(v, u, tv, tu) + direction(u, v, tu, tv))


def reference_knowledge_attention(words, knowledge, params, heads):
  """w + W_o concat_h softmax_k(q_h k_h / sqrt(dh)) v_h, float64 loops over b, w, h."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  b, nw, d = words.shape
  dh = d // heads
  q = np.einsum("bwd,dhe->bwhe", words, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("kd,dhe->khe", knowledge, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("kd,dhe->khe", knowledge, p["value"]["kernel"]) + p["value"]["bias"]
  out = np.zeros((b, nw, d))
  att_mean = np.zeros((b, nw, knowledge.shape[0]))
  for i in range(b):
    for t in range(nw):
      ctx = np.zeros((heads, dh))
      for h in range(heads):
        logits = np.array([q[i, t, h] @ k[c, h] / math.sqrt(dh) for c in range(len(k))])
        a = np.exp(logits - logits.max())
        a /= a.sum()
        att_mean[i, t] += a / heads
        ctx[h] = a @ v[:, h]
      out[i, t] = words[i, t] + np.einsum("he,hed->d", ctx, p["out"]["kernel"]) + p["out"]["bias"]
  return out, att_mean


def _itc_case(b=5, d=4, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(b, d)).astype(np.float32) for _ in range(4)]


def _soft(img, txt, valid=None, t_img=None, t_txt=None, **kw):
  out = {"image_embed": img, "text_embed": txt}
  if t_img is not None:
    out["teacher"] = {"image_embed": t_img, "text_embed": t_txt}
    kw.setdefault("target", "teacher")
  batch = {} if valid is None else {"valid": jnp.asarray(valid)}
  return get_objective("soft_clip_nce")(out, batch, rng=None, **kw)


# ----------------------------------------------------------------------------- soft_clip_nce


@pytest.mark.parametrize("teacher", [False, True])
def test_soft_clip_nce_equals_float64_numpy_reference(teacher):
  img, txt, t_img, t_txt = _itc_case()
  valid = np.array([True, True, False, True, True])
  kw = dict(t_img=t_img, t_txt=t_txt) if teacher else {}
  loss, m = _soft(img, txt, valid, tau=0.1, alpha=0.4, **kw)
  ref = reference_soft_itc(img, txt, valid, 0.1, 0.4, **kw)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert float(m["target_source"]) == float(teacher)


def test_soft_clip_nce_with_alpha_zero_is_the_symmetric_clip_nce():
  img, txt, _, _ = _itc_case()
  soft, _ = _soft(img, txt, tau=0.07, alpha=0.0)
  hard, _ = get_objective("clip_nce")({"image_embed": img, "text_embed": txt}, {}, rng=None,
                                      tau=0.07, image_to_text_weight=0.5)
  np.testing.assert_allclose(float(soft), float(hard), rtol=1e-5)


def test_padded_examples_do_not_change_soft_clip_nce():
  img, txt, t_img, t_txt = _itc_case(b=4)
  base, _ = _soft(img, txt, t_img=t_img, t_txt=t_txt, tau=0.1, alpha=0.4)
  pad = lambda x: np.concatenate([x, 50.0 * np.ones((2, x.shape[1]), np.float32)])
  padded, _ = _soft(pad(img), pad(txt), np.array([True] * 4 + [False] * 2), pad(t_img),
                    pad(t_txt), tau=0.1, alpha=0.4)
  np.testing.assert_allclose(float(padded), float(base), rtol=1e-6)


def test_soft_clip_nce_gradients_match_finite_differences_and_skip_the_targets():
  img, txt, t_img, t_txt = (x.astype(np.float64) for x in _itc_case(b=3, d=3))
  with jax.enable_x64():  # the loss itself runs in float32 (l2_normalize): loose tolerance
    fn = jax.jit(lambda a, b: _soft(a, b, t_img=t_img, t_txt=t_txt, tau=0.5, alpha=0.4)[0])
    check_grads(fn, (img, txt), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    g = jax.grad(lambda ti: _soft(img, txt, t_img=ti, t_txt=t_txt, tau=0.2)[0])(t_img)
    assert np.all(np.asarray(g) == 0)


def test_soft_clip_nce_is_vectorised_over_the_batch():
  def n_eqns(b):
    img, txt, _, _ = _itc_case(b=b)
    return len(jax.make_jaxpr(lambda a, c: _soft(a, c)[0])(img, txt).jaxpr.eqns)
  assert n_eqns(2) == n_eqns(9)


def test_bad_soft_clip_nce_options_name_the_key():
  img, txt, _, _ = _itc_case()
  with pytest.raises(ConfigError, match="alpha=1.5"):
    _soft(img, txt, alpha=1.5)
  with pytest.raises(ConfigError, match="config.train.ema.enabled=True"):
    _soft(img, txt, target="teacher")
  with pytest.raises(ConfigError, match="target='ema'"):
    _soft(img, txt, target="ema")


# ----------------------------------------------------------------------------- itm


def reference_itm(logits, labels, mask, valid):
  """float64 loop: mean BCE over the existing pairs of valid rows."""
  terms = []
  for b in range(logits.shape[0]):
    for p in range(logits.shape[1]):
      if mask[b, p] and valid[b]:
        prob = 1.0 / (1.0 + math.exp(-float(logits[b, p])))
        terms.append(-(labels[b, p] * math.log(prob) + (1 - labels[b, p]) * math.log(1 - prob)))
  return sum(terms) / len(terms)


def _itm_case(b=4, p=4, seed=0):
  rng = np.random.default_rng(seed)
  logits = (3 * rng.normal(size=(b, p))).astype(np.float32)
  labels = np.zeros((b, p), np.float32)
  labels[:, 0] = 1
  mask = rng.random((b, p)) < 0.8
  mask[:, 0] = True
  return logits, labels, mask


def _itm(logits, labels, mask, valid=None, **kw):
  batch = {} if valid is None else {"valid": valid}
  return get_objective("itm")({"itm_logits": logits, "itm_labels": labels,
                               "itm_pair_mask": mask}, batch, rng=None, **kw)


def test_itm_equals_float64_numpy_reference():
  logits, labels, mask = _itm_case()
  valid = np.array([1, 1, 0, 1], bool)
  loss, m = _itm(logits, labels, mask, valid)
  np.testing.assert_allclose(float(loss), reference_itm(logits, labels, mask, valid), rtol=1e-5)
  ok = mask & valid[:, None]
  np.testing.assert_allclose(float(m["acc"]), np.mean(((logits > 0) == (labels > 0.5))[ok]),
                             rtol=1e-6)


def test_padded_pairs_and_examples_do_not_change_itm():
  logits, labels, mask = _itm_case(b=3)
  base, _ = _itm(logits, labels, mask)
  junk = np.where(mask, logits, 1e4).astype(np.float32)          # masked pairs: huge logits
  more = np.concatenate([junk, -1e4 * np.ones((2, 4), np.float32)])  # two invalid examples
  padded, grad = jax.value_and_grad(lambda z: _itm(
      z, np.concatenate([labels, np.ones((2, 4), np.float32)]),
      np.concatenate([mask, np.ones((2, 4), bool)]), np.array([1, 1, 1, 0, 0], bool))[0])(more)
  np.testing.assert_allclose(float(padded), float(base), rtol=1e-6)
  assert np.all(np.asarray(grad)[3:] == 0) and np.all(np.asarray(grad)[:3][~mask] == 0)


def test_itm_gradients_match_finite_differences():
  logits, labels, mask = _itm_case(b=3, p=3)
  with jax.enable_x64():
    check_grads(lambda z: _itm(z, labels, mask)[0], (logits.astype(np.float64),), order=1,
                modes=("rev",), atol=1e-3, rtol=1e-3)


def test_hard_negatives_follow_the_softmax_and_never_pick_self_or_padding():
  rng = np.random.default_rng(0)
  sim = rng.normal(size=(5, 5)).astype(np.float32)
  valid = np.array([1, 1, 1, 0, 1], bool)
  idx, ok = sample_negatives(sim, valid, None, tau=0.5)  # deterministic: the hardest
  cand = valid[None] & valid[:, None] & ~np.eye(5, dtype=bool)
  np.testing.assert_array_equal(idx, np.argmax(np.where(cand, sim, -np.inf), -1))
  np.testing.assert_array_equal(ok, valid)
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_negatives(sim, valid, k, tau=0.5)[0]))(
      keys))
  for i in np.flatnonzero(valid):
    expect = np.where(cand[i], np.exp(sim[i] / 0.5), 0.0)
    freq = np.bincount(draws[:, i], minlength=5) / len(keys)
    np.testing.assert_allclose(freq, expect / expect.sum(), atol=0.03)
  lonely, ok1 = sample_negatives(sim[:2, :2], np.array([1, 0], bool), None)
  assert not np.any(ok1)


def reference_swap(ids, att, t2s, donor, k_own, k_don, length):
  """Python lists: drop sentence k_own of i, append sentence k_don of the donor before [SEP]."""
  out = []
  for i in range(len(ids)):
    n = int(att[i].sum())
    kept = [(ids[i][t], t2s[i][t]) for t in range(n - 1) if t2s[i][t] != k_own[i]]
    d = donor[i]
    given = [(ids[d][t], k_own[i]) for t in range(length) if att[d][t] and t2s[d][t] == k_don[i]]
    seq = (kept + given)[:length - 1] + [(ids[i][n - 1], -1)]
    out.append(seq)
  return out


def test_text_swap_replaces_one_sentence_with_a_donor_sentence():
  length, s = 12, 3
  ids = np.zeros((3, length), np.int32)
  att = np.zeros((3, length), np.int32)
  t2s = np.full((3, length), -1, np.int32)
  rows = [[1, 10, 11, 12, 20, 21, 2], [1, 30, 31, 40, 41, 42, 43, 44, 45, 2],
          [1, 50, 51, 52, 53, 54, 55, 56, 57, 58, 2]]
  sents = [[-1, 0, 0, 0, 1, 1, -1], [-1, 1, 1, 2, 2, 2, 2, 2, 2, -1],
           [-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1]]
  for i, (r, ss) in enumerate(zip(rows, sents)):
    ids[i, :len(r)], att[i, :len(r)], t2s[i, :len(r)] = r, 1, ss
  donor = np.array([1, 2, 0], np.int32)
  out, ok = jax.jit(lambda *a: swap_sentences(*a, s, None))(ids, att, t2s, donor)
  assert np.all(np.asarray(ok))
  # rng=None: each report loses its first sentence and gets the donor's first sentence.
  ref = reference_swap(ids, att, t2s, donor, [0, 1, 0], [1, 0, 0], length)
  for i, seq in enumerate(ref):
    n = len(seq)
    np.testing.assert_array_equal(np.asarray(out["input_ids"])[i, :n], [a for a, _ in seq])
    np.testing.assert_array_equal(np.asarray(out["token_to_sentence"])[i, :n],
                                  [b for _, b in seq])
    assert np.asarray(out["attention_mask"])[i].sum() == n
    assert np.all(np.asarray(out["input_ids"])[i, n:] == 0)
  assert len(ref[1]) == length  # report 1 + 9 donated tokens overflow: truncated, [SEP] kept
  # A random swap keeps the shape contract: [SEP] last, one donated sentence.
  out_r, _ = swap_sentences(ids, att, t2s, donor, s, jax.random.PRNGKey(3))
  for i in range(3):
    n = int(np.asarray(out_r["attention_mask"])[i].sum())
    row = np.asarray(out_r["input_ids"])[i]
    assert row[n - 1] == 2 and row[0] == 1


def test_itm_head_ignores_padded_tokens_and_scores_every_pair():
  rng = np.random.default_rng(1)
  patches = rng.normal(size=(3, 4, 6)).astype(np.float32)
  tokens = rng.normal(size=(3, 5, 8)).astype(np.float32)
  tmask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
  image_index = np.array([[0, 0, 2], [1, 1, 0], [2, 2, 1]], np.int32)
  text_index = np.array([[0, 1, 0], [1, 2, 1], [2, 0, 2]], np.int32)
  head = ImageTextMatching(width=8, num_layers=2, num_heads=2, mlp_dim=16)
  params = jax.jit(head.init)(jax.random.PRNGKey(0), patches, tokens, tmask, image_index,
                              text_index)
  apply = jax.jit(head.apply)
  logits = apply(params, patches, tokens, tmask, image_index, text_index)
  assert logits.shape == (3, 3) and logits.dtype == np.float32
  junk = np.where(tmask[..., None], tokens, 1e3).astype(np.float32)
  np.testing.assert_allclose(apply(params, patches, junk, tmask, image_index, text_index),
                             logits, rtol=1e-5, atol=1e-5)
  # A pair depends only on its own image and text: (image 2, text 0) sits at (0, 2) and (2, 1).
  np.testing.assert_allclose(logits[0, 2], logits[2, 1], rtol=1e-6)
  assert not np.isclose(logits[0, 2], logits[0, 0])


# ----------------------------------------------------------------------------- knowledge


def test_knowledge_attention_equals_float64_numpy_reference_and_is_vectorised():
  rng = np.random.default_rng(3)
  words = rng.normal(size=(2, 3, 4)).astype(np.float32)
  know = rng.normal(size=(5, 4)).astype(np.float32)
  mod = KnowledgeAttention(num_heads=2)
  params = mod.init(jax.random.PRNGKey(0), words, know)["params"]
  params = jax.tree.map(lambda x: x + 0.1 * jnp.ones_like(x), params)  # non-zero biases
  out, att = mod.apply({"params": params}, words, know)
  ref_out, ref_att = reference_knowledge_attention(words.astype(np.float64),
                                                   know.astype(np.float64), params, 2)
  np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(att), ref_att, rtol=1e-4, atol=1e-6)
  n = lambda b: len(jax.make_jaxpr(lambda w: mod.apply({"params": params}, w, know))(
      np.zeros((b, 3, 4), np.float32)).jaxpr.eqns)
  assert n(1) == n(7)


def test_shipped_knowledge_file_has_the_fourteen_chexpert_findings():
  findings = knowledge_lib.load_knowledge()
  assert len(findings) >= 14
  assert all(1 <= len(f.descriptions) <= 3 for f in findings)
  assert {"Pleural Effusion", "Cardiomegaly", "No Finding"} <= {f.chexpert_label for f in findings}
  tokens = knowledge_lib.knowledge_tokens("", "", 64)
  assert tokens["input_ids"].shape == (len(findings) * tokens["description_mask"].shape[1], 64)


def test_bad_knowledge_file_gives_an_error_naming_the_file_and_key(tmp_path):
  missing = tmp_path / "missing.json"
  with pytest.raises(knowledge_lib.KnowledgeError, match="missing.json"):
    knowledge_lib.load_knowledge(missing)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"findings": [{"name": "Edema", "descriptions": ["fluid"]}]}))
  with pytest.raises(knowledge_lib.KnowledgeError, match=r"bad.json.*findings\[0\].chexpert_label"):
    knowledge_lib.load_knowledge(bad)
  config = mlip_config.get_config("tiny")
  config.method.knowledge_path = str(bad)
  model, _ = state_lib.model_and_optimizer(config)
  with pytest.raises(ConfigError, match="knowledge_path.*bad.json"):
    jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                      state_lib.dummy_batch(config), train=False))


# ----------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def tiny_outputs():
  """(config, model, variables, batch, outputs) of the tiny config on a 4-example batch."""
  b = 4
  config = mlip_config.get_config("tiny")
  model, _ = state_lib.model_and_optimizer(config)
  rng = np.random.default_rng(0)
  batch = dict(state_lib.dummy_batch(config))
  batch = {k: np.asarray(v) for k, v in batch.items()}
  batch = {k: np.repeat(v[:1], b, axis=0) if v.ndim and v.shape[0] == 2 else v
           for k, v in batch.items()}
  l = batch["input_ids"].shape[1]
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  batch["input_ids"] = rng.integers(1000, 2000, size=(b, l)).astype(np.int32)
  batch["attention_mask"] = (np.arange(l)[None] < np.array([[9], [12], [7], [10]])).astype(
      np.int32)
  batch["token_to_word"] = np.where(batch["attention_mask"] > 0, np.arange(l)[None] // 2,
                                    -1).astype(np.int32)
  batch["token_to_sentence"] = np.where(batch["attention_mask"] > 0, 0, -1).astype(np.int32)
  variables = jax.jit(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x,
                                          train=False))(batch)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch)
  return config, model, variables, batch, out


def test_knowledge_prototypes_are_the_text_tower_on_the_descriptions(tiny_outputs):
  config, model, variables, _, out = tiny_outputs
  tok = knowledge_lib.knowledge_tokens("", "", 64)
  feats = jax.jit(lambda p, t: model.text_tower.apply(
      {"params": p}, t["input_ids"], t["attention_mask"], t["token_to_sentence"],
      num_sentences=1, train=False))(variables["params"]["text_tower"], tok)
  k, d = tok["description_mask"].shape
  mean = np.asarray(feats.global_embedding).reshape(k, d, -1).mean(axis=1)  # all rows valid
  from mmrl.heads.projection import MLPProjection  # pylint: disable=g-import-not-at-top
  proj = MLPProjection(hidden=int(config.method.projection_hidden),
                       out=int(config.method.embed_dim), norm="none").apply(
                           {"params": variables["params"]["knowledge_projection"]}, mean)
  np.testing.assert_allclose(np.asarray(out["knowledge_prototypes"]), _unit(proj), atol=1e-5)
  assert out["word_knowledge_attention"].shape == (4, 32, k)


def test_mlip_teacher_forward_is_the_towers_and_global_projections_only(tiny_outputs):
  _, model, variables, batch, out = tiny_outputs
  teacher = jax.jit(lambda v, x: model.apply(v, x, train=False, teacher=True))(variables, batch)
  assert set(teacher) == {"image_embed", "text_embed"}  # no knowledge, TKP or ITM work
  np.testing.assert_allclose(teacher["image_embed"], out["image_embed"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(teacher["text_embed"], out["text_embed"], rtol=1e-5, atol=1e-6)


def test_mlip_total_loss_is_the_sum_of_the_four_references(tiny_outputs):
  config, _, _, batch, out = tiny_outputs
  # A teacher that differs from the online model (as after some EMA steps).
  t_img, t_txt = np.asarray(out["image_embed"])[::-1], np.asarray(out["text_embed"])[::-1]
  out = dict(out, teacher={"image_embed": t_img, "text_embed": t_txt})
  loss, m = jax.jit(lambda o, x: total_loss(o, x, config, jax.random.PRNGKey(0)))(out, batch)
  itc = reference_soft_itc(out["image_embed"], out["text_embed"], np.ones(4, bool), 0.07, 0.4,
                           t_img, t_txt)
  wmask = np.asarray(out["word_mask"])
  assert wmask.sum(1).tolist() == [5, 6, 4, 5]  # 27 of the 32 word slots are padding
  lw, lp = reference_tca(np.asarray(out["text_words_knowledge"]), wmask,
                         np.asarray(out["image_regions_local"]),
                         np.asarray(out["region_mask"]), 0.1)
  proto, _, _ = reference_proto(out["image_embed"], out["text_embed"],
                                out["knowledge_prototypes"], 0.2, 0.05, 3)
  assert out["itm_logits"].shape == (4, 4)  # positive, hard text, hard image, text swap
  itm = reference_itm(np.asarray(out["itm_logits"]), np.asarray(out["itm_labels"]),
                      np.asarray(out["itm_pair_mask"]), np.ones(4, bool))
  np.testing.assert_allclose(float(m["soft_clip_nce/loss"]), itc, rtol=1e-4)
  assert float(m["soft_clip_nce/target_source"]) == 1.0
  np.testing.assert_allclose(float(m["tca/loss"]), lw + lp, rtol=1e-4)
  np.testing.assert_allclose(float(m["proto_swap/loss"]), proto, rtol=1e-4)
  np.testing.assert_allclose(float(m["itm/loss"]), itm, rtol=1e-4)
  np.testing.assert_allclose(float(loss), itc + lw + lp + proto + itm, rtol=1e-4)


def test_mlip_temperature_is_a_learned_parameter_that_gets_a_gradient_and_moves(tiny_outputs):
  """§8.2: learnable tau initialised at 0.07 (log-parametrised, clipped to [0.01, 1] as CLIP).
  The tiny end-to-end run below checks that training moves it."""
  config, model, variables, batch, out = tiny_outputs
  del model
  params = variables["params"]
  assert float(jnp.exp(params["temperature"]["log_tau"])) == pytest.approx(0.07)
  np.testing.assert_allclose(out["log_tau"], params["temperature"]["log_tau"])
  teacher = {"image_embed": np.asarray(out["image_embed"])[::-1],
             "text_embed": np.asarray(out["text_embed"])[::-1]}
  opts = dict(config.method.objectives[0])
  opts.pop("name"), opts.pop("weight")

  def itc(log_tau):
    o = {"image_embed": out["image_embed"], "text_embed": out["text_embed"],
         "log_tau": log_tau, "teacher": teacher}
    return get_objective("soft_clip_nce")(o, batch, rng=None, **opts)[0]

  g = float(jax.grad(itc)(jnp.asarray(out["log_tau"])))
  assert g != 0.0
  # The optimiser updates it (a 'heads' parameter, never frozen, no weight decay).
  p = {"temperature": {"log_tau": jnp.asarray(params["temperature"]["log_tau"])}}
  tx = make_optimizer(config)
  opt_state = tx.init(p)
  grads = {"temperature": {"log_tau": jnp.asarray(g, jnp.float32)}}
  for _ in range(2):  # warm-up starts at lr 0
    updates, opt_state = tx.update(grads, opt_state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  moved = float(p["temperature"]["log_tau"]) - float(params["temperature"]["log_tau"])
  assert moved * g < 0  # against the gradient


def test_tiny_mlip_config_trains_six_steps_end_to_end(tmp_path, synthetic_cache):
  config = mlip_config.get_config("tiny")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  config.data.synthetic.workers = 1
  config.train.async_checkpoint = False
  config.eval.retrieval.enabled = False
  last = loop.train_and_evaluate(config, tmp_path / "run")
  print("tiny MLIP last metrics:", {k: float(v) for k, v in last.items()
                                    if k.endswith("loss")})
  assert np.isfinite(last["loss"])
  for name in ("soft_clip_nce", "tca", "proto_swap", "itm"):
    assert np.isfinite(last[f"{name}/loss"])
  assert last["soft_clip_nce/target_source"] == 1.0  # the EMA teacher gave the soft targets
  assert last["ema_decay"] == pytest.approx(0.995)
  assert 3.0 < last["itm/pairs"] <= 4.0  # text-swap pairs exist
  assert abs(last["soft_clip_nce/tau"] - 0.07) > 1e-7  # the learnable temperature trained


def test_full_mlip_config_builds_abstractly():
  config = mlip_config.get_config()
  model, tx = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=True, rngs=rngs), variables)
  assert out["knowledge_prototypes"].shape == (14, 128)
  assert out["text_words_knowledge"].shape == (2, 111, 128)
  assert out["image_regions_local"].shape == (2, 196, 128)
  assert out["itm_logits"].shape == (2, 4)
  jax.eval_shape(tx.init, variables["params"])
