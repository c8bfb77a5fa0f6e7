"""Alignment maps: shapes and masking per method (tiny configs), word->sentence pooling, queries."""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest

from data_pipeline import tokenization
from mmrl.evaluation.maps import alignment_maps as am
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import state as state_lib

REPORTS = [
    ["There is a nodule in the right upper zone.", "No pneumothorax."],
    ["The lungs are clear."],
    ["Small left pleural effusion.", "Heart size is normal.", "Endotracheal tube in place."],
    ["Mild atelectasis at the left base."],
] * 2


def _batch(config, reports, valid=None):
  c = config.data
  tok = tokenization.ReportTokenizer(str(c.tokenizer))
  enc = tok.encode_batch(reports, int(c.max_tokens), int(c.max_sentences))
  b, s = len(reports), int(c.max_sentences)
  sentence_mask = np.zeros((b, s), bool)
  for i, r in enumerate(reports):
    sentence_mask[i, :len(r)] = True
  rng = np.random.default_rng(0)
  batch = {k: v.astype(np.int32) for k, v in enc.items()}
  batch.update(image=rng.normal(size=(b, c.image_size, c.image_size, 1)).astype(np.float32),
               sentence_mask=sentence_mask,
               valid=np.ones(b, bool) if valid is None else np.asarray(valid, bool))
  return batch


@pytest.mark.parametrize("method", ["lovt", "mgca"])
def test_alignment_maps_have_grid_shape_and_zero_padding(method):
  config = importlib.import_module(f"experiments.configs.{method}").get_config("tiny")
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  fn = am.make_alignment_fn(config, mesh, shardings)
  valid = [True] * 7 + [False]
  host = _batch(config, REPORTS, valid)
  out = jax.device_get(fn(state, distributed.global_batch_from_local(host, mesh)))
  model = state_lib.model_and_optimizer(config)[0]
  regions = jax.eval_shape(lambda v: model.apply(v, state_lib.dummy_batch(config), train=False),
                           state.variables())["image"].local.shape[1]
  gh, gw = out["maps"].shape[2:]
  assert gh * gw == regions
  s = int(config.data.max_sentences)
  assert out["maps"].shape[:2] == (8, s) and out["maps"].dtype == np.float32
  expected = host["sentence_mask"] & np.array(valid)[:, None]
  np.testing.assert_array_equal(out["sentence_mask"], expected)
  assert np.all(out["maps"][~expected] == 0.0)
  assert np.all(np.isfinite(out["maps"]))
  # every real sentence has a map (a zero map would mean its words were lost)
  assert np.all(np.abs(out["maps"][expected]).sum(axis=(1, 2)) > 0)


def test_words_are_pooled_into_their_own_sentences():
  # row 0: words 0,1 in sentence 0, word 2 in sentence 1; word 3 is padding
  to_word = np.array([[-1, 0, 0, 1, 2, -1, -1]])
  to_sent = np.array([[-1, 0, 0, 0, 1, -1, -1]])
  att = np.array([[1, 1, 1, 1, 1, 0, 0]])
  w2s = np.asarray(am.word_sentence_matrix(to_word, to_sent, att, 4, 3))
  np.testing.assert_array_equal(w2s[0], [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
  word_maps = np.array([[[1.0, 0.0], [3.0, 2.0], [5.0, 7.0], [100.0, 100.0]]])
  pooled = np.asarray(am.pool_words_to_sentences(word_maps, np.array([[1, 1, 1, 0]], bool), w2s))
  np.testing.assert_allclose(pooled[0], [[2.0, 1.0], [5.0, 7.0], [0.0, 0.0]])
  shifted = np.asarray(am.word_sentence_matrix(to_word, to_sent, att, 5, 3, word_offset=1))
  np.testing.assert_array_equal(shifted[0, 1:], w2s[0])  # slot 0 ([CLS]) belongs to none
  assert shifted[0, 0].sum() == 0


def test_query_batches_hold_one_sentence_per_row_with_its_image():
  config = importlib.import_module("experiments.configs.convirt").get_config("smoke")
  tok = tokenization.ReportTokenizer(str(config.data.tokenizer))
  images = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 4, 4, 1))
  queries = [(2, "There is a nodule."), (0, "There is cardiomegaly."), (2, "There is a mass.")]
  batches = am.make_query_batch(images, queries, tok, max_tokens=64, max_sentences=4,
                                batch_size=2)
  assert len(batches) == 2
  assert [b["image"][i, 0, 0, 0] for b in batches for i in range(2)][:3] == [2.0, 0.0, 2.0]
  np.testing.assert_array_equal(batches[1]["valid"], [True, False])
  for b in batches:
    assert set(am.ALIGNMENT_KEYS) <= set(b)
    assert np.all(b["token_to_sentence"][b["valid"]] <= 0)  # only sentence 0 (or none)
    np.testing.assert_array_equal(b["sentence_mask"][:, 1:], False)
  assert tok.encode(["There is a mass."], 64, 4)["input_ids"].tolist() == \
      batches[1]["input_ids"][0].tolist()
