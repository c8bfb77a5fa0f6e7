"""LoVT (METHODS.md §5): intra_local_nce and the cross-attention against float64 numpy references;
padding invariance; gradients; vectorisation; the tiny config trains; the full config builds."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import lovt as lovt_config
from mmrl.config_errors import ConfigError
from mmrl.heads.lovt_heads import AttentionPool, SymmetricCrossAttention
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives import lovt
from mmrl.objectives.methods import get_method, total_loss
from mmrl.objectives.registry import get_objective

# ---------------------------------------------------------------------------------------------
# Independent float64 references (loops).
# ---------------------------------------------------------------------------------------------


def reference_positive_weights(positions, threshold, smooth, lam):
  """positions: list of coordinate tuples already in threshold units."""
  n = len(positions)
  pos = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      dist = math.sqrt(sum((a - b) ** 2 for a, b in zip(positions[i], positions[j])))
      if dist <= threshold + 1e-12:
        pos[i, j] = math.exp(-lam * dist) if smooth else 1.0
  return pos


def reference_local_nce(z, za, mask, weights, pos, tau):
  """Per-direction losses averaged over samples with at least one valid position."""
  z, za = np.asarray(z, np.float64), np.asarray(za, np.float64)
  b, n, _ = z.shape
  out_ab, out_ba = [], []
  for s in range(b):
    idx = [i for i in range(n) if mask[s, i]]
    if not idx:
      continue
    w = np.array([weights[s, i] for i in idx], np.float64)
    w = w / w.sum()
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    tot_ab = tot_ba = 0.0
    for wi, i in zip(w, idx):
      p = np.array([pos[i, j] for j in idx])
      p = p / p.sum()
      sim_ab = [unit(z[s, i]) @ unit(za[s, j]) / tau for j in idx]   # local anchor
      sim_ba = [unit(za[s, i]) @ unit(z[s, j]) / tau for j in idx]   # attended anchor
      tot_ab += wi * (-(p @ sim_ab) + math.log(sum(math.exp(v) for v in sim_ab)))
      tot_ba += wi * (-(p @ sim_ba) + math.log(sum(math.exp(v) for v in sim_ba)))
    out_ab.append(tot_ab)
    out_ba.append(tot_ba)
  return float(np.mean(out_ab)), float(np.mean(out_ba))


def _local_outputs(side, b, n, d, seed=0, grid=None):
  rng = np.random.default_rng(seed)
  unit = "region" if side == "image" else "sentence"
  w = rng.uniform(0.1, 1.0, size=(b, n)).astype(np.float32)
  out = {
      f"lovt/{unit}_embed": rng.normal(size=(b, n, d)).astype(np.float32),
      f"lovt/{unit}_attended": rng.normal(size=(b, n, d)).astype(np.float32),
      f"lovt/{unit}_mask": np.ones((b, n), bool),
      f"lovt/{unit}_weights": w / w.sum(1, keepdims=True),
  }
  if grid is not None:
    out["image"] = ImageFeatures(global_embedding=np.zeros((b, d), np.float32),
                                 local=out["lovt/region_embed"], grid_hw=grid)
  return out


IMAGE_OPTS = dict(side="image", tau=0.3, threshold=0.5, threshold_type="relative",
                  smooth_weights=True, smooth_lambda=1.0)
REPORT_OPTS = dict(side="report", tau=0.3, threshold=0.0, threshold_type="absolute",
                   smooth_weights=False)

# ---------------------------------------------------------------------------------------------
# Loss terms vs references.
# ---------------------------------------------------------------------------------------------


def test_image_intra_local_nce_equals_float64_numpy_reference():
  h, w = 3, 4
  out = _local_outputs("image", b=3, n=h * w, d=5, grid=(h, w))
  out["lovt/region_mask"][1, [0, 5, 11]] = False  # some padded regions
  loss, m = get_objective("intra_local_nce")(out, {}, rng=None, **IMAGE_OPTS)
  diag = math.hypot(h, w)
  positions = [(r / diag, c / diag) for r in range(h) for c in range(w)]
  pos = reference_positive_weights(positions, 0.5, True, 1.0)
  ab, ba = reference_local_nce(out["lovt/region_embed"], out["lovt/region_attended"],
                               out["lovt/region_mask"], out["lovt/region_weights"], pos, 0.3)
  np.testing.assert_allclose(m["loss_l2att"], ab, rtol=1e-5)
  np.testing.assert_allclose(m["loss_att2l"], ba, rtol=1e-5)
  np.testing.assert_allclose(loss, ab + ba, rtol=1e-5)


def test_report_intra_local_nce_equals_float64_numpy_reference():
  out = _local_outputs("report", b=4, n=6, d=5, seed=1)
  out["lovt/sentence_mask"][0, 4:] = False
  out["lovt/sentence_mask"][2, 1:] = False  # a one-sentence report: loss 0
  loss, m = get_objective("intra_local_nce")(out, {}, rng=None, **REPORT_OPTS)
  pos = reference_positive_weights([(i,) for i in range(6)], 0.0, False, 1.0)
  ab, ba = reference_local_nce(out["lovt/sentence_embed"], out["lovt/sentence_attended"],
                               out["lovt/sentence_mask"], out["lovt/sentence_weights"], pos, 0.3)
  np.testing.assert_allclose(m["loss_l2att"], ab, rtol=1e-5)
  np.testing.assert_allclose(m["loss_att2l"], ba, rtol=1e-5)
  np.testing.assert_allclose(loss, ab + ba, rtol=1e-5)


def test_uniform_weights_option_equals_reference_with_equal_weights():
  out = _local_outputs("report", b=2, n=4, d=3, seed=2)
  loss, _ = get_objective("intra_local_nce")(out, {}, rng=None, use_weights=False, **REPORT_OPTS)
  pos = np.eye(4)
  ab, ba = reference_local_nce(out["lovt/sentence_embed"], out["lovt/sentence_attended"],
                               out["lovt/sentence_mask"], np.ones((2, 4)), pos, 0.3)
  np.testing.assert_allclose(loss, ab + ba, rtol=1e-5)


def test_image_positives_on_7x7_grid_match_lovt_counts():
  # METHODS.md §5.5 pitfall 2: on average 35 of 49 regions are positives (min 22, max 49).
  pos = lovt.positive_weights(lovt.grid_coordinates(7, 7), threshold=0.5, scale=math.hypot(7, 7),
                              smooth_weights=True)
  counts = (pos > 0).sum(1)
  assert counts.min() == 22 and counts.max() == 49 and round(counts.mean()) == 35
  own = np.diag(pos) / pos.sum(1)
  assert 0.026 < own.min() < 0.028 and 0.059 < own.max() < 0.061


def test_invalid_example_is_left_out_of_the_mean():
  out = _local_outputs("report", b=3, n=4, d=3, seed=3)
  full, _ = get_objective("intra_local_nce")(out, {"valid": np.array([1, 0, 1], bool)},
                                             rng=None, **REPORT_OPTS)
  sub = {k: v[[0, 2]] for k, v in out.items()}
  ref, _ = get_objective("intra_local_nce")(sub, {}, rng=None, **REPORT_OPTS)
  np.testing.assert_allclose(full, ref, rtol=1e-6)

# ---------------------------------------------------------------------------------------------
# Masking.
# ---------------------------------------------------------------------------------------------


def test_padded_sentences_change_neither_the_loss_nor_the_gradients():
  out = _local_outputs("report", b=2, n=3, d=4, seed=4)
  padded = {}
  rng = np.random.default_rng(9)
  for k, v in out.items():
    extra = (np.zeros((2, 2), bool) if v.dtype == bool else
             rng.normal(size=(2, 2) + v.shape[2:]).astype(v.dtype) * 100)
    padded[k] = np.concatenate([v, extra], axis=1)
  fn = get_objective("intra_local_nce")

  def loss_and_grad(o):
    def f(z):
      return fn({**o, "lovt/sentence_embed": z}, {}, rng=None, **REPORT_OPTS)[0]
    return jax.jit(jax.value_and_grad(f))(o["lovt/sentence_embed"])

  (l0, g0), (l1, g1) = loss_and_grad(out), loss_and_grad(padded)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  np.testing.assert_allclose(g1[:, :3], g0, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(g1)[:, 3:] == 0)


def test_values_at_padded_regions_change_nothing():
  out = _local_outputs("image", b=2, n=6, d=4, seed=5, grid=(2, 3))
  out["lovt/region_mask"][:, 4] = False
  other = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in out.items()}
  other["lovt/region_embed"][:, 4] = 50.0
  other["lovt/region_attended"][:, 4] = -50.0
  other["lovt/region_weights"][:, 4] = 9.0
  a, _ = get_objective("intra_local_nce")(out, {}, rng=None, **IMAGE_OPTS)
  b, _ = get_objective("intra_local_nce")(other, {}, rng=None, **IMAGE_OPTS)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def _heads_inputs(s_valid, s_total, b=4, r=(2, 2), d_img=8, d_txt=8, seed=0):
  rng = np.random.default_rng(seed)
  n_r = r[0] * r[1]
  sents = np.zeros((b, s_total, d_txt), np.float32)
  sents[:, :s_valid] = rng.normal(size=(b, s_valid, d_txt))
  mask = np.zeros((b, s_total), bool)
  mask[:, :s_valid] = True
  mask[1, s_valid - 1] = False  # ragged: example 1 has one sentence fewer
  sents[1, s_valid - 1] = 0.0
  image = ImageFeatures(global_embedding=rng.normal(size=(b, d_img)).astype(np.float32),
                        local=rng.normal(size=(b, n_r, d_img)).astype(np.float32), grid_hw=r)
  text = TextFeatures(global_embedding=rng.normal(size=(b, d_txt)).astype(np.float32),
                      tokens=np.zeros((b, 2, d_txt), np.float32), token_mask=np.ones((b, 2), bool),
                      sentences=sents, sentence_mask=mask)
  return image, text


def test_padded_sentence_slots_change_nothing_through_the_lovt_heads_in_train_mode():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  cfg = lovt_config.get_config("tiny")
  cfg.method.embed_dim, cfg.method.projection_hidden, cfg.method.pool_heads = 8, 16, 2
  method = get_method(cfg.method)

  class Heads(nn.Module):
    @nn.compact
    def __call__(self, image, text):
      return method.apply_heads(image, text, {}, train=True, dtype=jnp.float32)

  @jax.jit
  def step(image, text):
    variables = Heads().init(jax.random.PRNGKey(0), image, text)
    outputs, stats = Heads().apply(variables, image, text, mutable=["batch_stats"])
    outputs["image"] = image
    loss, metrics = total_loss(outputs, {}, cfg, jax.random.PRNGKey(1))
    return loss, metrics, outputs, stats

  def run(s_total):
    return step(*_heads_inputs(3, s_total))

  l3, m3, o3, st3 = run(3)
  l6, m6, o6, st6 = run(6)
  np.testing.assert_allclose(l6, l3, rtol=1e-5)
  np.testing.assert_allclose(  # METHODS.md §5.2: clip_nce(0.75/0.25) + 0.375 x (image + report)
      m3["loss"], m3["clip_nce/loss"] + 0.375 * (m3["intra_local_nce/loss"]
                                                 + m3["intra_local_nce_1/loss"]), rtol=1e-6)
  for k in m3:
    np.testing.assert_allclose(m6[k], m3[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(o6["lovt/attention_s2r"][:, :3], o3["lovt/attention_s2r"],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(o6["lovt/attention_r2s"][..., :3], o3["lovt/attention_r2s"],
                             rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(o6["lovt/attention_r2s"])[..., 3:] == 0)
  assert np.all(np.asarray(o6["lovt/attention_s2r"])[:, 3:] == 0)
  for a, b in zip(jax.tree_util.tree_leaves(st3), jax.tree_util.tree_leaves(st6)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # BN statistics skip padding


# ---------------------------------------------------------------------------------------------
# Heads vs references.
# ---------------------------------------------------------------------------------------------


def test_symmetric_cross_attention_equals_float64_numpy_reference():
  rng = np.random.default_rng(6)
  b, r, s, d = 2, 4, 3, 6
  za = rng.normal(size=(b, r, d)).astype(np.float32)
  zb = rng.normal(size=(b, s, d)).astype(np.float32)
  ma = np.ones((b, r), bool)
  mb = np.array([[1, 1, 0], [1, 1, 1]], bool)
  mod = SymmetricCrossAttention(d, norm="none")
  params = mod.init(jax.random.PRNGKey(0), za, zb, ma, mb)
  out = mod.apply(params, za, zb, ma, mb)
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["params"])
  lin = lambda name, x: x @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
  for i in range(b):
    a64, b64 = za[i].astype(np.float64), zb[i].astype(np.float64)
    scores = lin("key", a64) @ lin("key", b64).T / math.sqrt(d)
    valid_s = mb[i].nonzero()[0]
    for ri in range(r):  # region attends to the valid sentences
      e = np.exp(scores[ri, valid_s] - scores[ri, valid_s].max())
      prob = e / e.sum()
      np.testing.assert_allclose(out["attention_r2s"][i, ri, valid_s], prob, rtol=1e-5)
      ref = lin("out", prob @ lin("value", b64)[valid_s])
      np.testing.assert_allclose(out["region_attended"][i, ri], ref, rtol=1e-4, atol=1e-5)
    for si in range(s):  # sentence attends to all regions; padded sentences get zeros
      e = np.exp(scores[:, si] - scores[:, si].max())
      prob = e / e.sum() if mb[i, si] else np.zeros(r)
      np.testing.assert_allclose(out["attention_s2r"][i, si], prob, rtol=1e-5, atol=1e-8)
      if mb[i, si]:
        ref = lin("out", prob @ lin("value", a64))
        np.testing.assert_allclose(out["sentence_attended"][i, si], ref, rtol=1e-4, atol=1e-5)
  # Shared W_k / W_v / W_o: one set of kernels.
  assert sorted(params["params"]) == ["key", "out", "value"]


def test_attention_pool_weights_sum_to_one_over_valid_positions_and_ignore_padding():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  pool = AttentionPool(num_heads=2)
  params = pool.init(jax.random.PRNGKey(0), x, mask)
  pooled, w = pool.apply(params, x, mask)
  np.testing.assert_allclose(np.sum(w, 1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(w)[0, 3:] == 0)
  x2 = x.copy()
  x2[0, 3:] = 1e3
  pooled2, w2 = pool.apply(params, x2, mask)
  np.testing.assert_allclose(pooled2[0], pooled[0], rtol=1e-5)
  np.testing.assert_allclose(w2[0], w[0], rtol=1e-6)
  pooled3, _ = pool.apply(params, x[:, :3], mask[:, :3])  # dropping the pad slots: the same
  np.testing.assert_allclose(pooled3[0], pooled[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gradients, stop-gradient, vectorisation, errors.
# ---------------------------------------------------------------------------------------------


def test_intra_local_nce_gradients_match_finite_differences():
  out = _local_outputs("image", b=2, n=4, d=3, seed=8, grid=(2, 2))
  out["lovt/region_mask"][1, 2] = False

  def f(z, za):
    o = {**out, "lovt/region_embed": z, "lovt/region_attended": za}
    return get_objective("intra_local_nce")(o, {}, rng=None, **{**IMAGE_OPTS, "tau": 0.5})[0]

  with jax.enable_x64(True):
    check_grads(jax.jit(f), (out["lovt/region_embed"].astype(np.float64),
                    out["lovt/region_attended"].astype(np.float64)),
                order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_local_weights_receive_no_gradient():
  out = _local_outputs("report", b=2, n=3, d=4, seed=9)

  def f(w, stop):
    return get_objective("intra_local_nce")({**out, "lovt/sentence_weights": w}, {}, rng=None,
                                            weights_stop_gradient=stop, **REPORT_OPTS)[0]

  assert np.all(np.asarray(jax.grad(f)(out["lovt/sentence_weights"], True)) == 0)
  assert np.any(np.asarray(jax.grad(f)(out["lovt/sentence_weights"], False)) != 0)


def test_intra_local_nce_is_vectorised_over_the_batch():
  def n_eqns(b):
    out = _local_outputs("image", b=b, n=4, d=3, grid=(2, 2))
    jaxpr = jax.make_jaxpr(lambda o: get_objective("intra_local_nce")(o, {}, rng=None,
                                                                      **IMAGE_OPTS)[0])(out)
    return len(jaxpr.jaxpr.eqns)

  assert n_eqns(2) == n_eqns(16)


def test_unknown_side_and_missing_outputs_name_the_fix():
  out = _local_outputs("report", b=2, n=3, d=4)
  with pytest.raises(ConfigError, match="side='text'.*'image'.*'report'"):
    get_objective("intra_local_nce")(out, {}, rng=None, side="text")
  with pytest.raises(ConfigError, match="config.method.name='lovt'"):
    get_objective("intra_local_nce")(out, {}, rng=None, side="image")
  with pytest.raises(ConfigError, match="image_pool='max'"):
    cfg = lovt_config.get_config("tiny")
    cfg.method.image_pool = "max"
    image, text = _heads_inputs(2, 2)
    get_method(cfg.method).apply_heads(image, text, {}, train=False, dtype=jnp.float32)


# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------


def test_full_config_builds_abstractly_with_a_7x7_grid():
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config = lovt_config.get_config()
  model, _ = state_lib.model_and_optimizer(config)
  batch = state_lib.dummy_batch(config)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  assert outputs["image"].grid_hw == (7, 7)
  assert outputs["image_embed"].shape == outputs["text_embed"].shape == (2, 512)
  assert outputs["lovt/attention_s2r"].shape == (2, 32, 49)
  assert outputs["lovt/region_embed"].shape == (2, 49, 512)
  heads = variables["params"]
  assert heads["image_pool"]["query"]["kernel"].shape == (2048, 8, 256)
  assert heads["cross_attention"]["key"]["kernel"].shape == (512, 512)
  assert [o.name for o in config.method.objectives] == [
      "clip_nce", "intra_local_nce", "intra_local_nce"]


@pytest.mark.slow
def test_tiny_config_trains_six_steps_end_to_end(tmp_path, synthetic_cache):
  from mmrl import loop  # pylint: disable=g-import-not-at-top
  config = lovt_config.get_config("tiny")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  config.data.synthetic.workers = 1
  config.train.checkpoint_every = 6  # one save is enough here
  last = loop.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(last["loss"])
  assert np.isfinite(last["intra_local_nce/loss"]) and np.isfinite(last["intra_local_nce_1/loss"])
  assert last["intra_local_nce/loss"] > 0  # the 2x2 grid makes the image term non-trivial


def test_unknown_config_argument_is_rejected():
  with pytest.raises(ValueError, match="'smoke'.*use '' or 'tiny'"):
    lovt_config.get_config("smoke")
  assert isinstance(lovt_config.get_config("tiny"), ml_collections.ConfigDict)
