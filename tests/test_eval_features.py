"""Frozen features: padded rows dropped, deterministic, and the same after a checkpoint round trip."""
import jax
import numpy as np

from data_pipeline import pipeline
from data_pipeline import synthetic_dataset
from experiments.configs import convirt
from mmrl.evaluation import features
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import checkpoint as ckpt_lib
from mmrl.train import state as state_lib


def test_features_drop_padding_are_deterministic_and_survive_a_checkpoint(tmp_path,
                                                                          synthetic_cache):
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(synthetic_cache)
  c.data.synthetic.workers = 1
  c.data.dataset_dir = str(synthetic_dataset.resolve_dataset_dir(c.data, synthetic_cache))
  mesh = mesh_lib.make_mesh(c.mesh)
  state, shardings = state_lib.create_train_state(c, jax.random.key(0), mesh)
  step = features.make_feature_step(mesh, shardings)
  batches = lambda: pipeline.make_eval_batches(c.data, split="train", batch_size=8,
                                               max_examples=12, with_masks=True)
  f = features.extract_features(state, step, batches(), mesh, keep_images=True)
  assert f["image_embed"].shape == (12, c.method.embed_dim)  # 16 rows, 4 of them padding
  assert f["image_local"].ndim == 4 and f["image_local"].shape[0] == 12
  assert f["masks"].shape[0] == 12 and f["image"].shape == (12, 32, 32, 1)
  np.testing.assert_allclose(np.linalg.norm(f["text_embed"], axis=1), 1.0, rtol=1e-5)

  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", async_save=False)
  ckpt.save(5, state, data_iter=None, config={})
  ckpt.close()
  restored, mesh2, _ = features.load_for_eval(c, tmp_path)
  assert mesh2.shape == mesh.shape
  g = features.extract_features(restored, step, batches(), mesh2, keep_images=True)
  for key in f:
    np.testing.assert_array_equal(f[key], g[key], err_msg=key)
