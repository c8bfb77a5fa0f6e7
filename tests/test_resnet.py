"""ResNet towers: feature shapes/dtypes, BatchNorm state, GroupNorm, parameter-path conventions."""
from __future__ import annotations

import functools
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.models import towers

NO_DECAY = re.compile(r"(norm|ln|bn|LayerNorm|BatchNorm|scale|bias)")


def _cfg(name, norm="batch", dtype="bfloat16"):
  c = base_config().model
  c.image.name, c.image.norm, c.dtype = name, norm, dtype
  return c


def _images(b=2, size=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 1)), jnp.float32)


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


@functools.lru_cache(maxsize=None)
def _tiny_variables(norm):
  """resnet_tiny variables, built once per norm (parameters are float32 for every compute
  dtype, so the same variables serve bf16 and f32 models)."""
  model = towers.build_image_tower(_cfg("resnet_tiny", norm, "float32"))
  init = lambda x: model.init(jax.random.key(0), x, train=False)
  return _fill(jax.eval_shape(init, _images()))


@pytest.fixture(params=["batch", "group"])
def tiny(request):
  return request.param, _tiny_variables(request.param)


def test_resnet_tiny_gives_float32_global_and_row_major_grid(tiny):
  norm, variables = tiny
  cfg = _cfg("resnet_tiny", norm)  # bfloat16 compute
  model = towers.build_image_tower(cfg)
  feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _images())
  gd, ld = towers.image_tower_dims(cfg)
  assert feats.global_embedding.shape == (2, gd) and feats.local.shape == (2, 4, ld)
  assert feats.grid_hw == (2, 2)
  assert feats.global_embedding.dtype == jnp.float32 and feats.local.dtype == jnp.float32
  np.testing.assert_allclose(feats.global_embedding, feats.local.mean(1), rtol=1e-5, atol=1e-5)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert ("batch_stats" in variables) == (norm == "batch")


@pytest.mark.parametrize("name,dim,blocks", [("resnet50", 2048, 16), ("resnet18", 512, 8)])
def test_full_resnets_give_7x7_grid_at_224(name, dim, blocks):
  model = towers.build_image_tower(_cfg(name))
  x = jax.ShapeDtypeStruct((2, 224, 224, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert feats.global_embedding.shape == (2, dim) and feats.local.shape == (2, 49, dim)
  assert feats.grid_hw == (7, 7) and feats.local.dtype == jnp.float32
  assert towers.image_tower_dims(_cfg(name)) == (dim, dim)
  assert len([k for k in variables["params"] if k.startswith("stage")]) == blocks
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 64)
  if name == "resnet50":  # v1.5: the stride sits on the 3x3 of the first block of a stage.
    s2 = variables["params"]["stage2_block0"]
    assert s2["conv2"]["kernel"].shape == (3, 3, 128, 128)


def test_batchnorm_train_updates_batch_stats_and_eval_uses_them():
  variables = _tiny_variables("batch")
  model = towers.build_image_tower(_cfg("resnet_tiny", "batch", "float32"))
  x = _images(b=4, seed=1)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False).global_embedding)
  _, updates = train(variables, x)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(old, new)), "train must update batch_stats"
  trained = {**variables, "batch_stats": updates["batch_stats"]}
  before = evaluate(variables, x)
  after = evaluate(trained, x)
  assert not np.allclose(before, after), "eval must read the (updated) running statistics"
  # Eval normalises with stored statistics: an example's output does not depend on its batch.
  alone = evaluate(trained, x[:1])
  np.testing.assert_allclose(alone[0], after[0], rtol=1e-4, atol=1e-5)


def test_param_paths_follow_the_norm_and_bias_regex_convention(tiny):
  for path in flax.traverse_util.flatten_dict(tiny[1]["params"], sep="/"):
    is_norm_or_bias = "norm" in path or path.endswith("/bias")
    assert bool(NO_DECAY.search(path)) == is_norm_or_bias, path


def test_unknown_norm_and_name_errors_name_the_config_key():
  with pytest.raises(ValueError, match=r"config\.model\.image\.norm='layer'"):
    m = towers.build_image_tower(_cfg("resnet_tiny", "layer"))
    jax.eval_shape(lambda x: m.init(jax.random.key(0), x, train=False), _images())
  with pytest.raises(ValueError, match=r"config\.model\.image\.name='resnet51'.*resnet50"):
    towers.build_image_tower(_cfg("resnet51"))


def test_batchnorm_statistics_cover_the_global_batch_when_sharded():
  if jax.device_count() < 2:
    pytest.skip("needs several (fake) devices; conftest sets 8 CPU devices")
  n = min(jax.device_count(), 8)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  model = towers.build_image_tower(_cfg("resnet_tiny", "batch", "float32"))
  variables = _tiny_variables("batch")
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  x = _images(b=n, seed=2)
  feats, stats = train(variables, x)
  feats_sharded, stats_sharded = train(variables, jax.device_put(x, batch))
  np.testing.assert_allclose(feats_sharded.local, feats.local, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_sharded), jax.tree.leaves(stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
