"""MLIP (METHODS.md §8.2): soft_clip_nce and the knowledge attention against float64 numpy
references; masking; gradients; vectorisation; the knowledge file; the tiny and full configs."""
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
from mmrl.heads.mlip_heads import KnowledgeAttention
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective
from mmrl.train import loop
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
    out.update(image_embed_target=t_img, text_embed_target=t_txt)
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
  with pytest.raises(ConfigError, match="image_embed_target"):
    get_objective("soft_clip_nce")({"image_embed": img, "text_embed": txt,
                                    "image_embed_target": img}, {}, rng=None)


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


def test_mlip_total_loss_is_the_sum_of_the_three_references(tiny_outputs):
  config, _, _, batch, out = tiny_outputs
  loss, m = jax.jit(lambda o, x: total_loss(o, x, config, jax.random.PRNGKey(0)))(out, batch)
  itc = reference_soft_itc(out["image_embed"], out["text_embed"], np.ones(4, bool), 0.07, 0.4)
  wmask = np.asarray(out["word_mask"])
  assert wmask.sum(1).tolist() == [5, 6, 4, 5]  # 27 of the 32 word slots are padding
  lw, lp = reference_tca(np.asarray(out["text_words_knowledge"]), wmask,
                         np.asarray(out["image_regions_local"]),
                         np.asarray(out["region_mask"]), 0.1)
  proto, _, _ = reference_proto(out["image_embed"], out["text_embed"],
                                out["knowledge_prototypes"], 0.2, 0.05, 3)
  np.testing.assert_allclose(float(m["soft_clip_nce/loss"]), itc, rtol=1e-4)
  np.testing.assert_allclose(float(m["tca/loss"]), lw + lp, rtol=1e-4)
  np.testing.assert_allclose(float(m["proto_swap/loss"]), proto, rtol=1e-4)
  np.testing.assert_allclose(float(loss), itc + lw + lp + proto, rtol=1e-4)


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
  for name in ("soft_clip_nce", "tca", "proto_swap"):
    assert np.isfinite(last[f"{name}/loss"])


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
  jax.eval_shape(tx.init, variables["params"])
