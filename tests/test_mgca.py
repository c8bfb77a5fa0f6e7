"""MGCA (METHODS.md §4): tca and proto_swap against float64 numpy references, masking,
gradients, stop-gradient on the codes, and the configs (tiny run end to end, full config builds)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from experiments.configs import mgca as mgca_config
from mmrl.config_errors import ConfigError
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives import mgca
from mmrl.objectives.methods import total_loss
from mmrl.objectives.registry import get_objective


def _norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ce(logits, target):
  top = max(logits)
  return -logits[target] + top + math.log(sum(math.exp(x - top) for x in logits))


def reference_side(queries, qmask, keys, kmask, tau, normalize_ctx, mask_negatives, omega=None):
  """One TCA side of one sample, float64 loops: sum_t omega_t (CE_row + CE_col) / 2."""
  qs = [t for t in range(len(queries)) if qmask[t]]
  if omega is None:
    omega = {t: 1.0 / len(qs) for t in qs}
  ks = [k for k in range(len(keys)) if kmask[k]]
  ctx = {}
  for t in range(len(queries)):
    logits = [queries[t] @ keys[k] / tau for k in ks]
    top = max(logits)
    den = sum(math.exp(x - top) for x in logits)
    c = sum(math.exp(x - top) / den * keys[k] for x, k in zip(logits, ks))
    ctx[t] = c / np.linalg.norm(c) if normalize_ctx else c
  cols = qs if mask_negatives else list(range(len(queries)))
  total = 0.0
  for t in qs:
    row = [queries[t] @ ctx[v] / tau for v in cols]
    col = [queries[u] @ ctx[t] / tau for u in cols]
    total += omega[t] * 0.5 * (_ce(row, cols.index(t)) + _ce(col, cols.index(t)))
  return total


def reference_tca(words, wmask, regions, rmask, tau, normalize_patch_ctx=True,
                  pad_word_negatives=False):
  words, regions = _norm(np.asarray(words, np.float64)), _norm(np.asarray(regions, np.float64))
  lw = np.mean([reference_side(words[b], wmask[b], regions[b], rmask[b], tau, True,
                               not pad_word_negatives) for b in range(len(words))])
  lp = np.mean([reference_side(regions[b], rmask[b], words[b], wmask[b], tau,
                               normalize_patch_ctx, True) for b in range(len(words))])
  return lw, lp


def reference_sinkhorn(logits, iters):
  """The code's Sinkhorn on Q = exp(logits)^T [K, B], float64."""
  q = np.exp(np.asarray(logits, np.float64)).T
  q = q / q.sum()
  k, b = q.shape
  for _ in range(iters):
    q = q * ((1.0 / k) / q.sum(axis=1))[:, None]
    q = q * ((1.0 / b) / q.sum(axis=0))[None, :]
  return (q / q.sum(axis=0, keepdims=True)).T


def reference_proto(img, txt, protos, tau, eps, iters):
  img, txt, protos = (_norm(np.asarray(x, np.float64)) for x in (img, txt, protos))
  qi, qt = img @ protos.T, txt @ protos.T
  ci, ct = reference_sinkhorn(qi / eps, iters), reference_sinkhorn(qt / eps, iters)

  def log_softmax(x):
    x = x / tau
    return x - (x.max(1, keepdims=True) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(
        1, keepdims=True)))
  li = -np.mean(np.sum(ci * log_softmax(qt), axis=1))
  lt = -np.mean(np.sum(ct * log_softmax(qi), axis=1))
  return 0.5 * (li + lt), li, lt


def _tca_case(b=3, w=5, r=4, d=3, seed=0):
  rng = np.random.default_rng(seed)
  words = rng.normal(size=(b, w, d)).astype(np.float32)
  regions = rng.normal(size=(b, r, d)).astype(np.float32)
  wmask = np.ones((b, w), bool)
  wmask[0, 3:] = False
  wmask[2, 2:] = False
  rmask = np.ones((b, r), bool)
  rmask[1, 3:] = False
  return words, wmask, regions, rmask


def _tca_out(words, wmask, regions, rmask):
  return {"text_words_local": words, "word_mask": wmask, "image_regions_local": regions,
          "region_mask": rmask}


@pytest.mark.parametrize("normalize_patch_ctx,pad_word_negatives", [(True, False), (False, True)])
def test_tca_equals_float64_numpy_reference(normalize_patch_ctx, pad_word_negatives):
  words, wmask, regions, rmask = _tca_case()
  loss, m = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None, tau=0.1,
                                 normalize_patch_ctx=normalize_patch_ctx,
                                 pad_word_negatives=pad_word_negatives)
  lw, lp = reference_tca(words, wmask, regions, rmask, 0.1, normalize_patch_ctx,
                         pad_word_negatives)
  np.testing.assert_allclose(m["loss_word"], lw, rtol=1e-4)
  np.testing.assert_allclose(m["loss_patch"], lp, rtol=1e-4)
  np.testing.assert_allclose(loss, lw + lp, rtol=1e-4)


def test_tca_without_bidirectional_is_the_word_side():
  words, wmask, regions, rmask = _tca_case()
  loss, m = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None,
                                 bidirectional=False)
  assert "loss_patch" not in m
  np.testing.assert_allclose(loss, reference_tca(words, wmask, regions, rmask, 0.1)[0],
                             rtol=1e-4)


def test_padding_words_regions_and_examples_change_nothing_in_tca():
  words, wmask, regions, rmask = _tca_case()
  out = _tca_out(words, wmask, regions, rmask)
  loss, _ = get_objective("tca")(out, {}, rng=None)
  w2, r2 = words.copy(), regions.copy()
  w2[~wmask] = 7.0
  r2[~rmask] = -3.0
  loss2, _ = get_objective("tca")(_tca_out(w2, wmask, r2, rmask), {}, rng=None)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  # An extra invalid example (batch['valid'] False) changes nothing either.
  ext = _tca_out(*(np.concatenate([x, x[:1]]) for x in (words, wmask, regions, rmask)))
  loss3, _ = get_objective("tca")(ext, {"valid": np.array([1, 1, 1, 0], bool)}, rng=None)
  np.testing.assert_allclose(loss3, loss, rtol=1e-6)


def test_zero_padded_words_give_finite_gradients_in_tca():
  words, wmask, regions, rmask = _tca_case()
  words[~wmask] = 0.0
  regions[~rmask] = 0.0
  g = jax.grad(lambda w, r: get_objective("tca")(_tca_out(w, wmask, r, rmask), {}, rng=None)[0],
               argnums=(0, 1))(words, regions)
  assert all(np.all(np.isfinite(x)) for x in g)
  assert np.all(np.asarray(g[0])[~wmask] == 0)


def test_tca_gradients_match_finite_differences():
  words, wmask, regions, rmask = _tca_case(b=3, w=4, r=3, d=2)

  @jax.jit
  def f(w, r):
    return get_objective("tca")(_tca_out(w, wmask, r, rmask), {}, rng=None, tau=0.5)[0]
  with jax.enable_x64(True):
    check_grads(f, (words.astype(np.float64), regions.astype(np.float64)), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


def test_tca_returns_attention_maps_as_aux():
  words, wmask, regions, rmask = _tca_case()
  _, m = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None,
                              return_aux=True)
  assert m["aux/word_patch_attention"].shape == (3, 5, 4)
  assert m["aux/patch_word_attention"].shape == (3, 4, 5)
  np.testing.assert_allclose(np.sum(m["aux/word_patch_attention"], -1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(m["aux/patch_word_attention"])[0, :, 3:] < 1e-6)


def reference_clipped_weights(raw, mask, low=0.1, high=0.9):
  """MGCA's per-sample loop: quantiles of the valid entries, clip, normalise (float64)."""
  out = np.zeros(raw.shape, np.float64)
  for b in range(raw.shape[0]):
    vals = np.asarray(raw[b][mask[b]], np.float64)
    if vals.size == 0:
      continue
    lo, hi = np.quantile(vals, low), np.quantile(vals, high)
    out[b][mask[b]] = np.clip(vals, lo, hi)
    out[b] /= out[b].sum()
  return out


def test_clipped_cls_weights_equal_a_per_sample_numpy_loop():
  rng = np.random.default_rng(3)
  raw = rng.uniform(0.0, 1.0, size=(4, 12)).astype(np.float32)
  mask = rng.uniform(size=(4, 12)) < 0.7
  mask[1] = False          # no valid entry: all zeros
  mask[2] = False
  mask[2, 5] = True        # one valid entry (the code's 0-d index case): weight 1
  raw[0, ~mask[0]] = 100.0  # padding values never matter
  got = mgca.clipped_token_weights(raw, mask)
  np.testing.assert_allclose(got, reference_clipped_weights(raw, mask), rtol=1e-5, atol=1e-7)
  assert not np.asarray(got)[1].any() and np.asarray(got)[2, 5] == pytest.approx(1.0)


def _cls_case(words, regions, seed=1):
  rng = np.random.default_rng(seed)
  return (rng.uniform(size=words.shape[:2]).astype(np.float32),
          rng.uniform(size=regions.shape[:2]).astype(np.float32))


def test_tca_with_cls_attention_weights_equals_float64_numpy_reference():
  words, wmask, regions, rmask = _tca_case()
  wattn, rattn = _cls_case(words, regions)
  out = _tca_out(words, wmask, regions, rmask)
  out.update(word_cls_attention=wattn, region_cls_attention=rattn)
  loss, m = get_objective("tca")(out, {}, rng=None, word_weights="cls_attn",
                                 patch_weights="cls_attn")
  ww = reference_clipped_weights(wattn, wmask)
  rw = reference_clipped_weights(rattn, rmask)
  wn, rn = _norm(words.astype(np.float64)), _norm(regions.astype(np.float64))
  lw = np.mean([reference_side(wn[b], wmask[b], rn[b], rmask[b], 0.1, True, True,
                               dict(enumerate(ww[b]))) for b in range(3)])
  lp = np.mean([reference_side(rn[b], rmask[b], wn[b], wmask[b], 0.1, True, True,
                               dict(enumerate(rw[b]))) for b in range(3)])
  np.testing.assert_allclose(m["loss_word"], lw, rtol=1e-5)
  np.testing.assert_allclose(m["loss_patch"], lp, rtol=1e-5)
  np.testing.assert_allclose(loss, lw + lp, rtol=1e-5)
  assert float(m["patch_weights_cls"]) == 1.0
  uniform, _ = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None)
  assert abs(float(loss) - float(uniform)) > 1e-4  # the weights do change the loss


def test_cls_weights_get_no_gradient_and_words_get_finite_difference_gradients():
  words, wmask, regions, rmask = _tca_case()
  wattn, rattn = _cls_case(words, regions)

  def f(w, r, wa, ra):
    out = _tca_out(w, wmask, r, rmask)
    out.update(word_cls_attention=wa, region_cls_attention=ra)
    return get_objective("tca")(out, {}, rng=None, word_weights="cls_attn",
                                patch_weights="cls_attn")[0]
  grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
  g_w, g_r, g_wa, g_ra = grads(words, regions, wattn, rattn)
  assert not np.asarray(g_wa).any() and not np.asarray(g_ra).any()
  # Directional finite difference in float64 along a random direction of (words, regions).
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    vw, vr = rng.normal(size=words.shape), rng.normal(size=regions.shape)
    w64, r64, wa64, ra64 = (x.astype(np.float64) for x in (words, regions, wattn, rattn))
    f64 = jax.jit(f)
    eps = 1e-4
    fd = (f64(w64 + eps * vw, r64 + eps * vr, wa64, ra64)
          - f64(w64 - eps * vw, r64 - eps * vr, wa64, ra64)) / (2 * eps)
  np.testing.assert_allclose(np.sum(g_w * vw) + np.sum(g_r * vr), fd, rtol=2e-3, atol=1e-4)


def test_cls_word_weights_without_the_output_name_the_config_key_and_patches_fall_back():
  words, wmask, regions, rmask = _tca_case()
  with pytest.raises(ConfigError, match=r"config\.model\.text\.cls_attention=True"):
    get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None,
                         word_weights="cls_attn")
  with pytest.raises(ConfigError, match="'uniform', 'cls_attn'"):
    get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None,
                         patch_weights="cls_attn_clipped")
  # No region row (a ResNet tower): the patch side uses uniform weights and says so.
  loss, m = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None,
                                 patch_weights="cls_attn")
  uniform, _ = get_objective("tca")(_tca_out(words, wmask, regions, rmask), {}, rng=None)
  np.testing.assert_allclose(loss, uniform, rtol=1e-6)
  assert float(m["patch_weights_cls"]) == 0.0


def test_mgca_heads_sum_the_text_cls_row_per_word_and_pass_the_vit_row():
  c = mgca_config.get_config("tiny")
  method = mgca.MGCA(c.method.to_json())
  rng = np.random.default_rng(0)
  b, l, r, d = 2, 8, 4, 6
  cls_row = rng.uniform(size=(b, l)).astype(np.float32)
  t2w = np.array([[-1, 0, 0, 1, 2, 2, -1, -1], [-1, 0, 1, 1, 1, -1, -1, -1]], np.int32)
  am = (np.arange(l)[None] < np.array([[7], [6]])).astype(np.int32)
  text = TextFeatures(global_embedding=rng.normal(size=(b, d)).astype(np.float32),
                      tokens=rng.normal(size=(b, l, d)).astype(np.float32),
                      token_mask=t2w >= 0, sentences=np.zeros((b, 1, d), np.float32),
                      sentence_mask=np.ones((b, 1), bool), cls_attention=cls_row)
  image = ImageFeatures(global_embedding=rng.normal(size=(b, d)).astype(np.float32),
                        local=rng.normal(size=(b, r, d)).astype(np.float32), grid_hw=(2, 2),
                        cls_attention=rng.uniform(size=(b, r)).astype(np.float32))
  batch = {"token_to_word": t2w, "attention_mask": am}

  class Heads(mgca.nn.Module):
    @mgca.nn.compact
    def __call__(self):
      return method.apply_heads(image, text, batch, train=False, dtype=jnp.float32)
  out, _ = Heads().init_with_output(jax.random.key(0))
  expected = np.zeros((b, c.method.max_words), np.float32)
  for i in range(b):
    for t in range(l):
      if t2w[i, t] >= 0 and am[i, t]:
        expected[i, t2w[i, t]] += cls_row[i, t]
  np.testing.assert_allclose(out["word_cls_attention"], expected, rtol=1e-6)
  np.testing.assert_allclose(out["region_cls_attention"], image.cls_attention)


def reference_code_words(tokens, embs, attn):
  """The authors' `BertEncoder.aggregate_tokens` + the `forward` slicing (HKU-MedAI/MGCA
  encoder.py), per report in float64: the token list zipped with attn[1:] ([CLS] attention
  starting at token 1); '##' pieces join the previous word; at [SEP] the pending word and [SEP]
  itself are emitted and the loop stops; padded to L; the [CLS] word dropped. Returns (words
  [L-1, D], mask [L-1] (word != '[PAD]'), weights [L-1])."""
  agg, words, attns, tb, wb, ab = [], [], [], [], [], []
  for emb, tok, a in zip(embs, tokens, attn[1:]):
    if tok == "[SEP]":
      agg += [np.sum(tb, 0), emb]
      words += ["".join(wb), tok]
      attns += [sum(ab), a]
      break
    if not tok.startswith("##"):
      if wb:
        agg.append(np.sum(tb, 0))
        words.append("".join(wb))
        attns.append(sum(ab))
      tb, wb, ab = [emb], [tok], [a]
    else:
      tb.append(emb)
      wb.append(tok[2:])
      ab.append(a)
  pad = len(tokens) - len(agg)
  agg += [np.zeros(embs.shape[1])] * pad
  words += ["[PAD]"] * pad
  attns += [0.0] * pad
  return (np.array(agg[1:], np.float64), np.array(words[1:]) != "[PAD]",
          np.array(attns[1:], np.float64))


def reference_code_weights(attns):
  """mgca_module.forward: clip the non-zero weights to their 10 / 90 % quantiles, normalise."""
  w = attns.copy()
  nz = w != 0
  w[nz] = np.clip(w[nz], np.quantile(w[nz], 0.1), np.quantile(w[nz], 0.9))
  return w / w.sum()


def _code_case():
  pad = ["[PAD]"] * 6
  short = ["[CLS]", "no", "pneu", "##mo", "##thorax", ".", "mild", "card", "##io", "[SEP]"] + pad
  full = ["[CLS]", "a", "b", "##c", "d", "##e", "f", "g", "h", "##i", "j", "k", "l", "m", "n",
          "[SEP]"]  # no padding: the code's zip never reaches [SEP]
  rows = []
  for toks in (short, full):
    ids, w = [], -1
    for t in toks:
      if t.startswith("["):
        ids.append(-1)
      else:
        w += 0 if t.startswith("##") else 1
        ids.append(w)
    rows.append(ids)
  t2w = np.array(rows, np.int32)
  am = np.array([[t != "[PAD]" for t in toks] for toks in (short, full)], np.int32)
  rng = np.random.default_rng(0)
  embs = rng.normal(size=(2, 16, 3)).astype(np.float32)
  attn = np.where(am > 0, rng.uniform(0.01, 1.0, size=(2, 16)), 0.0).astype(np.float32)
  return (short, full), t2w, am, embs, attn


def test_exact_word_layout_and_weights_equal_the_authors_aggregate_tokens():
  toks, t2w, am, embs, attn = _code_case()
  @jax.jit
  def code(embs, attn, t2w, am):
    words, mask, raw = mgca.code_words(embs, attn, t2w, am, max_words=15)
    return words, mask, raw, mgca.clipped_token_weights(raw, mask & (raw != 0))
  words, mask, raw, omega = code(embs, attn, t2w, am)
  for i in range(2):
    ref_words, ref_mask, ref_attn = reference_code_words(toks[i], embs[i].astype(np.float64),
                                                         attn[i].astype(np.float64))
    np.testing.assert_array_equal(np.asarray(mask)[i], ref_mask)
    np.testing.assert_allclose(np.asarray(words)[i], ref_words, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(raw)[i], ref_attn, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(omega)[i], reference_code_weights(ref_attn),
                               rtol=1e-5, atol=1e-7)
  assert np.asarray(mask).sum(1).tolist() == [6, 10]  # short: 5 words + [SEP]; full: 11 - 1
  # mmrl's default (own pieces, no [SEP]) differs from the code's pairing.
  own, own_mask = jax.jit(lambda a, w, m: mgca.pool_words(a[..., None], w, m > 0, 15, "sum"))(
      attn, t2w, am)
  assert np.asarray(own_mask).sum(1).tolist() == [5, 11]
  assert not np.allclose(np.asarray(own)[0, :5, 0], np.asarray(raw)[0, :5])


def test_mgca_heads_with_tca_exact_emit_the_authors_words_and_weights():
  c = mgca_config.get_config("tiny")
  c.method.max_words = 15
  c.method.objectives[1].exact = True
  method = mgca.MGCA(c.method.to_json())
  toks, t2w, am, embs, attn = _code_case()
  b, d = 2, 3
  text = TextFeatures(global_embedding=embs[:, 0], tokens=embs, token_mask=am > 0,
                      sentences=np.zeros((b, 1, d), np.float32),
                      sentence_mask=np.ones((b, 1), bool), cls_attention=attn)
  image = ImageFeatures(global_embedding=embs[:, 0], local=embs[:, :4], grid_hw=(2, 2))
  batch = {"token_to_word": t2w, "attention_mask": am}

  class Heads(mgca.nn.Module):
    @mgca.nn.compact
    def __call__(self):
      return method.apply_heads(image, text, batch, train=False, dtype=jnp.float32)
  out, _ = jax.jit(Heads().init_with_output)(jax.random.key(0))
  for i in range(2):
    _, ref_mask, ref_attn = reference_code_words(toks[i], embs[i].astype(np.float64),
                                                 attn[i].astype(np.float64))
    np.testing.assert_array_equal(np.asarray(out["word_mask"])[i], ref_mask)
    np.testing.assert_allclose(np.asarray(out["word_cls_attention"])[i], ref_attn, rtol=1e-6,
                               atol=1e-7)
  with pytest.raises(ConfigError, match="exact=True.*word_weights='cls_attn'"):
    get_objective("tca")(dict(out), {}, rng=None, exact=True)


def _proto_case(b=6, k=5, d=4, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32),
          rng.normal(size=(k, d)).astype(np.float32))


def test_log_sinkhorn_equals_the_codes_sinkhorn():
  logits = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32) / 0.05
  ref = reference_sinkhorn(logits, 3)
  got = np.exp(mgca.log_sinkhorn(jnp.asarray(logits), jnp.ones(6, bool), 3))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)


def test_proto_swap_equals_float64_numpy_reference():
  img, txt, protos = _proto_case()
  out = {"image_embed": img, "text_embed": txt, "prototypes": protos}
  loss, m = get_objective("proto_swap")(out, {}, rng=None, tau=0.2, epsilon=0.05,
                                        sinkhorn_iterations=3)
  ref, li, lt = reference_proto(img, txt, protos, 0.2, 0.05, 3)
  np.testing.assert_allclose(loss, ref, rtol=1e-4)
  np.testing.assert_allclose(m["loss_i2t"], li, rtol=1e-4)
  np.testing.assert_allclose(m["loss_t2i"], lt, rtol=1e-4)


def test_invalid_examples_are_dropped_from_proto_swap_and_its_sinkhorn():
  img, txt, protos = _proto_case()
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  out = {"image_embed": img, "text_embed": txt, "prototypes": protos}
  loss, _ = get_objective("proto_swap")(out, {"valid": valid}, rng=None)
  keep = valid.nonzero()[0]
  ref, _, _ = reference_proto(img[keep], txt[keep], protos, 0.2, 0.05, 3)
  np.testing.assert_allclose(loss, ref, rtol=1e-4)


def test_proto_swap_gradient_is_that_of_the_loss_with_frozen_codes():
  # Finite differences do not apply (the codes are stop-gradient), so the gradient is compared
  # with that of the reference loss whose codes are constants computed in numpy (float64).
  img, txt, protos = _proto_case()
  ci = reference_sinkhorn(_norm(img) @ _norm(protos).T / 0.05, 3)
  ct = reference_sinkhorn(_norm(txt) @ _norm(protos).T / 0.05, 3)

  def frozen(i, t, p):
    i, t, p = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (i, t, p))
    lpi = jax.nn.log_softmax(i @ p.T / 0.2, axis=-1)
    lpt = jax.nn.log_softmax(t @ p.T / 0.2, axis=-1)
    return 0.5 * (-jnp.mean(jnp.sum(ci * lpt, 1)) - jnp.mean(jnp.sum(ct * lpi, 1)))

  def ours(i, t, p):
    return get_objective("proto_swap")({"image_embed": i, "text_embed": t, "prototypes": p},
                                       {}, rng=None)[0]
  args = (img, txt, protos)
  np.testing.assert_allclose(ours(*args), frozen(*args), rtol=1e-5)
  for a, b in zip(jax.grad(ours, argnums=(0, 1, 2))(*args),
                  jax.grad(frozen, argnums=(0, 1, 2))(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with jax.enable_x64(True):  # and the frozen-code loss's gradient is right
    check_grads(jax.jit(frozen), tuple(x.astype(np.float64) for x in args), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


def test_tca_has_no_python_loop_over_the_batch():
  def n_eqns(b):
    words, wmask, regions, rmask = _tca_case(b=b)
    return len(jax.make_jaxpr(lambda w: get_objective("tca")(
        _tca_out(w, wmask, regions, rmask), {}, rng=None)[0])(words).eqns)
  assert n_eqns(3) == n_eqns(9)


def _tiny_config(cache):
  c = mgca_config.get_config("tiny")
  c.data.synthetic.cache_dir = str(cache)
  c.data.synthetic.workers = 1
  # Under a minute on a shared 2-core host: one checkpoint, no retrieval eval.
  c.train.checkpoint_every = 6
  c.train.async_checkpoint = False
  c.eval.retrieval.enabled = False
  return c


def test_tiny_mgca_config_trains_six_steps_with_a_finite_loss(tmp_path, synthetic_cache):
  from mmrl.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  last = train_and_evaluate(_tiny_config(synthetic_cache), tmp_path / "run")
  for key in ("loss", "clip_nce/loss", "tca/loss", "proto_swap/loss"):
    assert np.isfinite(last[key]), key
  print("tiny mgca final loss:", {k: last[k] for k in ("loss", "clip_nce/loss", "tca/loss",
                                                       "proto_swap/loss")})


def test_full_mgca_config_builds_abstractly():
  from mmrl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  c = mgca_config.get_config()
  c.model.text.weights = ""  # shapes only: no checkpoint read
  c.model.text.num_layers = 2
  model, _ = state_lib.model_and_optimizer(c)
  batch = state_lib.dummy_batch(c)
  variables = jax.eval_shape(lambda k: model.init(k, batch, train=False), jax.random.PRNGKey(0))
  assert variables["params"]["prototypes"]["weight"].shape == (500, 128)
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  assert out["image_regions_local"].shape == (2, 196, 128)
  assert out["text_words_local"].shape == (2, 111, 128)
  assert out["image_embed"].shape == out["text_embed"].shape == (2, 128)
  loss = jax.eval_shape(lambda o: total_loss(o, batch, c, jax.random.PRNGKey(0))[0], out)
  assert loss.shape == () and loss.dtype == jnp.float32


def test_unknown_config_argument_names_the_choices():
  with pytest.raises(ValueError, match="'' or 'tiny'"):
    mgca_config.get_config("small")
