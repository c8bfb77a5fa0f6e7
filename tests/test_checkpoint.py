"""Orbax checkpoints: state + data-iterator position + config; keep policy; restore on another mesh;
fallback past a corrupted latest step; a clear error when the disk is full."""
import errno
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmrl.train.checkpoint import CheckpointWriteError
from mmrl.train.checkpoint import Checkpointer
from mmrl.train.checkpoint import DataIteratorStateHandler


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


def _two_steps(directory, mesh):
  ck = Checkpointer(directory, async_save=False)
  for step in (1, 2):
    ck.save(step, {"params": {"w": jnp.full((8, 8), float(step))}, "step": jnp.int32(step)},
            data_iter={"pos": step}, config={})
  ck.close()


def _array_file(step_dir):
  """The file that holds the state's array data (OCDBT data file of the merged store)."""
  files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  assert files, f"no data file under {step_dir / 'state' / 'd'}"
  return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    tmp_path, caplog, damage):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  _two_steps(tmp_path / "checkpoints", mesh)
  target = _array_file(tmp_path / "checkpoints" / "2")
  if damage == "truncate":
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
  else:
    target.unlink()
  ck = Checkpointer(tmp_path / "checkpoints", async_save=False)
  with caplog.at_level(logging.WARNING, logger="mmrl.train.checkpoint"):
    r = ck.restore({"params": {"w": jnp.zeros((8, 8))}, "step": jnp.int32(0)})
  assert r.step == 1 and r.data_iter == {"pos": 1}
  np.testing.assert_array_equal(np.asarray(r.state["params"]["w"]), np.full((8, 8), 1.0))
  warning = "\n".join(rec.getMessage() for rec in caplog.records)
  assert str(tmp_path / "checkpoints" / "2") in warning and "cannot be restored" in warning
  # The broken step is moved aside, so the run can save step 2 again.
  assert ck.all_steps() == [1]
  assert (tmp_path / "corrupt_checkpoints" / "checkpoints_2").is_dir()
  ck.close()


def test_an_empty_file_is_named_as_truncated(tmp_path, caplog):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  _two_steps(tmp_path / "checkpoints", mesh)
  (tmp_path / "checkpoints" / "2" / "data_iter" / "process_0-of-1.json").write_bytes(b"")
  ck = Checkpointer(tmp_path / "checkpoints", async_save=False)
  with caplog.at_level(logging.WARNING, logger="mmrl.train.checkpoint"):
    assert ck.restore({"params": {"w": jnp.zeros((8, 8))}, "step": jnp.int32(0)}).step == 1
  assert "process_0-of-1.json is empty (truncated)" in caplog.text
  ck.close()


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_while_saving_is_a_clear_error_and_earlier_checkpoints_stay(
    tmp_path, monkeypatch, async_save):
  mesh = jax.make_mesh((8, 1), ("data", "fsdp"))
  ck = Checkpointer(tmp_path, async_save=async_save)
  ck.save(1, _state(mesh, P()), data_iter={"pos": 1}, config={})
  ck.wait_until_finished()

  def disk_full(self, directory, args):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))
  monkeypatch.setattr(DataIteratorStateHandler, "save", disk_full)
  with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint .* under "
                                                 rf"{tmp_path}.*No space left on device.*steps "
                                                 rf"\[1\]\) are intact"):
    ck.save(2, _state(mesh, P()), data_iter={"pos": 2}, config={})
    ck.close()
  monkeypatch.undo()
  ck = Checkpointer(tmp_path, async_save=False)
  assert ck.all_steps() == [1]
  assert ck.restore(_state(mesh, P())).data_iter == {"pos": 1}
  ck.close()


def test_a_checkpoint_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises((CheckpointWriteError, OSError), match="a_file"):
    ck = Checkpointer(blocker / "checkpoints", async_save=False)
    ck.save(1, {"w": jnp.zeros(2)}, data_iter=None, config={})
