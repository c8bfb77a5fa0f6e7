"""mi_bound / local_mi (METHODS.md §6): float64 numpy references, masking, gradients, critics,
the tiny config end to end, the full config's shapes, and the Gaussian MI validation."""
from __future__ import annotations

import functools
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import local_mi as local_mi_config
from mmrl.config_errors import ConfigError
from mmrl.heads.critics import BilinearCritic, ConcatMLPCritic, SeparableCritic
from mmrl.objectives import local_mi
from mmrl.objectives.registry import get_objective

REPO = pathlib.Path(__file__).resolve().parents[1]


def _softplus(x):
  return np.logaddexp(0.0, x)


def reference_bounds(t, valid, study):
  """Loops in float64 over the pairs of one score matrix t[i, j] (image i, text j)."""
  t = np.asarray(t, np.float64)
  b = t.shape[0]
  pos = [i for i in range(b) if valid[i]]
  neg = [(i, j) for i in range(b) for j in range(b)
         if i != j and valid[i] and valid[j] and study[i] != study[j]]
  mean_pos = np.mean([t[i, i] for i in pos])
  exp_neg = [math.exp(t[i, j]) for i, j in neg]
  nce = []
  for i in pos:
    row = [math.exp(t[i, i])] + [math.exp(t[i, j]) for (k, j) in neg if k == i]
    nce.append(t[i, i] - math.log(sum(row) / len(row)))
  return {
      "dv": mean_pos - math.log(np.mean(exp_neg)),
      "infonce": float(np.mean(nce)),
      "infonce_exact": mean_pos - math.log(sum(exp_neg)),
      "jsd_bound": (np.mean([-_softplus(-t[i, i]) for i in pos])
                    - np.mean([_softplus(t[i, j]) for i, j in neg])),
      "nwj": mean_pos - math.exp(-1) * np.mean(exp_neg),
      "jsd_mi": mean_pos + 1.0 - np.mean(exp_neg),
      "negatives": np.mean([sum(1 for (k, _) in neg if k == i) for i in pos]),
  }


def _case(b=5, r=1, seed=0):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(b, b, r)).astype(np.float32) * 2.0
  valid = np.array([True] * (b - 1) + [False])
  study = np.arange(b) + 100
  study[1] = study[0]  # two images of one study
  return scores, valid, study


def _mi(scores, valid, study, **kw):
  """mi_bound on (scores, valid, study_id), jitted once per option set."""
  return _jitted_mi(tuple(sorted(kw.items())))(scores, valid, study)


@functools.partial(jax.jit, static_argnames=("pairs",))
def _all_estimators(scores, valid, study, pairs="local_max"):
  """(losses f32[4], locations f32[4]) of mi_bound for each estimator in ESTIMATORS."""
  out = [get_objective("mi_bound")({"mi_scores": scores}, {"valid": valid, "study_id": study},
                                   rng=None, estimator=e, pairs=pairs)
         for e in local_mi.ESTIMATORS]
  return jnp.stack([o[0] for o in out]), jnp.stack([o[1]["location"] for o in out])


@functools.lru_cache(maxsize=None)
def _jitted_mi(options):
  def f(scores, valid, study):
    return get_objective("mi_bound")({"mi_scores": scores}, {"valid": valid, "study_id": study},
                                     rng=None, **dict(options))
  return jax.jit(f)


@pytest.mark.parametrize("estimator,exact,key", [
    ("dv", False, "dv"), ("infonce", False, "infonce"), ("infonce", True, "infonce_exact"),
    ("jsd", False, "jsd_bound"), ("nwj", False, "nwj")])
def test_each_estimator_equals_a_float64_numpy_reference(estimator, exact, key):
  scores, valid, study = _case()
  loss, m = _mi(scores, valid, study, estimator=estimator, exact=exact, pairs="global")
  ref = reference_bounds(scores[..., 0], valid, study)
  np.testing.assert_allclose(-loss, ref[key], rtol=1e-5, atol=1e-5)
  for name, ref_key in (("mi_dv", "dv"), ("mi_infonce", "infonce"), ("mi_nwj", "nwj"),
                        ("mi_jsd", "jsd_mi")):
    np.testing.assert_allclose(m[name], ref[ref_key], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m["negatives"], ref["negatives"], rtol=1e-6)


def test_liaos_infonce_is_dv_minus_log_negatives_and_the_default_is_true_infonce():
  scores, valid, study = _case()
  _, m = _mi(scores, valid, study, estimator="dv", pairs="global")
  liao, _ = _mi(scores, valid, study, estimator="infonce", exact=True, pairs="global")
  n_neg = m["negatives"] * valid.sum()
  np.testing.assert_allclose(-liao, m["mi_dv"] - np.log(n_neg), rtol=1e-5)
  fixed, _ = _mi(scores, valid, study, estimator="infonce", pairs="global")
  assert not np.isclose(fixed, liao)


def test_invalid_rows_change_nothing_for_the_others():
  scores, valid, study = _case(b=5, r=3)
  keep = valid.nonzero()[0]
  losses = _all_estimators(scores, valid, study)[0]
  sub = _all_estimators(scores[keep][:, keep], np.ones(len(keep), bool), study[keep])[0]
  np.testing.assert_allclose(losses, sub, rtol=1e-6)
  garbage = scores.copy()
  garbage[~valid] = 1e4
  garbage[:, ~valid] = -1e4
  np.testing.assert_allclose(_all_estimators(garbage, valid, study)[0], losses, rtol=1e-6)
  grads = np.asarray(jax.jit(jax.jacrev(lambda s: _all_estimators(s, valid, study)[0]))(
      jnp.asarray(garbage)))                                    # [estimators, B, B, R]
  assert np.all(np.isfinite(grads))
  assert np.all(grads[:, ~valid] == 0) and np.all(grads[:, :, ~valid] == 0)


def test_same_study_pairs_are_not_negatives_unless_asked():
  scores, valid, study = _case()
  _, m = _mi(scores, valid, study, pairs="global")
  _, m_all = _mi(scores, valid, study, pairs="global", exclude_same_study=False)
  assert float(m["negatives"]) == pytest.approx(2.5)  # 4 valid rows, 3 others, 2 share a study
  assert float(m_all["negatives"]) == 3.0
  with pytest.raises(ConfigError, match="study_id.*exclude_same_study=False"):
    get_objective("mi_bound")({"mi_scores": scores}, {}, rng=None)


def test_local_max_maximises_the_best_locations_bound():
  scores, valid, study = _case(b=5, r=4, seed=1)
  losses, locations = _all_estimators(scores, valid, study, pairs="local_max")
  for k, est in enumerate(local_mi.ESTIMATORS):
    key = {"jsd": "jsd_bound"}.get(est, est)
    per_loc = [reference_bounds(scores[..., r], valid, study)[key] for r in range(4)]
    np.testing.assert_allclose(-losses[k], max(per_loc), rtol=1e-5)
    assert int(locations[k]) == int(np.argmax(per_loc))


def test_local_per_sample_scores_each_image_at_its_best_positive_location():
  scores, valid, study = _case(b=5, r=4, seed=2)
  best = np.argmax(np.stack([scores[i, i] for i in range(5)]), axis=-1)
  chosen = np.stack([scores[i, :, best[i]] for i in range(5)])
  loss, _ = _mi(scores, valid, study, estimator="dv", pairs="local_per_sample")
  np.testing.assert_allclose(-loss, reference_bounds(chosen, valid, study)["dv"], rtol=1e-5)


def test_global_pairs_reject_a_grid_and_unknown_names_list_the_known_ones():
  scores, valid, study = _case(r=3)
  with pytest.raises(ConfigError, match="pairs='global'"):
    _mi(scores, valid, study, pairs="global")
  with pytest.raises(ConfigError, match="estimator='mine'.*'dv', 'infonce', 'jsd', 'nwj'"):
    _mi(scores, valid, study, estimator="mine")
  with pytest.raises(ConfigError, match="pairs='local'"):
    _mi(scores, valid, study, pairs="local")


@pytest.mark.parametrize("estimator", local_mi.ESTIMATORS)
def test_mi_bound_gradients_match_finite_differences(estimator):
  scores, valid, study = _case(b=4, r=2, seed=3)

  def f(s):
    return get_objective("mi_bound")({"mi_scores": s}, {"valid": valid, "study_id": study},
                                     rng=None, estimator=estimator, pairs="local_per_sample")[0]

  with jax.enable_x64(True):
    check_grads(jax.jit(f), (scores.astype(np.float64),), order=1, modes=("rev",), atol=1e-3,
                rtol=1e-3)


def test_concat_critic_equals_the_mlp_on_explicit_concatenations():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 5)).astype(np.float32)
  y = rng.normal(size=(2, 6)).astype(np.float32)
  critic = ConcatMLPCritic(hidden=(7, 3))
  params = jax.jit(critic.init)(jax.random.key(0), x, y)
  scores = np.asarray(jax.jit(critic.apply)(params, x, y))
  p = jax.tree.map(np.asarray, params["params"])
  w0 = np.concatenate([p["dense_0_x"]["kernel"], p["dense_0_y"]["kernel"]], axis=0)
  for i in range(3):
    for j in range(2):
      for r in range(4):
        h = np.maximum(np.concatenate([x[i, r], y[j]]) @ w0 + p["dense_0_x"]["bias"], 0)
        h = np.maximum(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"], 0)
        ref = h @ p["dense_out"]["kernel"][:, 0] + p["dense_out"]["bias"][0]
        np.testing.assert_allclose(scores[i, j, r], ref, rtol=1e-4, atol=1e-5)


def _largest_intermediate(jaxpr) -> int:
  """The element count of the largest value any equation (nested jaxprs included) produces."""
  best = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else (param,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          best = max(best, _largest_intermediate(inner))
  return best


def test_chunked_concat_critic_equals_plain_in_values_and_gradients():
  chunk = 2  # 5 texts: chunks of 2, 2 and a padded 1
  rng = np.random.default_rng(4)
  bx, by, r, hidden = 5, 5, 3, (16, 8)
  x = rng.normal(size=(bx, r, 6)).astype(np.float32)
  y = rng.normal(size=(by, 7)).astype(np.float32)
  plain = ConcatMLPCritic(hidden=hidden)
  chunked = ConcatMLPCritic(hidden=hidden, chunk_size=chunk)
  params = jax.jit(plain.init)(jax.random.key(0), x, y)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(chunked.init, jax.random.key(0), x, y))
  valid = np.ones(bx, bool)
  valid[4] = False
  batch = {"valid": valid, "study_id": np.array([0, 1, 2, 2, 3])}

  def loss(critic, p, x, y):
    scores = critic.apply(p, x, y)
    return get_objective("mi_bound")({"mi_scores": scores}, batch, rng=None,
                                     estimator="infonce", pairs="local_per_sample")[0], scores
  (l0, s0), g0 = jax.jit(jax.value_and_grad(functools.partial(loss, plain), argnums=(0, 1, 2),
                                            has_aux=True))(params, x, y)
  (l1, s1), g1 = jax.jit(jax.value_and_grad(functools.partial(loss, chunked), argnums=(0, 1, 2),
                                            has_aux=True))(params, x, y)
  np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Memory: no value of the chunked forward + backward is as large as the [Bx, By, R, H] block.
  grad_fn = jax.grad(lambda p: loss(chunked, p, x, y)[0])
  largest = _largest_intermediate(jax.make_jaxpr(grad_fn)(params).jaxpr)
  assert largest <= bx * chunk * r * hidden[0] < bx * by * r * hidden[0]
  plain_largest = _largest_intermediate(
      jax.make_jaxpr(jax.grad(lambda p: loss(plain, p, x, y)[0]))(params).jaxpr)
  assert plain_largest == bx * by * r * hidden[0]


def test_negative_critic_chunk_names_the_key():
  x, y = np.zeros((2, 1, 3), np.float32), np.zeros((2, 3), np.float32)
  with pytest.raises(ConfigError, match=r"config\.method\.critic_chunk=-1"):
    ConcatMLPCritic(hidden=(4,), chunk_size=-1).init(jax.random.key(0), x, y)


def test_separable_and_bilinear_critics_score_all_pairs_location_wise():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 4, 5)).astype(np.float32)
  y = rng.normal(size=(2, 6)).astype(np.float32)
  sep = SeparableCritic(dim=8, hidden=(9,))
  ps = jax.jit(sep.init)(jax.random.key(0), x, y)
  apply = jax.jit(sep.apply)
  s = np.asarray(apply(ps, x, y))
  # Location r of image i only depends on x[i, r]: permuting the grid permutes the scores.
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(apply(ps, x[:, perm], y), s[..., perm], rtol=1e-5)
  bil = BilinearCritic()
  pb = jax.jit(bil.init)(jax.random.key(1), x, y)
  w = np.asarray(pb["params"]["bilinear"]["kernel"])
  ref = np.einsum("ird,de,je->ijr", x, w, y)
  np.testing.assert_allclose(jax.jit(bil.apply)(pb, x, y), ref, rtol=1e-4, atol=1e-5)
  assert s.shape == (3, 2, 4)


def test_sampled_sentences_are_valid_and_padding_values_change_nothing():
  rng = np.random.default_rng(2)
  sentences = rng.normal(size=(4, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  padded = sentences.copy()
  padded[~mask] = 1e6
  select = jax.jit(local_mi.select_sentence)
  for k in range(20):
    key = jax.random.key(k)
    a, ok = select(sentences, mask, key)
    a = np.asarray(a)
    np.testing.assert_array_equal(a, select(padded, mask, key)[0])
    assert np.asarray(ok).tolist() == [True, True, False, True]
    assert not a[2].any()  # no fallback feature for the report without a sentence
    for bi in (0, 1, 3):
      assert any(np.array_equal(a[bi], sentences[bi, s]) for s in range(5) if mask[bi, s])


def test_reports_without_a_sentence_are_skipped_from_the_bound_and_counted():
  scores, valid, study = _case(b=5, r=3, seed=5)      # row 4 is padding
  text_ok = np.array([True, False, True, True, True])  # report 1 has no sentence
  fn = jax.jit(lambda o, b: get_objective("mi_bound")(o, b, rng=None))
  loss, m = fn({"mi_scores": scores, "mi_text_ok": text_ok}, {"valid": valid, "study_id": study})
  keep = valid & text_ok
  ref, m_ref = fn({"mi_scores": scores}, {"valid": keep, "study_id": study})
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  assert float(m["skipped_no_sentence"]) == 1.0 and float(m_ref["skipped_no_sentence"]) == 0.0
  garbage = scores.copy()
  garbage[1], garbage[:, 1] = 1e4, -1e4  # the skipped report's scores change nothing
  np.testing.assert_allclose(
      fn({"mi_scores": garbage, "mi_text_ok": text_ok}, {"valid": valid, "study_id": study})[0],
      loss, rtol=1e-6)


def _sentence_records():
  """Two records whose training view samples the same sentence while all others differ."""
  from data_pipeline import records  # pylint: disable=g-import-not-at-top
  from data_pipeline.record_spec import StudyRecord  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def record(sentences):
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 48), 128, np.uint8)).save(buf, format="PNG")
    return records.serialize_record(StudyRecord(
        image_png=buf.getvalue(), height=40, width=48, bit_depth=8, original_height=40,
        original_width=48, image_id="i", study_id="s", patient_id="p",
        report_text=" ".join(sentences), sentences=sentences,
        sentence_sections=["findings"] * len(sentences), labels=np.zeros(0, np.float32),
        boxes=[]))
  a = ["There is no pneumothorax.", "Mild cardiomegaly is unchanged.", "Lungs are clear."]
  b = ["Large right pleural effusion.", "Left lower lobe collapse.", "Heart size is normal."]
  return a, b, record


def test_sentence_feature_does_not_change_when_other_sentences_of_the_report_change():
  from data_pipeline import transforms  # pylint: disable=g-import-not-at-top
  from mmrl.models import towers  # pylint: disable=g-import-not-at-top
  c = local_mi_config.get_config("tiny")
  assert c.data.sentence_sampling == "random_sentence" and c.method.text_feature == "sentence"
  a, b, record = _sentence_records()
  view = transforms.RecordTransform(c.data, [], train=True)
  probe = view(record(a), np.random.default_rng(0))
  k = next(i for i, s in enumerate(a)
           if np.array_equal(view.tokenizer.encode([s], c.data.max_tokens,
                                                   c.data.max_sentences)["input_ids"],
                             probe["input_ids"]))
  other = list(b)
  other[k] = a[k]  # same sampled sentence, every other sentence replaced
  examples = [view(record(r), np.random.default_rng(0)) for r in (a, other)]
  joint = transforms.RecordTransform(dict(c.data.to_dict(), sentence_sampling="all"), [],
                                     train=True)
  joint_examples = [joint(record(r), np.random.default_rng(0)) for r in (a, other)]
  tower = towers.build_text_tower(c.model)
  keys = ("input_ids", "attention_mask", "token_to_sentence")
  batch = {key: np.stack([e[key] for e in examples + joint_examples]) for key in keys}
  variables = jax.jit(lambda x: tower.init(jax.random.key(0), *x, num_sentences=4,
                                           train=False))([batch[key] for key in keys])
  feats = jax.jit(lambda v, x: tower.apply(v, *x, num_sentences=4, train=False))(
      variables, [batch[key] for key in keys])
  g = np.asarray(feats.global_embedding)
  np.testing.assert_array_equal(g[0], g[1])  # the sentence alone: other sentences cannot leak
  # The jointly encoded report's pooled sentence k does change (what 'sentence_in_report' reads).
  s_k = [joint_examples[i]["token_to_sentence"] == k for i in (0, 1)]
  pooled = [np.asarray(feats.tokens)[2 + i][s_k[i]].max(0) for i in (0, 1)]
  assert not np.allclose(pooled[0], pooled[1])


def test_sentence_feature_needs_the_one_sentence_text_view():
  from mmrl.train import validation as config_validation  # pylint: disable=g-import-not-at-top
  c = local_mi_config.get_config("tiny")
  config_validation.validate_config(c, check_paths=False)
  c.data.sentence_sampling = "all"
  with pytest.raises(ConfigError, match="sentence_sampling='random_sentence'.*sentence_in_report"):
    config_validation.validate_config(c, check_paths=False)
  c.method.text_feature = "sentence_in_report"
  config_validation.validate_config(c, check_paths=False)


def _tiny_config(cache):
  c = local_mi_config.get_config("tiny")
  c.data.synthetic.cache_dir = str(cache)
  c.data.synthetic.workers = 1
  return c


def test_tiny_config_trains_six_steps_end_to_end_with_a_finite_loss(tmp_path, synthetic_cache):
  from mmrl.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  last = train_and_evaluate(_tiny_config(synthetic_cache), tmp_path / "run")
  assert np.isfinite(last["loss"])
  assert {"mi_bound/mi_infonce", "mi_bound/mi_dv", "mi_bound/negatives"} <= set(last)
  assert last["mi_bound/skipped_no_sentence"] == 0.0  # every synthetic report has a sentence
  assert (tmp_path / "run" / "checkpoints").exists()


def test_full_config_builds_abstractly():
  from mmrl.train import state  # pylint: disable=g-import-not-at-top
  c = local_mi_config.get_config()
  model, _ = state.model_and_optimizer(c)
  batch = state.dummy_batch(c)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
  critic = variables["params"]["critic"]
  assert critic["dense_0_x"]["kernel"].shape == (512, 1024)   # ResNet-18 grid channels
  assert critic["dense_0_y"]["kernel"].shape == (384, 1024)   # MiniLM hidden size
  assert critic["dense_1"]["kernel"].shape == (1024, 512)
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=False, rngs=rngs), variables)
  assert out["mi_scores"].shape == (2, 2, 64)                 # 8x8 grid at 256 px
  assert out["mi_scores"].dtype == jnp.float32


def test_gaussian_validation_caps_infonce_at_log_batch_and_grows_with_true_mi():
  spec = importlib.util.spec_from_file_location("mi_estimators",
                                                REPO / "benchmarks" / "mi_estimators.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  batch = 32
  res = bench.run(("infonce", "nwj"), (2.0, 6.0), last=100, batch=batch, steps=400, lr=1e-3,
                  hidden=(64,), embed_dim=16, dim=20)
  nce, nwj = res["infonce"][:, 0], res["nwj"][:, 0]
  assert nce[1] <= math.log(batch) + 0.05
  assert nce[1] > nce[0] + 0.5 and nwj[1] > nwj[0] + 0.5
  assert 0.5 < nce[0] < 2.5  # close to the true 2 nats, never far above it

