"""Linear probe: known answers on separable features, the label-fraction subset, fine-tuning."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmrl.evaluation.evaluators import linear_probe as lp
from mmrl.evaluation.evaluators import protocol
from mmrl.evaluation.metrics.classification import roc_auc


def _separable(n=60, d=6, k=3, seed=0):
  """Features whose first k dimensions carry the labels (+-2 apart), plus noise dimensions."""
  rng = np.random.default_rng(seed)
  pos = rng.random((n, k)) < 0.4
  pos[0], pos[1] = True, False  # both classes in every label
  x = rng.normal(scale=0.1, size=(n, d))
  x[:, :k] += np.where(pos, 1.0, -1.0)
  return x.astype(np.float32), pos


def test_perfectly_separable_features_give_probe_auroc_one():
  x, pos = _separable()
  known = np.ones_like(pos)
  out = lp.linear_probe(x[:40], pos[:40], known[:40], x[40:], pos[40:], known[40:],
                        names=("a", "b", "c"), fractions=(1.0,), steps=200)
  assert out["linear_probe/100pct/macro_auroc"] == 1.0
  assert {out[f"linear_probe/100pct/auroc/{n}"] for n in "abc"} == {1.0}


def test_labels_with_one_class_get_no_auroc_and_uncertain_entries_are_left_out():
  labels = np.array([[1, 0], [0, 0], [-1, 0], [1, 0]], np.float32)
  mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0]], bool)
  known, pos = lp.known_and_positive(labels, mask)
  assert known.tolist() == [[1, 1], [1, 1], [0, 1], [1, 0]]
  scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.99, 0.3], [0.8, 0.4]])
  out = lp.probe_auroc(scores, pos, known, ("a", "b"), "p")
  assert out == {"p/auroc/a": 1.0, "p/macro_auroc": 1.0}  # 'b' is all negative


def test_label_fraction_subset_is_stratified_deterministic_and_nested():
  rng = np.random.default_rng(3)
  n, k = 500, 4
  pos = rng.random((n, k)) < np.array([0.02, 0.1, 0.3, 0.5])
  known = rng.random((n, k)) < 0.9
  small = protocol.stratified_subset(pos, known, 0.01, seed=7)
  assert np.array_equal(small, protocol.stratified_subset(pos, known, 0.01, seed=7))
  assert not np.array_equal(small, protocol.stratified_subset(pos, known, 0.01, seed=8))
  for label in range(k):  # at least one example of each class of every label
    assert (pos[small, label] & known[small, label]).any()
    assert (~pos[small, label] & known[small, label]).any()
  medium = protocol.stratified_subset(pos, known, 0.1, seed=7)
  assert set(small) <= set(medium)
  assert 0.1 * n <= len(medium) <= 0.1 * n * k + k
  for label in range(k):  # per-label class proportions within rounding of the whole set
    for cls in (pos[:, label] & known[:, label], ~pos[:, label] & known[:, label]):
      assert cls[medium].sum() >= np.ceil(0.1 * cls.sum())
  assert np.array_equal(protocol.stratified_subset(pos, known, 1.0, seed=7), np.arange(n))
  with pytest.raises(ValueError, match="fractions"):
    protocol.stratified_subset(pos, known, 0.0, seed=0)


def test_fit_on_a_subset_equals_fit_on_the_subset_rows():
  x, pos = _separable(n=30)
  known = np.ones_like(pos)
  rows = np.arange(0, 30, 3)
  a = lp.fit_logistic(x, pos, known, rows=rows, steps=50)
  b = lp.fit_logistic(x[rows], pos[rows], known[rows], steps=50)
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-6)


def test_finetuning_a_tiny_tower_separates_bright_and_dark_images():
  rng = np.random.default_rng(0)
  pos = np.zeros((24, 1), bool)
  pos[::2] = True
  images = rng.normal(scale=0.1, size=(24, 4, 4, 1)).astype(np.float32)
  images[pos[:, 0]] += 1.0
  tower = {"w": jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)}

  def apply_image(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"]

  logits = lp.finetune_probe(apply_image, tower, images[:16], pos[:16], np.ones((16, 1), bool),
                             images[16:], [np.arange(16), np.arange(4)], steps=30, lr=1e-2,
                             batch_size=8)
  assert len(logits) == 2 and logits[0].shape == (8, 1)
  for lg in logits:
    assert roc_auc(lg[:, 0], pos[16:, 0]) == 1.0
