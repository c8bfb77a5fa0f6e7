"""ViT towers: feature shapes/dtypes, remat equivalence, position-embedding resizing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.models import towers


def _cfg(name, dtype="bfloat16", remat=False):
  c = base_config().model
  c.image.name, c.dtype, c.image.remat = name, dtype, remat
  return c


def _images(b=2, size=32):
  return jnp.asarray(np.random.default_rng(0).normal(size=(b, size, size, 1)), jnp.float32)


def _fill(abstract, seed=0):
  """Concrete variables for an eval_shape'd tree, drawn with numpy: jax.random's per-shape
  compiles make a real `init` take seconds per tiny tower on a loaded CPU."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = getattr(path[-1], "key", "")
    if name == "var":
      return np.ones(s.shape, s.dtype)
    if name == "mean":
      return np.zeros(s.shape, s.dtype)
    if name == "scale":
      return (1.0 + 0.1 * rng.normal(size=s.shape)).astype(s.dtype)
    std = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if name == "kernel" else 0.1
    return (std * rng.normal(size=s.shape)).astype(s.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module")
def variables():
  """vit_tiny at 32x32, initialised once (float32 params serve every compute dtype)."""
  model = towers.build_image_tower(_cfg("vit_tiny", "float32"))
  init = lambda x: model.init(jax.random.key(0), x, train=False)
  return _fill(jax.eval_shape(init, _images()))


def test_vit_tiny_gives_cls_global_and_patch_grid_in_float32(variables):
  model = towers.build_image_tower(_cfg("vit_tiny"))
  feats = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, _images())
  assert feats.global_embedding.shape == (2, 64) and feats.local.shape == (2, 16, 64)
  assert feats.grid_hw == (4, 4)
  assert feats.global_embedding.dtype == jnp.float32 and feats.local.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert variables["params"]["patch_embedding"]["kernel"].shape == (8, 8, 1, 64)
  assert set(variables) == {"params"}


@pytest.mark.parametrize("name,dim", [("vit_b16", 768), ("vit_s16", 384)])
def test_full_vits_give_14x14_grid_at_224(name, dim):
  model = towers.build_image_tower(_cfg(name))
  x = jax.ShapeDtypeStruct((2, 224, 224, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert feats.global_embedding.shape == (2, dim) and feats.local.shape == (2, 196, dim)
  assert feats.grid_hw == (14, 14) and feats.local.dtype == jnp.float32
  assert variables["params"]["pos_embedding"].shape == (1, 14, 14, dim)
  assert towers.image_tower_dims(_cfg(name)) == (dim, dim)


def test_remat_changes_neither_params_nor_gradients(variables):
  x = _images()
  plain = towers.build_image_tower(_cfg("vit_tiny", "float32"))
  remat = towers.build_image_tower(_cfg("vit_tiny", "float32", remat=True))
  remat_vars = jax.eval_shape(lambda x: remat.init(jax.random.key(0), x, train=False), x)
  assert jax.tree.structure(variables) == jax.tree.structure(remat_vars)
  loss = lambda m: jax.jit(jax.grad(lambda v: m.apply(v, x, train=True).local.sum()))
  g1 = loss(plain)(variables)
  g2 = loss(remat)(variables)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_other_image_size_resizes_position_embeddings(variables):
  model = towers.build_image_tower(_cfg("vit_tiny", "float32"))
  feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _images(size=48))
  assert feats.grid_hw == (6, 6) and feats.local.shape == (2, 36, 64)
  assert np.isfinite(np.asarray(feats.local)).all()


def test_image_size_not_a_patch_multiple_is_an_error(variables):
  model = towers.build_image_tower(_cfg("vit_tiny"))
  with pytest.raises(ValueError, match="config.data.image_size"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, _images(size=36))


def test_cls_attention_is_the_last_blocks_cls_to_patch_row_in_numpy(variables):
  cfg = _cfg("vit_tiny", "float32")
  cfg.image.cls_attention = True
  model = towers.build_image_tower(cfg)
  feats, inter = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=True, mutable=["intermediates"]))(
          variables, _images())
  att = inter["intermediates"]["block_1"]["attention"]
  heads, hd = 2, 32
  q = np.asarray(att["query"]["__call__"][0], np.float64).reshape(2, 17, heads, hd)
  k = np.asarray(att["key"]["__call__"][0], np.float64).reshape(2, 17, heads, hd)
  logits = np.einsum("bnd,btnd->bnt", q[:, 0], k) / np.sqrt(hd)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert feats.cls_attention.shape == (2, 16)
  np.testing.assert_allclose(feats.cls_attention, probs.mean(1)[:, 1:], rtol=1e-5, atol=1e-6)
  assert towers.build_image_tower(_cfg("vit_tiny", "float32")).cls_attention is False


def test_resnet_ignores_cls_attention_and_returns_none():
  cfg = _cfg("resnet_tiny", "float32")
  cfg.image.cls_attention = True
  model = towers.build_image_tower(cfg)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0],
                       _images())
  assert out.cls_attention is None
