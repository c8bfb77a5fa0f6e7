"""The optimiser: labels, weight-decay mask, freezing, lr multipliers, schedule, clipping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs.base import base_config
from mmrl.config_errors import ConfigError
from mmrl.train.optimizer import decay_mask, make_optimizer, make_schedule, param_labels


def _params():
  """A tree with the towers' path conventions (see mmrl/models/towers.py)."""
  k = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
  return {
      "image_tower": {"stem_conv": {"kernel": k(3, 3, 1, 4)}, "stem_norm": {"scale": k(4),
                                                                         "bias": k(4)},
                      "cls": k(1, 1, 4), "pos_embedding": k(1, 2, 2, 4)},
      "text_tower": {
          "embeddings": {"word_embeddings": {"embedding": k(10, 4)},
                         "position_embeddings": {"embedding": k(8, 4)},
                         "norm": {"scale": k(4), "bias": k(4)}},
          "layer_0": {"intermediate": {"kernel": k(4, 4), "bias": k(4)}},
          "layer_1": {"intermediate": {"kernel": k(4, 4), "bias": k(4)},
                      "output_norm": {"scale": k(4), "bias": k(4)}},
      },
      "image_projection": {"dense_0": {"kernel": k(4, 4)}},
      "temperature": {"log_tau": jnp.zeros(())},
  }


def _config(**freeze):
  c = base_config()
  c.optim.lr = 0.1
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.5
  c.optim.clip_norm = 0.0
  c.train.num_steps = 100
  for k, v in freeze.items():
    c.optim.freeze[k] = v
  return c


def _step(config, params, grads=None):
  tx = make_optimizer(config)
  grads = jax.tree.map(jnp.ones_like, params) if grads is None else grads
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


def test_labels_follow_the_tower_paths_and_freeze_flags():
  labels = param_labels(_params(), _config(text_embeddings=True, text_first_n_layers=1))
  assert labels["image_tower"]["stem_conv"]["kernel"] == "image"
  assert labels["text_tower"]["embeddings"]["word_embeddings"]["embedding"] == "frozen"
  assert labels["text_tower"]["layer_0"]["intermediate"]["kernel"] == "frozen"
  assert labels["text_tower"]["layer_1"]["intermediate"]["kernel"] == "text"
  assert labels["image_projection"]["dense_0"]["kernel"] == "heads"
  assert labels["temperature"]["log_tau"] == "heads"
  assert set(jax.tree.leaves(param_labels(_params(), _config(image=True, text=True)))) == {
      "frozen", "heads"}


def test_weight_decay_skips_biases_norms_position_and_cls_tokens():
  mask = decay_mask(_params())
  assert mask["image_tower"]["stem_conv"]["kernel"]
  assert mask["text_tower"]["embeddings"]["word_embeddings"]["embedding"]
  assert mask["image_projection"]["dense_0"]["kernel"]
  no_decay = [mask["image_tower"]["stem_norm"]["scale"], mask["image_tower"]["stem_norm"]["bias"],
              mask["image_tower"]["cls"], mask["image_tower"]["pos_embedding"],
              mask["text_tower"]["embeddings"]["position_embeddings"]["embedding"],
              mask["text_tower"]["embeddings"]["norm"]["scale"],
              mask["text_tower"]["layer_1"]["intermediate"]["bias"],
              mask["text_tower"]["layer_1"]["output_norm"]["scale"],
              mask["temperature"]["log_tau"]]
  assert not any(no_decay)


def test_zero_gradient_decays_only_the_masked_params():
  params = _params()
  new = _step(_config(), params, jax.tree.map(jnp.zeros_like, params))
  # Adam of a zero gradient is 0; AdamW decay is lr * wd * p = 0.05 at warm-up end (lr 0.1).
  np.testing.assert_allclose(new["image_tower"]["stem_conv"]["kernel"], 0.95, rtol=1e-6)
  np.testing.assert_allclose(new["image_tower"]["stem_norm"]["scale"], 1.0)
  np.testing.assert_allclose(new["text_tower"]["layer_1"]["intermediate"]["bias"], 1.0)


def test_frozen_params_are_unchanged_and_have_no_adam_state():
  config = _config(text_embeddings=True, text_first_n_layers=1)
  params = _params()
  new = _step(config, params)
  jax.tree.map(np.testing.assert_array_equal, new["text_tower"]["embeddings"],
               params["text_tower"]["embeddings"])
  jax.tree.map(np.testing.assert_array_equal, new["text_tower"]["layer_0"],
               params["text_tower"]["layer_0"])
  assert not np.allclose(new["text_tower"]["layer_1"]["intermediate"]["kernel"], 1.0)
  state = make_optimizer(config).init(params)
  n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  n_trainable = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params)
                    if x.ndim > 0 and "embeddings" not in str(p) and "layer_0" not in str(p))
  assert n_state == 2 * n_trainable  # mu and nu for the trainable params only


def test_frozen_gradients_do_not_count_in_the_clipping_norm():
  config = _config(image=True)
  config.optim.clip_norm = 1.0
  config.optim.weight_decay = 0.0
  params = {"image_tower": {"k": jnp.ones((2, 2))}, "heads": {"k": jnp.ones((2, 2))}}
  grads = {"image_tower": {"k": jnp.full((2, 2), 1e6)}, "heads": {"k": jnp.full((2, 2), 0.1)}}
  tx = make_optimizer(config)
  state = tx.init(params)
  # Were the frozen gradient counted, clipping would shrink the heads' gradient ~1e7-fold; Adam's
  # step is scale-free, so check the second moment: (1 - b2) * g^2 with the unclipped g = 0.1.
  _, state = tx.update(grads, state, params)
  nu = [x for x in jax.tree.leaves(state) if getattr(x, "shape", None) == (2, 2)]
  assert any(np.allclose(x, 0.001 * 0.1 ** 2, rtol=1e-4) for x in nu)


def test_lr_multipliers_scale_each_towers_update():
  config = _config()
  config.optim.weight_decay = 0.0
  config.optim.lr_mult.image = 0.5
  config.optim.lr_mult.heads = 2.0
  params = _params()
  new = _step(config, params)
  # First Adam step with constant gradients moves each param by lr * mult.
  np.testing.assert_allclose(new["image_tower"]["stem_conv"]["kernel"], 1 - 0.05, rtol=1e-5)
  np.testing.assert_allclose(new["text_tower"]["layer_1"]["intermediate"]["kernel"], 1 - 0.1,
                             rtol=1e-5)
  np.testing.assert_allclose(new["image_projection"]["dense_0"]["kernel"], 1 - 0.2, rtol=1e-5)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
  c = base_config()
  c.optim.lr = 1.0
  c.optim.warmup_steps = 10
  c.optim.end_lr_fraction = 0.1
  c.train.num_steps = 110
  sched = make_schedule(c)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(sched(5), 0.5, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sched(60), 0.1 + 0.9 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(sched(110), 0.1, rtol=1e-5)


def test_num_steps_not_above_warmup_names_both_keys():
  c = base_config()
  c.train.num_steps = 50
  c.optim.warmup_steps = 100
  with pytest.raises(ConfigError, match="config.train.num_steps=50.*config.optim.warmup_steps=100"):
    make_schedule(c)
