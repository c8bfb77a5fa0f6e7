"""The EMA (momentum) teacher in the trainer: the update against a numpy reference, the sharded
step with a teacher equals the single-device one, disabled = the plain step bit for bit,
checkpoint round trip, config errors. Tiny towers (those of test_sharded_step)."""
from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
import pytest

from mmrl.config_errors import ConfigError
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import ema as ema_lib
from mmrl.train import state as state_lib
from mmrl.train.checkpoint import Checkpointer
from mmrl.train.step import make_train_step
from test_sharded_step import NUM_STEPS, make_batch, run_steps, tiny_config

DECAY, TOTAL = 0.9, 10


def teacher_config(**ema):
  """ConVIRT's tiny towers (BatchNorm ResNet) + soft ITC whose targets come from the teacher."""
  c = tiny_config()
  c.method.objectives = [ml_collections.ConfigDict(dict(
      name="soft_clip_nce", weight=1.0, tau=0.1, learnable_tau=True, alpha=0.4,
      target="teacher"))]
  c.train.num_steps = TOTAL
  c.train.ema.update(dict(enabled=True, decay=DECAY, schedule="cosine",
                          collections=("params", "batch_stats")), **ema)
  return c


def reference_decay(k):
  return 1.0 - (1.0 - DECAY) * (math.cos(math.pi * k / TOTAL) + 1.0) / 2.0


@pytest.fixture(scope="module")
def teacher_run():
  """Three single-device steps, with host copies of the state after each."""
  config = teacher_config()
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  state, shardings = state_lib.create_train_state(config, jax.random.PRNGKey(0), mesh)
  step = make_train_step(config, mesh, shardings)
  states, metrics = [jax.device_get(state)], []
  for i in range(3):
    state, m = step(state, make_batch(i, config))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return config, states, metrics, state, step


def test_ema_update_equals_a_numpy_reference_over_three_steps(teacher_run):
  _, states, metrics, _, _ = teacher_run
  f64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)
  ema = {"params": f64(states[0].params), "batch_stats": f64(states[0].batch_stats)}
  jax.tree.map(np.testing.assert_array_equal, states[0].ema, ema)  # starts as a copy
  for k in range(3):
    m = reference_decay(k)
    np.testing.assert_allclose(metrics[k]["ema_decay"], m, rtol=1e-6)
    online = {"params": f64(states[k + 1].params), "batch_stats": f64(states[k + 1].batch_stats)}
    ema = jax.tree.map(lambda e, o, m=m: m * e + (1.0 - m) * o, ema, online)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 states[k + 1].ema, ema)
  # The teacher really lags: after three steps it differs from the online params.
  kernel = lambda t: t["image_projection"]["dense_0"]["kernel"]
  assert not np.allclose(kernel(states[3].ema["params"]), kernel(states[3].params))
  assert all(np.isfinite(m["loss"]) and not m["nonfinite"] for m in metrics)


def test_sharded_step_with_a_teacher_equals_the_single_device_step(teacher_run):
  _, states, metrics, _, _ = teacher_run
  run = run_steps(teacher_config(), (4, 2), init_state=states[0])
  for m, r in zip(run.metrics, metrics[:NUM_STEPS]):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["soft_clip_nce/loss"], r["soft_clip_nce/loss"], rtol=1e-5)
  final = jax.device_get(run.state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final.ema, states[NUM_STEPS].ema)
  # EMA leaves carry their parameters' shardings.
  specs = lambda t: [x.sharding.spec for x in jax.tree.leaves(t)]
  assert specs(run.state.ema["params"]) == specs(run.state.params)
  assert any("fsdp" in str(s) for s in specs(run.state.ema["params"]))


def test_a_nonfinite_step_keeps_the_old_ema(teacher_run):
  config, states, _, state, step = teacher_run
  batch = make_batch(7, config)
  batch["image"][0] = np.nan
  copy = jax.tree.map(lambda h, d: jax.device_put(h, d.sharding), states[3], state)
  new_state, m = step(copy, batch)
  assert bool(m["nonfinite"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.ema), states[3].ema)


def test_disabled_ema_leaves_no_teacher_state_and_the_step_unchanged():
  off = run_steps(tiny_config(), (1, 1), devices=jax.devices()[:1])
  assert off.state.ema == {} and "ema_decay" not in off.metrics[0]
  on_config = tiny_config()
  on_config.train.ema.enabled = True  # an EMA nobody reads: the online path is untouched
  on = run_steps(on_config, (1, 1), init_state=off.init.replace(
      ema=ema_lib.init_ema(on_config, off.init.params, off.init.batch_stats)),
                 devices=jax.devices()[:1])
  for a, b in zip(off.metrics, on.metrics):
    assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]  # bit-identical
  jax.tree.map(np.testing.assert_array_equal, off.params, on.params)


def test_checkpoint_round_trip_restores_the_ema_onto_the_abstract_state(teacher_run, tmp_path):
  config, states, _, state, _ = teacher_run
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  ck = Checkpointer(tmp_path, async_save=False)
  ck.save(3, state, data_iter=None, config={})
  abstract, shardings = state_lib.abstract_train_state(config, mesh)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  restored = ck.restore(abstract).state
  ck.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.ema), states[3].ema)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), states[3].params)
  assert jax.tree.structure(shardings.ema["params"]) == jax.tree.structure(shardings.params)


def test_a_teacher_objective_without_the_ema_is_a_config_error_naming_the_key():
  config = teacher_config(enabled=False)
  mesh = mesh_lib.make_mesh(config.mesh)
  with pytest.raises(ConfigError, match="config.train.ema.enabled=True"):
    make_train_step(config, mesh, None)


@pytest.mark.parametrize("key,value,match", [
    ("decay", 1.0, r"decay=1.0 must be in \[0, 1\)"),
    ("schedule", "linear", "schedule='linear'"),
    ("collections", ("batch_stats",), "must contain 'params'"),
])
def test_bad_ema_config_names_the_key(key, value, match):
  config = teacher_config(**{key: value})
  with pytest.raises(ConfigError, match=match):
    ema_lib.ema_config(config)
