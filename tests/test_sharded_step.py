"""The sharded train step on 8 fake CPU devices equals the single-device step; nonfinite guard;
freezing; eval embeddings. Real towers (resnet_tiny + a 2-layer random BERT, hidden 32)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from jax.sharding import Mesh

from mmrl.objectives.two_tower import build_model
from mmrl.objectives.methods import total_loss
from mmrl.parallel import sharding
from mmrl.parallel.distributed import global_batch_from_local
from mmrl.parallel.mesh import batch_sharding, make_mesh
from mmrl.train.state import TrainState, create_train_state, model_and_optimizer
from mmrl.train.step import make_eval_step, make_train_step

BATCH = 16
NUM_STEPS = 2


def tiny_config(dtype="float32"):
  c = base_config()
  c.data.image_size = 32
  c.data.max_tokens = 64
  c.data.max_sentences = 4
  c.model.dtype = dtype
  c.model.image.name = "resnet_tiny"
  c.model.image.norm = "batch"
  c.model.text.weights = ""
  c.model.text.num_layers = 2
  c.model.text.hidden_size = 32
  c.model.text.num_heads = 2
  c.model.text.intermediate_size = 64
  c.model.text.vocab_size = 128
  c.model.text.global_pool = "max_tokens"
  c.method.embed_dim = 16
  c.method.projection_hidden = 32
  c.method.objectives[0].learnable_tau = True
  c.optim.lr = 1e-2
  c.optim.eps = 1e-3   # smooth Adam updates, so tiny grad round-off cannot flip a step's sign
  c.optim.warmup_steps = 1
  c.optim.freeze.text_embeddings = True
  c.optim.freeze.text_first_n_layers = 1
  c.train.batch_size = BATCH
  c.train.num_steps = 10
  return c


def make_batch(seed, config, batch=BATCH):
  rng = np.random.default_rng(seed)
  d = config.data
  length, s = d.max_tokens, d.max_sentences
  ids = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  t2s = np.full((batch, length), -1, np.int32)
  sent_mask = np.zeros((batch, s), bool)
  for b in range(batch):
    n = int(rng.integers(6, length))
    ids[b, :n] = rng.integers(3, 128, n)
    mask[b, :n] = 1
    k = int(rng.integers(1, s + 1))
    t2s[b, 1:n - 1] = np.sort(rng.integers(0, k, n - 2))
    sent_mask[b, np.unique(t2s[b, 1:n - 1])] = True
  valid = np.ones(batch, bool)
  valid[-1] = False
  return {"image": rng.normal(size=(batch, d.image_size, d.image_size, 1)).astype(np.float32),
          "input_ids": ids, "attention_mask": mask, "token_to_sentence": t2s,
          "sentence_mask": sent_mask, "valid": valid}


def run_steps(config, mesh_shape, devices=None, init_state=None, rng=None):
  """NUM_STEPS train steps on a (data, fsdp) mesh, from `create_train_state` or from a host copy
  of an initial state (placed with the same sharding rules: saves an init compile)."""
  config.mesh.data, config.mesh.fsdp = mesh_shape
  mesh = make_mesh(config.mesh, devices=devices)
  if init_state is None:
    rng = jax.random.PRNGKey(0) if rng is None else rng
    state, shardings = create_train_state(config, rng, mesh, min_shard_size=0)
  else:
    shardings = sharding.tree_shardings(init_state, mesh, min_size=0)
    state = jax.device_put(init_state, shardings)
  init = jax.device_get(state)
  step = make_train_step(config, mesh, shardings)
  metrics = []
  for i in range(NUM_STEPS):
    batch = global_batch_from_local(make_batch(i, config), mesh, batch_sharding(mesh))
    state, m = step(state, batch)
    metrics.append(jax.device_get(m))
  return Run(metrics, init, jax.device_get(state.params), state, step, mesh)


class Run(NamedTuple):
  metrics: list[dict[str, np.ndarray]]
  init: TrainState        # host copy of the initial state
  params: dict            # host copy of the final params
  state: TrainState       # final state, on the mesh
  step: Callable
  mesh: Mesh


@pytest.fixture(scope="module")
def reference():
  return run_steps(tiny_config(), (1, 1), devices=jax.devices()[:1])


def _assert_same(run, ref):
  for m, r in zip(run.metrics, ref.metrics):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], r["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), run.params,
               ref.params)


def test_sharded_step_equals_single_device_step_on_8x1_mesh(reference):
  _assert_same(run_steps(tiny_config(), (8, 1), init_state=reference.init), reference)


def test_sharded_step_equals_single_device_step_on_4x2_mesh(reference):
  run = run_steps(tiny_config(), (4, 2), rng=jax.random.key(0))
  # Sharded initialisation (from a typed key) gives the single-device initial state.
  jax.tree.map(np.testing.assert_array_equal, run.init.params, reference.init.params)
  jax.tree.map(np.testing.assert_array_equal, run.init.batch_stats, reference.init.batch_stats)
  _assert_same(run, reference)
  # FSDP really splits something (tiny kernels, min_shard_size=0), Adam moments included.
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(run.state.params))
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(run.state.opt_state))


def test_sharded_step_equals_single_device_step_on_1x8_mesh(reference):
  _assert_same(run_steps(tiny_config(), (1, 8), init_state=reference.init), reference)


def test_frozen_text_layers_do_not_change_and_the_rest_trains(reference):
  metrics, init, params = reference.metrics, reference.init.params, reference.params
  text0, text1 = init["text_tower"], params["text_tower"]
  jax.tree.map(np.testing.assert_array_equal, text0["embeddings"], text1["embeddings"])
  jax.tree.map(np.testing.assert_array_equal, text0["layer_0"], text1["layer_0"])
  assert not np.allclose(text0["layer_1"]["output"]["kernel"],
                         text1["layer_1"]["output"]["kernel"])
  assert not np.allclose(init["image_projection"]["dense_0"]["kernel"],
                         params["image_projection"]["dense_0"]["kernel"])
  assert init["temperature"]["log_tau"] != params["temperature"]["log_tau"]
  assert all(np.isfinite(m["loss"]) and not m["nonfinite"] for m in metrics)
  assert metrics[0]["lr"] == 0.0 and metrics[1]["lr"] == pytest.approx(1e-2)


def test_nonfinite_loss_keeps_the_old_state(reference):
  before = jax.device_get(reference.state)
  batch = make_batch(7, tiny_config())
  batch["image"][0] = np.nan
  new_state, m = reference.step(reference.state,
                                global_batch_from_local(batch, reference.mesh))
  assert bool(m["nonfinite"])
  after = jax.device_get(new_state)
  assert int(after.step) == int(before.step)
  jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
  jax.tree.map(np.testing.assert_array_equal, after.batch_stats, before.batch_stats)


def test_eval_step_returns_unit_embeddings_sharded_over_the_batch(reference):
  config = tiny_config()
  mesh = make_mesh(config.mesh)
  shardings = sharding.tree_shardings(reference.init, mesh)
  state = jax.device_put(reference.init, shardings)
  out = make_eval_step(config, mesh, shardings)(
      state, global_batch_from_local(make_batch(3, config), mesh))
  assert out["image_embed"].shape == (BATCH, 16)
  assert out["text_embed"].sharding == batch_sharding(mesh)
  np.testing.assert_allclose(jnp.linalg.norm(out["image_embed"], axis=-1), 1.0, rtol=1e-5)


def test_bf16_compute_gives_a_float32_loss_close_to_the_float32_one(reference):
  config = tiny_config(dtype="bfloat16")
  model = build_model(config)
  assert model.dtype == jnp.bfloat16
  init = reference.init
  batch = make_batch(0, config)

  @jax.jit
  def loss(params):
    outputs = model.apply({"params": params, "batch_stats": init.batch_stats}, batch, train=True,
                          mutable=["batch_stats"])[0]
    return total_loss(outputs, batch, config, jax.random.PRNGKey(0))[0]

  value = loss(init.params)
  assert value.dtype == jnp.float32 and np.isfinite(value)
  np.testing.assert_allclose(value, reference.metrics[0]["loss"], rtol=2e-2)


def test_equal_configs_share_the_static_model_and_optimizer():
  a, b = model_and_optimizer(tiny_config()), model_and_optimizer(tiny_config())
  assert a[0] is b[0] and a[1] is b[1]
  other = tiny_config()
  other.optim.lr = 0.5
  assert model_and_optimizer(other)[1] is not a[1]
