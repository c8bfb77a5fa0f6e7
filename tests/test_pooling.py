"""Sentence pooling and masked mean/max against independent numpy references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmrl.ops.pooling import masked_max, masked_mean, pool_sentences


def _np_pool_sentences(tokens, ids, s, mode):
  b, _, d = tokens.shape
  out = np.zeros((b, s, d), np.float32)
  mask = np.zeros((b, s), bool)
  for i in range(b):
    for j in range(s):
      sel = tokens[i][ids[i] == j]
      if len(sel):
        mask[i, j] = True
        out[i, j] = sel.max(0) if mode == "max" else sel.mean(0)
  return out, mask


def _example(seed=0, b=3, l=12, d=5, s=4):
  rng = np.random.default_rng(seed)
  tokens = rng.normal(size=(b, l, d)).astype(np.float32)
  # Row 0: [CLS] s0 s0 s2 s2 s2 [SEP] pad...; sentence 1 and 3 empty.
  ids = np.full((b, l), -1, np.int32)
  ids[0, 1:3] = 0
  ids[0, 3:6] = 2
  # Row 1: every slot used, a token pointing past S (ignored).
  ids[1, 1:9] = [0, 0, 1, 1, 2, 3, 3, 7]
  # Row 2: no sentences at all (an empty report).
  return tokens, ids, s


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pool_sentences_matches_numpy_reference_with_empty_sentences_and_padding(mode):
  tokens, ids, s = _example()
  ids_ref = np.where(ids < s, ids, -1)
  want, want_mask = _np_pool_sentences(tokens, ids_ref, s, mode)
  got, got_mask = jax.jit(pool_sentences, static_argnums=(2, 3))(tokens, ids, s, mode)
  np.testing.assert_array_equal(np.asarray(got_mask), want_mask)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
  assert got.dtype == jnp.float32 and got_mask.dtype == jnp.bool_
  assert not np.asarray(got)[~want_mask].any(), "empty sentences must be exactly zero"


def test_pool_sentences_casts_bfloat16_to_float32():
  tokens, ids, s = _example()
  got, _ = pool_sentences(jnp.asarray(tokens, jnp.bfloat16), ids, s, "mean")
  assert got.dtype == jnp.float32


def test_pool_sentences_gradient_is_finite_and_skips_padding():
  tokens, ids, s = _example()
  for mode in ("max", "mean"):
    g = jax.grad(lambda t: pool_sentences(t, ids, s, mode)[0].sum())(jnp.asarray(tokens))
    g = np.asarray(g)
    assert np.isfinite(g).all()
    assert not g[ids < 0].any() and not g[ids >= s].any()


def test_pool_sentences_rejects_unknown_mode():
  tokens, ids, s = _example()
  with pytest.raises(ValueError, match="sentence_pool"):
    pool_sentences(tokens, ids, s, "sum")


def test_masked_mean_and_max_match_numpy_and_zero_empty_rows():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 6, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0, 1, 0, 0], [0] * 6, [1] * 6], bool)
  mean, mx = np.asarray(masked_mean(x, mask)), np.asarray(masked_max(x, mask))
  for i in range(3):
    if mask[i].any():
      np.testing.assert_allclose(mean[i], x[i][mask[i]].mean(0), rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(mx[i], x[i][mask[i]].max(0), rtol=1e-6)
    else:
      assert not mean[i].any() and not mx[i].any()
  g = jax.grad(lambda v: masked_max(v, mask).sum() + masked_mean(v, mask).sum())(jnp.asarray(x))
  assert np.isfinite(np.asarray(g)).all()
  assert not np.asarray(g)[~mask].any()
