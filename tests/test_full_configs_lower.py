"""Every method's full-size config builds its sharded train step: `jit(...).lower` on abstract
shapes (paper-size towers, nothing allocated) over a 4x2 (data x fsdp) mesh of fake CPU devices."""
import importlib

import jax
import pytest

from mmrl.parallel import mesh as mesh_lib
from mmrl.train import state as state_lib
from mmrl.train import step as step_lib

FULL_CONFIGS = ("convirt", "gloria", "mgca", "lovt", "local_mi", "place", "mlip", "lrclr")


@pytest.mark.parametrize("name", FULL_CONFIGS)
def test_full_config_train_step_lowers_on_a_4x2_mesh(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config("")
  config.model.image.weights = "none"  # ImageNet weights are not on the CI disk; lowering only
  config.train.batch_size = 8
  config.mesh.data, config.mesh.fsdp = 4, 2
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.abstract_train_state(config, mesh)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  example = state_lib.dummy_batch(config, config.train.batch_size)
  example["study_id"] = example["valid"].astype("int32")
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
           for k, v in example.items()}
  lowered = step_lib.make_train_step(config, mesh, shardings).lower(state, batch)
  assert "sharding" in lowered.as_text()  # the SPMD program carries the mesh shardings
  big = [leaf for leaf in jax.tree.leaves(state.params) if leaf.size >= 2**20]
  assert big, "a full-size config should have parameters of at least 1M elements"
  assert any("fsdp" in str(leaf.sharding.spec) for leaf in big), (
      "large kernels should be sharded over the fsdp axis")
