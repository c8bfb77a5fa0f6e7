"""The frozen-text feature cache (mmrl.train.text_feature_cache): cached steps equal plain steps
(ConVIRT, GLoRIA, LoVT tiny configs; 1 and 8 devices), keys miss on other weights or tokens, and
the config is refused where the cache could not be exact."""
from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest

from mmrl.train import validation as config_validation
from mmrl.config_errors import ConfigError
from mmrl.parallel.distributed import global_batch_from_local
from mmrl.parallel.mesh import batch_sharding, make_mesh
from mmrl.train.state import create_train_state
from mmrl.train.step import make_train_step
from mmrl.train.text_feature_cache import TextFeatureCache, check_config

NUM_STEPS = 2
CONFIGS = {"convirt": "smoke", "gloria": "tiny", "lovt": "tiny"}


def frozen_config(method, *, cache=False):
  c = importlib.import_module(f"experiments.configs.{method}").get_config(CONFIGS[method])
  c.optim.freeze.text = True
  c.model.text.dropout = 0.0
  c.model.text.cache_frozen_features = cache
  return c


def make_batch(seed, config):
  """A host batch of config's shapes; rows 0 and 1 repeat across seeds (cache hits)."""
  rng = np.random.default_rng(seed)
  d, batch = config.data, int(config.train.batch_size)
  length, s = int(d.max_tokens), int(d.max_sentences)
  ids = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  t2s = np.full((batch, length), -1, np.int32)
  sent_mask = np.zeros((batch, s), bool)
  for b in range(batch):
    row = np.random.default_rng(b if b < 2 else 1000 * seed + b)
    n = int(row.integers(6, length))
    ids[b, :n] = row.integers(3, 128, n)
    mask[b, :n] = 1
    t2s[b, 1:n - 1] = np.sort(row.integers(0, int(row.integers(1, s + 1)), n - 2))
    sent_mask[b, np.unique(t2s[b, 1:n - 1])] = True
  return {"image": rng.normal(size=(batch, d.image_size, d.image_size, 1)).astype(np.float32),
          "input_ids": ids, "attention_mask": mask, "token_to_sentence": t2s,
          "sentence_mask": sent_mask, "valid": np.ones(batch, bool)}


def run(config, devices):
  """NUM_STEPS steps; the cache (built like the loop builds it) when the config enables it."""
  mesh = make_mesh(config.mesh, devices=devices)
  state, shardings = create_train_state(config, jax.random.key(0), mesh, min_shard_size=0)
  step = make_train_step(config, mesh, shardings)
  cache = (TextFeatureCache(config, state.params["text_tower"])
           if config.model.text.cache_frozen_features else None)
  losses = []
  for i in range(NUM_STEPS):
    host = make_batch(i, config)
    if cache is not None:
      host = cache.add_to_batch(host)
    state, m = step(state, global_batch_from_local(host, mesh, batch_sharding(mesh)))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), cache


def assert_same(a, b):
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a[1], b[1])


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_cached_text_features_give_the_same_losses_and_params_as_the_text_tower(method):
  one = jax.devices()[:1]
  cached = run(frozen_config(method, cache=True), one)
  cache = cached[2]
  assert cache.forwards == NUM_STEPS and cache.hits == 2  # rows 0, 1 repeat in step 2
  assert_same(cached, run(frozen_config(method), one))


def test_sharded_cached_step_equals_the_single_device_cached_step():
  config = frozen_config("convirt", cache=True)
  config.optim.eps = 1e-3  # smooth Adam updates: grad round-off cannot flip a near-zero step
  single = run(config, jax.devices()[:1])
  config = frozen_config("convirt", cache=True)
  config.optim.eps = 1e-3
  config.mesh.data = 8
  assert_same(run(config, jax.devices()[:8]), single)


def test_other_weights_or_another_token_row_miss_the_cache():
  config = frozen_config("convirt", cache=True)
  state, _ = create_train_state(config, jax.random.key(0), make_mesh(config.mesh,
                                                                     devices=jax.devices()[:1]))
  params = jax.device_get(state.params["text_tower"])
  cache = TextFeatureCache(config, params)
  batch = make_batch(0, config)
  first = cache.features(batch)
  np.testing.assert_array_equal(cache.features(batch)["text_features/tokens"],
                                first["text_features/tokens"])
  assert (cache.hits, cache.misses, cache.forwards) == (8, 8, 1)
  changed = dict(batch, input_ids=batch["input_ids"].copy())
  changed["input_ids"][3, 2] += 1
  cache.features(changed)
  assert (cache.misses, cache.forwards) == (9, 2)
  bumped = jax.tree.map(lambda a: a, params)
  bumped["embeddings"]["word_embeddings"]["embedding"] = (
      bumped["embeddings"]["word_embeddings"]["embedding"] + 1e-3)
  other = TextFeatureCache(config, bumped)
  assert other.fingerprint != cache.fingerprint
  other_config = frozen_config("convirt", cache=True)
  other_config.model.text.global_pool = "mean_tokens"
  assert TextFeatureCache(other_config, params).fingerprint != cache.fingerprint


@pytest.mark.parametrize("change, key", [
    (lambda c: c.optim.freeze.update(text=False), "optim.freeze.text"),
    (lambda c: c.model.text.update(dropout=0.1), "model.text.dropout"),
])
def test_the_cache_is_refused_without_a_frozen_dropout_free_text_tower(change, key):
  config = frozen_config("convirt", cache=True)
  change(config)
  with pytest.raises(ConfigError, match=key):
    config_validation.validate_config(config, check_paths=False)


def test_the_cache_is_refused_for_a_method_that_runs_the_text_tower_through_the_model():
  config = importlib.import_module("experiments.configs.mlip").get_config("tiny")
  config.optim.freeze.text = True
  config.model.text.dropout = 0.0
  config.model.text.cache_frozen_features = True
  with pytest.raises(ConfigError, match="uses_model"):
    check_config(config)
