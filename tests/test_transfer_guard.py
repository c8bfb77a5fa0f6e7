"""The training step makes no implicit host<->device transfers: under
`jax.transfer_guard('disallow')` only explicit ones (`jax.device_get`, `device_put`,
`make_array_from_process_local_data`) are allowed, and the loop's per-step work still runs.

An implicit transfer (a Python scalar or numpy array passed to the jitted step, `float(x)` or
`np.asarray(x)` on a device array) would make the host wait for the device every step.

On the CPU backend the guard sees host->device transfers but not device->host reads (CPU device
memory is host memory), so on CPU CI this proves the host->device half; on a GPU the same test
checks both directions. One device keeps the compile small.
"""
import jax
import numpy as np

from experiments.configs import convirt
from mmrl.parallel import distributed
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import state as state_lib
from mmrl.train import step as step_lib


def _numpy_batch(config, seed):
  batch = state_lib.dummy_batch(config, int(config.train.batch_size))
  rng = np.random.default_rng(seed)
  batch["image"] = rng.standard_normal(batch["image"].shape).astype(np.float32)
  batch["input_ids"] = rng.integers(1000, 2000, batch["input_ids"].shape).astype(np.int32)
  return batch


def test_loop_pattern_step_batch_placement_and_late_metrics_make_no_implicit_transfer():
  config = convirt.get_config("smoke")
  config.mesh.data = 1
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  train_step = step_lib.make_train_step(config, mesh, shardings)
  to_global = lambda b: distributed.global_batch_from_local(b, mesh)  # noqa: E731
  batch = to_global(_numpy_batch(config, 0))
  compiled = train_step.lower(state, batch).compile()
  logged = []
  with jax.transfer_guard("disallow"):
    pending = None
    for i in range(3):
      state, metrics = compiled(state, batch)
      if pending is not None:  # the loop logs the previous step's metrics, explicitly fetched
        host = jax.device_get(pending)
        logged.append(float(host["loss"]))
        assert not bool(host["nonfinite"])
      pending = metrics
      batch = to_global(_numpy_batch(config, i + 1))
    logged.append(float(jax.device_get(pending)["loss"]))
  assert len(logged) == 3 and all(np.isfinite(logged))
  assert int(jax.device_get(state.step)) == 3


def test_the_guard_catches_an_implicit_host_to_device_transfer():
  """The guard is active on this backend: a numpy argument to a jitted function raises."""
  double = jax.jit(lambda a: a * 2)
  with jax.transfer_guard("disallow"):
    try:
      double(np.ones(3, np.float32))
    except Exception as e:  # pylint: disable=broad-except
      assert "transfer" in str(e).lower(), e
    else:
      raise AssertionError("an implicit host-to-device transfer was not caught")
