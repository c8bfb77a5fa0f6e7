"""Similarity-map read-out: each method's map against numpy, CNR by hand, evaluator keys."""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest

from data_pipeline import tokenization
from mmrl.evaluation.evaluators import localisation as loc
from mmrl.evaluation.maps import similarity_maps as sm
from mmrl.evaluation.metrics import readouts
from mmrl.objectives.methods import method_config, objective_options
from mmrl.objectives.registry import declared_options
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import state as state_lib

REPORTS = [
    ["There is a nodule in the right upper zone.", "No pneumothorax."],
    ["Small left pleural effusion.", "Heart size is normal.", "Endotracheal tube in place."],
    ["Mild atelectasis at the left base."],
    ["The lungs are clear."],
] * 2  # 8 rows: the test mesh has 8 host devices


def _batch(config, reports):
  c = config.data
  tok = tokenization.ReportTokenizer(str(c.tokenizer))
  enc = tok.encode_batch(reports, int(c.max_tokens), int(c.max_sentences))
  b, s = len(reports), int(c.max_sentences)
  sentence_mask = np.zeros((b, s), bool)
  for i, r in enumerate(reports):
    sentence_mask[i, :len(r)] = True
  batch = {k: v.astype(np.int32) for k, v in enc.items()}
  rng = np.random.default_rng(0)
  batch.update(image=rng.normal(size=(b, c.image_size, c.image_size, 1)).astype(np.float32),
               sentence_mask=sentence_mask, valid=np.ones(b, bool))
  return batch


def _np_cos(a, b):
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.einsum("bsd,brd->bsr", a, b)


def _np_sentence_means(words, word_mask, host, num_sentences, offset=0):
  """Loop reference: the mean of the valid word slots holding a piece of each sentence."""
  b_, _, d = words.shape
  out = np.zeros((b_, num_sentences, d))
  for b in range(b_):
    for s in range(num_sentences):
      ids = {int(w) + offset for w, t, a in zip(host["token_to_word"][b],
                                                host["token_to_sentence"][b],
                                                host["attention_mask"][b])
             if a > 0 and t == s and w >= 0 and int(w) + offset < words.shape[1]}
      ids = [w for w in sorted(ids) if word_mask[b, w] and w >= offset]
      if ids:
        out[b, s] = words[b, ids].mean(axis=0)
  return out


def _reference(name, config, outputs, host):
  """The similarity map from the heads' outputs, in numpy (similarity_maps docstring)."""
  o = jax.tree_util.tree_map(np.asarray, outputs)
  s = int(config.data.max_sentences)
  method_cfg = method_config(config.method)
  if name == "lovt":
    return _np_cos(o["lovt/sentence_embed"], o["lovt/region_embed"])
  if name == "gloria":
    offset = 1 if bool(method_cfg.word_include_cls) else 0
    mask = np.asarray(o["word_mask"], bool).copy()
    if offset:
      mask[:, 0] = False
    return _np_cos(_np_sentence_means(o["text_words"], mask, host, s, offset), o["image_regions"])
  opts = objective_options(method_cfg, "tca") or declared_options("tca")
  mask = np.asarray(o[str(opts["word_mask_key"])], bool)
  words = _np_sentence_means(o[str(opts["words_key"])], mask, host, s)
  return _np_cos(words, o[str(opts["regions_key"])])


def _setup(name):
  arg = "smoke" if name == "convirt" else "tiny"
  config = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  return config, mesh, state, shardings


@pytest.mark.parametrize("name", ["lovt", "gloria", "mgca"])
def test_similarity_map_is_the_cosine_of_the_heads_region_and_sentence_embeddings(name):
  config, _, state, _ = _setup(name)
  host = _batch(config, REPORTS)
  outputs = state.apply_fn(state.variables(state.params), host, train=False)
  got = np.asarray(sm.similarity_maps(config, state, outputs, host))
  want = _reference(name, config, outputs, host)
  real = host["sentence_mask"]
  np.testing.assert_allclose(got[real], want[real], atol=2e-5)
  assert np.abs(got[real]).sum() > 0


@pytest.mark.parametrize("name", ["convirt", "place", "lrclr", "local_mi"])
def test_alignment_fn_returns_masked_similarity_maps_beside_the_own_maps(name):
  config, mesh, state, shardings = _setup(name)
  if not sm.has_similarity(config):
    config.method.critic = "separable"  # the concat critic has no shared space
    state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  from mmrl.evaluation.maps import alignment_maps as am  # pylint: disable=g-import-not-at-top
  fn = am.make_alignment_fn(config, mesh, shardings, similarity=True)
  host = _batch(config, REPORTS)
  out = jax.device_get(fn(state, distributed.global_batch_from_local(host, mesh)))
  assert out["sim_maps"].shape == out["maps"].shape
  m = out["sentence_mask"]
  assert np.all(out["sim_maps"][~m] == 0) and np.all(np.abs(out["sim_maps"][m]) <= 1 + 1e-5)
  assert np.all(np.abs(out["sim_maps"][m]).sum(axis=(1, 2)) > 0)
  if name == "convirt":  # ConVIRT's similarity map is its own map
    np.testing.assert_allclose(out["sim_maps"], out["maps"], atol=1e-6)


def test_concat_critic_has_no_similarity_read_out():
  config = importlib.import_module("experiments.configs.local_mi").get_config("tiny")
  config.method.critic = "concat_mlp"
  assert not sm.has_similarity(config)


def test_cnr_of_a_hand_computed_map():
  # inside {4, 2}: mean 3, var 1; outside {0, 2}: mean 1, var 1 -> |3 - 1| / sqrt(2)
  maps = np.array([[[4.0, 2.0], [0.0, 2.0]]])
  gt = np.array([[[True, True], [False, False]]])
  assert readouts.mean_cnr(maps, gt) == pytest.approx(np.sqrt(2.0))
  assert np.isnan(readouts.mean_cnr(np.ones((1, 2, 2)), gt))  # no variance: undefined, left out


def _host_batches(config):
  host = _batch(config, REPORTS)
  b = len(REPORTS)
  boxes = np.zeros((b, 2, 4), np.float32)
  box_mask = np.zeros((b, 2), bool)
  box_labels = np.zeros((b, 2), np.int32)
  # label vocabulary of the test: 0 Lung Lesion, 1 Pleural Effusion, 2 Atelectasis, 3 Support
  for i, (j, box) in enumerate([(0, (0.1, 0.1, 0.4, 0.4)), (1, (0.6, 0.5, 0.9, 0.9)),
                                (2, (0.55, 0.6, 0.95, 0.95))]):
    boxes[i, 0], box_mask[i, 0], box_labels[i, 0] = box, True, j
  boxes[1, 1], box_mask[1, 1], box_labels[1, 1] = (0.4, 0.0, 0.6, 0.5), True, 3
  host.update(boxes=boxes, box_mask=box_mask, box_labels=box_labels)
  return lambda: [host]


def test_evaluator_adds_similarity_and_cnr_keys_and_keeps_the_own_map_values():
  config, mesh, state, shardings = _setup("lovt")
  labels = ("Lung Lesion", "Pleural Effusion", "Atelectasis", "Support Devices")
  kw = dict(label_names=labels, nih_dataset_dir="", num_heatmaps=0)
  batches = _host_batches(config)
  own, _ = loc.LocalisationEvaluator(config, mesh, shardings, readouts=("own",), **kw)(
      state, batches)
  both, _ = loc.LocalisationEvaluator(config, mesh, shardings,
                                      readouts=("own", "similarity"), **kw)(state, batches)
  assert own["loc/synthetic/pairs"] > 0
  new = set(both) - set(own)
  for s in ("synthetic", "synthetic_templated", "synthetic_nolocation"):
    for k in ("pointing", "pointing_cell", "iou", "pairs", "cnr"):
      assert f"loc/{s}/sim/{k}" in new
    assert f"loc/{s}/cnr" in own
  assert "loc/synthetic_templated/sim/swap/drop" in new
  assert not any("/sim/random_map" in k or "/sim/grid_oracle" in k for k in both)
  for k, v in own.items():
    assert both[k] == pytest.approx(v, nan_ok=True), k


def test_readouts_must_start_with_own():
  config = importlib.import_module("experiments.configs.convirt").get_config("smoke")
  with pytest.raises(ValueError, match="readouts"):  # checked before anything is built
    loc.LocalisationEvaluator(config, None, None, readouts=("similarity",),
                              label_names=("Lung Lesion",), nih_dataset_dir="")
