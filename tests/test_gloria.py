"""GLoRIA (METHODS.md §3): gloria_local against a float64 numpy reference, masking, chunking,
gradients, word pooling, and the configs (tiny run end to end, full config builds abstractly)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import gloria as gloria_config
from mmrl.config_errors import ConfigError
from mmrl.heads.gloria_heads import pool_words
from mmrl.objectives import gloria
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective


def reference_local(words, wmask, regions, rmask, tau1, tau2, tau3, exact, valid=None):
  """Loops in float64 over (image b, caption i, word t, region r): returns (l0, l1, S)."""
  words = np.asarray(words, np.float64)
  regions = np.asarray(regions, np.float64)
  b = words.shape[0]
  valid = np.ones(b, bool) if valid is None else np.asarray(valid, bool)
  s_mat = np.zeros((b, b))
  for img in range(b):
    regs = [r for r in range(regions.shape[1]) if rmask[img, r]]
    for cap in range(b):
      toks = [t for t in range(words.shape[1]) if wmask[cap, t]]
      raw = {(t, r): words[cap, t] @ regions[img, r] for t in toks for r in regs}
      terms = []
      for t in toks:
        if exact:  # softmax over words per region, then softmax over regions of tau1 * that
          first = {r: math.exp(raw[t, r]) / sum(math.exp(raw[u, r]) for u in toks) for r in regs}
          logit = {r: tau1 * first[r] for r in regs}
        else:
          logit = {r: tau1 * raw[t, r] for r in regs}
        top = max(logit.values())
        den = sum(math.exp(v - top) for v in logit.values())
        ctx = sum(math.exp(logit[r] - top) / den * regions[img, r] for r in regs)
        e = words[cap, t]
        cos = e @ ctx / max(np.linalg.norm(e) * np.linalg.norm(ctx), 1e-8)
        terms.append(tau2 * cos)
      z = math.log(sum(math.exp(x) for x in terms))
      s_mat[img, cap] = tau3 * (z if exact else z / tau2)
  idx = [i for i in range(b) if valid[i]]

  def ce(mat):
    out = []
    for i in idx:
      row = [mat[i, j] for j in idx]
      top = max(row)
      out.append(-mat[i, i] + top + math.log(sum(math.exp(x - top) for x in row)))
    return float(np.mean(out))
  return ce(s_mat), ce(s_mat.T), s_mat


def _case(b=4, w=5, r=6, d=3, seed=0, scale=0.5):
  rng = np.random.default_rng(seed)
  words = (scale * rng.normal(size=(b, w, d))).astype(np.float32)
  regions = (scale * rng.normal(size=(b, r, d))).astype(np.float32)
  wmask = np.ones((b, w), bool)
  wmask[0, 3:] = False
  wmask[2, 1:] = False
  rmask = np.ones((b, r), bool)
  rmask[1, 4:] = False
  return words, wmask, regions, rmask


def _outputs(words, wmask, regions, rmask):
  return {"text_words": words, "word_mask": wmask, "image_regions": regions, "region_mask": rmask}


@pytest.mark.parametrize("exact", [False, True])
def test_gloria_local_equals_float64_numpy_reference(exact):
  words, wmask, regions, rmask = _case()
  loss, m = get_objective("gloria_local")(_outputs(words, wmask, regions, rmask), {}, rng=None,
                                          tau1=4.0, tau2=5.0, tau3=10.0, exact=exact)
  l0, l1, s_ref = reference_local(words, wmask, regions, rmask, 4.0, 5.0, 10.0, exact)
  np.testing.assert_allclose(m["loss_i2t"], l0, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["loss_t2i"], l1, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss, l0 + l1, rtol=1e-4, atol=1e-5)
  s = gloria.gloria_local_logits(words, wmask, regions, rmask, exact=exact)
  np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)


def test_exact_and_paper_forms_differ():
  words, wmask, regions, rmask = _case()
  out = _outputs(words, wmask, regions, rmask)
  a, _ = get_objective("gloria_local")(out, {}, rng=None, exact=True)
  b, _ = get_objective("gloria_local")(out, {}, rng=None, exact=False)
  assert abs(float(a) - float(b)) > 1e-3


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_gloria_equals_plain_gloria(chunk):
  words, wmask, regions, rmask = _case(b=5, seed=1)
  out = _outputs(words, wmask, regions, rmask)

  def f(w, r, c):
    return get_objective("gloria_local")({**out, "text_words": w, "image_regions": r}, {},
                                         rng=None, exact=True, caption_chunk=c)[0]
  plain, chunked = f(words, regions, 0), f(words, regions, chunk)
  np.testing.assert_allclose(chunked, plain, rtol=1e-6)
  g_plain = jax.grad(f, argnums=(0, 1))(words, regions, 0)
  g_chunk = jax.grad(f, argnums=(0, 1))(words, regions, chunk)
  for a, b in zip(g_chunk, g_plain):  # float32: equal up to summation order
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b))))


def test_chunked_gloria_holds_less_memory_than_plain():
  b, w, r, d = 32, 16, 64, 8
  words, wmask, regions, rmask = _case(b=b, w=w, r=r, d=d)

  def temp_bytes(chunk):
    fn = jax.jit(jax.grad(lambda x: get_objective("gloria_local")(
        _outputs(x, wmask, regions, rmask), {}, rng=None, caption_chunk=chunk)[0]))
    mem = fn.lower(words).compile().memory_analysis()
    if mem is None or not hasattr(mem, "temp_size_in_bytes"):
      pytest.skip("no memory analysis on this backend")
    return mem.temp_size_in_bytes
  plain, chunked = temp_bytes(0), temp_bytes(2)
  attention_bytes = b * b * w * r * 4
  assert plain >= attention_bytes  # the plain form holds the B x B x W x R attention
  assert chunked < plain / 4


def test_padding_words_and_regions_change_nothing():
  words, wmask, regions, rmask = _case()
  out = _outputs(words, wmask, regions, rmask)
  loss, _ = get_objective("gloria_local")(out, {}, rng=None, exact=True)
  words2, regions2 = words.copy(), regions.copy()
  words2[~wmask] = 100.0
  regions2[~rmask] = -50.0
  loss2, _ = get_objective("gloria_local")(_outputs(words2, wmask, regions2, rmask), {},
                                           rng=None, exact=True)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  # More padding slots (wider W and R) change nothing either.
  wide = _outputs(np.pad(words, ((0, 0), (0, 3), (0, 0))), np.pad(wmask, ((0, 0), (0, 3))),
                  np.pad(regions, ((0, 0), (0, 2), (0, 0))), np.pad(rmask, ((0, 0), (0, 2))))
  loss3, _ = get_objective("gloria_local")(wide, {}, rng=None, exact=True)
  np.testing.assert_allclose(loss3, loss, rtol=1e-6)


@pytest.mark.parametrize("exact", [False, True])
def test_zero_padded_words_and_regions_give_finite_gradients(exact):
  words, wmask, regions, rmask = _case()
  words[~wmask] = 0.0  # the word pooling's empty slots are zeros
  regions[~rmask] = 0.0
  g = jax.grad(lambda w, r: get_objective("gloria_local")(
      _outputs(w, wmask, r, rmask), {}, rng=None, exact=exact, caption_chunk=3)[0],
               argnums=(0, 1))(words, regions)
  assert all(np.all(np.isfinite(x)) for x in g)
  assert np.all(np.asarray(g[0])[~wmask] == 0) and np.all(np.asarray(g[1])[~rmask] == 0)


def test_invalid_examples_are_dropped_from_rows_and_columns():
  words, wmask, regions, rmask = _case(b=5, seed=2)
  valid = np.array([1, 1, 0, 1, 1], bool)
  loss, _ = get_objective("gloria_local")(_outputs(words, wmask, regions, rmask),
                                          {"valid": valid}, rng=None)
  keep = valid.nonzero()[0]
  sub, _ = get_objective("gloria_local")(
      _outputs(words[keep], wmask[keep], regions[keep], rmask[keep]), {}, rng=None)
  np.testing.assert_allclose(loss, sub, rtol=1e-6)


def test_gloria_local_gradients_match_finite_differences():
  words, wmask, regions, rmask = _case(b=3, w=3, r=4, d=2)

  @jax.jit
  def f(w, r):
    return get_objective("gloria_local")(_outputs(w, wmask, r, rmask), {}, rng=None,
                                         exact=True, caption_chunk=2)[0]
  with jax.enable_x64(True):
    check_grads(f, (words.astype(np.float64), regions.astype(np.float64)), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


def test_gloria_local_has_no_python_loop_over_the_batch():
  def n_eqns(b):
    words, wmask, regions, rmask = _case(b=b)
    jaxpr = jax.make_jaxpr(lambda w, r: get_objective("gloria_local")(
        _outputs(w, wmask, r, rmask), {}, rng=None, exact=True, caption_chunk=2)[0])(
            words, regions)
    return len(jaxpr.eqns)
  assert n_eqns(4) == n_eqns(8)


def test_attention_maps_are_returned_as_aux_and_sum_to_one_over_valid_regions():
  words, wmask, regions, rmask = _case()
  _, m = get_objective("gloria_local")(_outputs(words, wmask, regions, rmask), {}, rng=None,
                                       return_aux=True)
  att = np.asarray(m["aux/attention"])
  assert att.shape == (4, 5, 6)
  np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
  assert np.all(att[1, :, 4:] < 1e-6)


def test_word_pieces_are_summed_per_word_and_padding_is_masked():
  tokens = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
  to_word = np.array([[-1, 0, 0, 1, -1, -1], [-1, 0, 1, 1, 2, -1]], np.int32)
  ok = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  words, mask = pool_words(tokens, to_word, ok, num_words=2)
  np.testing.assert_array_equal(mask, [[True, True], [True, True]])  # word 2 is beyond W
  np.testing.assert_allclose(words[0, 0], tokens[0, 1] + tokens[0, 2])
  np.testing.assert_allclose(words[1, 1], tokens[1, 2] + tokens[1, 3])
  _, mask3 = pool_words(tokens, to_word, ok, num_words=3)
  np.testing.assert_array_equal(mask3, [[True, True, False], [True, True, True]])


def test_missing_outputs_name_the_key_and_the_method():
  with pytest.raises(ConfigError, match="'text_words'.*method 'gloria'"):
    get_objective("gloria_local")({}, {}, rng=None)


def _tiny_config(cache):
  c = gloria_config.get_config("tiny")
  c.data.synthetic.cache_dir = str(cache)
  c.data.synthetic.workers = 1
  # Keep the test under a minute on a shared 2-core host: one checkpoint, no retrieval eval
  # (a second compiled program; the eval path is covered by the full-config output check).
  c.train.checkpoint_every = 6
  c.train.async_checkpoint = False
  c.eval.retrieval.enabled = False
  return c


def test_tiny_gloria_config_trains_six_steps_with_a_finite_loss(tmp_path, synthetic_cache):
  from mmrl.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  last = train_and_evaluate(_tiny_config(synthetic_cache), tmp_path / "run")
  assert np.isfinite(last["loss"])
  assert np.isfinite(last["gloria_local/loss"]) and np.isfinite(last["clip_nce/loss"])
  print("tiny gloria final loss:", last["loss"])


def test_full_gloria_config_builds_abstractly():
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  c = gloria_config.get_config()
  c.model.text.weights = ""  # shapes only: no checkpoint read
  c.model.text.num_layers = 2
  model, _ = state_lib.model_and_optimizer(c)
  batch = state_lib.dummy_batch(c)
  variables = jax.eval_shape(lambda k: model.init(k, batch, train=False), jax.random.PRNGKey(0))
  params = variables["params"]
  assert params["image_local_projection"]["dense"]["kernel"].shape == (2048, 384)
  assert params["image_global_projection"]["dense"]["kernel"].shape == (2048, 384)
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  assert out["text_words"].shape == (2, 97, 384)  # [CLS] + 96 words
  assert out["image_regions"].shape == (2, 49, 384)
  loss = jax.eval_shape(lambda o: total_loss(o, batch, c, jax.random.PRNGKey(0))[0], out)
  assert loss.shape == () and loss.dtype == jnp.float32


def test_unknown_config_argument_names_the_choices():
  with pytest.raises(ValueError, match="'' or 'tiny'"):
    gloria_config.get_config("small")


