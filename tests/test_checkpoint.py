"""Orbax checkpoints: state + data-iterator position + config; keep policy; restore on another mesh."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmrl.train.checkpoint import Checkpointer


def _state(mesh, spec):
  w = jax.device_put(np.arange(64.0, dtype=np.float32).reshape(8, 8), NamedSharding(mesh, spec))
  return {"params": {"w": w}, "step": jnp.int32(7)}


def test_state_iterator_position_and_config_round_trip(tmp_path):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  ck = Checkpointer(tmp_path, async_save=True)
  ck.save(5, _state(mesh, P("data", None)), data_iter={"epoch": 1, "pos": 40}, config={"lr": 0.1})
  ck.wait_until_finished()
  r = ck.restore(_state(mesh, P("data", None)))
  ck.close()
  assert r.step == 5 and r.data_iter == {"epoch": 1, "pos": 40} and r.config == {"lr": 0.1}
  np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]),
                                np.arange(64.0).reshape(8, 8))


def test_checkpoint_from_an_8x1_mesh_restores_onto_a_2x4_mesh_with_its_shardings(tmp_path):
  ck = Checkpointer(tmp_path, async_save=False)
  ck.save(1, _state(jax.make_mesh((8, 1), ("data", "fsdp")), P("data", None)),
          data_iter=None, config={})
  other = jax.make_mesh((2, 4), ("data", "fsdp"))
  target = _state(other, P(None, "fsdp"))
  r = ck.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=x.sharding), target))
  ck.close()
  assert r.state["params"]["w"].sharding.spec == P(None, "fsdp")
  assert r.data_iter is None
  np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]),
                                np.arange(64.0).reshape(8, 8))


def test_keeps_the_last_n_and_every_kth_step(tmp_path):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  ck = Checkpointer(tmp_path, keep_last=2, keep_every=4, async_save=False)
  for step in range(1, 10):
    ck.save(step, _state(mesh, P()), data_iter={"pos": step}, config={})
  ck.wait_until_finished()
  assert sorted(ck.all_steps()) == [4, 8, 9]  # last two (8, 9) + every 4th (4, 8)
  ck.close()


def test_an_unfinished_save_is_ignored_by_resume(tmp_path):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  ck = Checkpointer(tmp_path, async_save=False)
  ck.save(2, _state(mesh, P()), data_iter={"pos": 2}, config={})
  ck.close()
  # What a process killed mid-save leaves behind: a temporary step folder without its commit.
  (tmp_path / "3.orbax-checkpoint-tmp-123").mkdir()
  ck = Checkpointer(tmp_path, async_save=False)
  assert ck.latest_step() == 2
  assert ck.restore(_state(mesh, P())).data_iter == {"pos": 2}
  ck.close()
