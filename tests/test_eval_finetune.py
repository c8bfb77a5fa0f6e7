"""Fine-tuned classification: seeds over the probe's subsets, mean and sample std, seed count."""
import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import linear_probe as lp
from mmrl.evaluation.evaluators import protocol


def _state(rng):
  """A stand-in state whose image tower is one linear map of the flattened 4x4 image."""
  variables = {"params": {"image_tower": {"w": jnp.asarray(rng.normal(size=(16, 3)),
                                                           jnp.float32)}}}

  def apply_fn(v, images, train, method):
    assert method == "encode_image" and not train
    emb = images.reshape(images.shape[0], -1) @ v["params"]["image_tower"]["w"]
    return types.SimpleNamespace(global_embedding=emb)
  return types.SimpleNamespace(variables=lambda: variables, apply_fn=apply_fn)


def test_finetune_reports_the_mean_sample_std_and_count_over_seeds_on_the_probe_subsets():
  rng = np.random.default_rng(0)
  n = 40
  labels = np.zeros((n, 1), np.float32)
  labels[::2] = 1
  images = rng.normal(scale=0.5, size=(n, 4, 4, 1)).astype(np.float32)
  images[labels[:, 0] == 1] += 0.3
  c = base_config()
  c.eval.linear_probe.update(finetune=True, finetune_seeds=3, finetune_steps=5,
                             finetune_batch_size=8, fractions=(0.25, 1.0))
  ev = lp.LinearProbeEvaluator(c, ("x",))
  images_fn = lambda split, m: ((images[:28], labels[:28], np.ones((28, 1), bool))
                                if split == c.data.train_split
                                else (images[28:], labels[28:], np.ones((12, 1), bool)))
  out = ev.finetune(_state(rng), images_fn, c.data.train_split, c.data.eval_split)
  for pct in ("25pct", "100pct"):
    tag = f"linear_probe/finetune/{pct}"
    seeds = [out[f"{tag}/seed_{c.seed + i}/macro_auroc"] for i in range(3)]
    assert out[f"{tag}/num_seeds"] == 3
    assert out[f"{tag}/macro_auroc"] == pytest.approx(np.mean(seeds))
    assert out[f"{tag}/macro_auroc_std"] == pytest.approx(np.std(seeds, ddof=1))
  known, pos = lp.known_and_positive(labels[:28], np.ones((28, 1), bool))
  assert out["linear_probe/finetune/25pct/num_train"] == pytest.approx(np.mean(
      [len(protocol.stratified_subset(pos, known, 0.25, c.seed + i)) for i in range(3)]))
  assert out["linear_probe/finetune/100pct/num_train"] == 28
  digests = {out[f"linear_probe/finetune/25pct/seed_{c.seed + i}/subset_crc32"] for i in range(3)}
  assert len(digests) == 3  # three seeds, three recorded subsets
  assert out[f"linear_probe/finetune/100pct/seed_{c.seed}/subset_crc32"] == protocol.subset_digest(
      np.arange(28))


def test_one_seed_reports_no_std():
  runs = [{"t/m": 0.5}]
  assert protocol.aggregate_seeds(runs, "t", ("m",)) == {"t/num_seeds": 1.0, "t/m": 0.5}
