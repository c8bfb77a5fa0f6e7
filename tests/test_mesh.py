"""Mesh construction, batch sharding checks, sharding rules and process-local -> global batches."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmrl.config_errors import ConfigError
from mmrl.parallel import sharding
from mmrl.parallel.distributed import global_batch_from_local, initialize_from_config
from mmrl.parallel.mesh import batch_sharding, check_batch_size, make_mesh


def _mesh_cfg(data, fsdp):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp))


@pytest.mark.parametrize("data,fsdp,shape", [(-1, 1, (8, 1)), (4, 2, (4, 2)), (1, -1, (1, 8)),
                                             (2, 4, (2, 4))])
def test_make_mesh_fills_in_minus_one(data, fsdp, shape):
  mesh = make_mesh(_mesh_cfg(data, fsdp))
  assert mesh.axis_names == ("data", "fsdp")
  assert (mesh.shape["data"], mesh.shape["fsdp"]) == shape


def test_mesh_sizes_that_do_not_divide_the_devices_name_the_key():
  with pytest.raises(ConfigError, match=r"config.mesh.data=3 does not divide the 8 devices"):
    make_mesh(_mesh_cfg(3, -1))


def test_mesh_product_mismatch_and_two_fill_ins_are_errors():
  with pytest.raises(ConfigError, match=r"config.mesh.data=2 x config.mesh.fsdp=2 = 4"):
    make_mesh(_mesh_cfg(2, 2))
  with pytest.raises(ConfigError, match="only one axis may be -1"):
    make_mesh(_mesh_cfg(-1, -1))
  with pytest.raises(ConfigError, match=r"config.mesh.fsdp=0"):
    make_mesh(_mesh_cfg(8, 0))


def test_make_mesh_on_a_subset_of_devices():
  mesh = make_mesh(_mesh_cfg(-1, 1), devices=jax.devices()[:2])
  assert mesh.devices.shape == (2, 1)


def test_batch_size_not_divisible_by_the_mesh_names_train_batch_size():
  mesh = make_mesh(_mesh_cfg(4, 2))
  check_batch_size(16, mesh)
  with pytest.raises(ConfigError, match=r"config.train.batch_size=12 .* mesh size 8"):
    check_batch_size(12, mesh)


def test_fsdp_rule_shards_the_largest_divisible_axis_of_big_kernels():
  mesh = make_mesh(_mesh_cfg(2, 4))
  tree = {"dense": {"kernel": np.zeros((64, 128), np.float32), "bias": np.zeros(128, np.float32)},
          "conv": {"kernel": np.zeros((3, 3, 32, 64), np.float32)},
          "odd": {"kernel": np.zeros((3, 5), np.float32)}}
  specs = sharding.tree_specs(tree, mesh, min_size=0)
  assert specs["dense"]["kernel"] == P(None, "fsdp")
  assert specs["dense"]["bias"] == P()
  assert specs["conv"]["kernel"] == P(None, None, None, "fsdp")
  assert specs["odd"]["kernel"] == P()
  # Below min_size everything is replicated.
  assert sharding.tree_specs(tree, mesh)["dense"]["kernel"] == P()


def test_explicit_rules_win_and_bad_rules_name_the_param():
  mesh = make_mesh(_mesh_cfg(2, 4))
  tree = {"emb": {"embedding": np.zeros((102, 64), np.float32)}}
  rules = [(r"emb/embedding$", P(None, "fsdp")), (".*", sharding.FSDP)]
  placed = sharding.shard_params(tree, mesh, rules)
  assert placed["emb"]["embedding"].sharding.spec == P(None, "fsdp")
  with pytest.raises(ConfigError, match="emb/embedding"):
    sharding.tree_specs(tree, mesh, [(r"emb", P("fsdp", None))])


def test_global_batch_from_process_local_data_is_sharded_over_all_devices():
  mesh = make_mesh(_mesh_cfg(4, 2))
  local = {"image": np.arange(16 * 2 * 2, dtype=np.float32).reshape(16, 2, 2, 1),
           "valid": np.ones(16, bool)}
  batch = global_batch_from_local(local, mesh)
  assert batch["image"].shape == (16, 2, 2, 1)
  assert batch["image"].sharding == batch_sharding(mesh)
  assert len(batch["image"].addressable_shards) == 8
  assert batch["image"].addressable_shards[0].data.shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])


def test_initialize_from_config_is_a_no_op_when_disabled():
  initialize_from_config(ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1)))


def test_multihost_with_address_but_no_process_count_names_the_keys():
  with pytest.raises(ConfigError, match="config.multihost.num_processes"):
    initialize_from_config(ml_collections.ConfigDict(dict(
        enabled=True, coordinator_address="10.0.0.1:1234", num_processes=0, process_id=-1)))
