"""Frozen-encoder segmentation: a light head on the image tower's local grid, scored by Dice.

Protocol (docs/evaluation.md): the frozen local features [N, gh, gw, D] of a train split,
standardised per channel; a head ('linear': a 1x1 conv to one logit per cell; 'mlp': 1x1 conv ->
ReLU -> 1x1 conv, `hidden` wide) whose logit grid is bilinearly upsampled to the mask size;
trained full-batch with Adam on BCE + soft Dice for a fixed number of steps; then the binary Dice
of (sigmoid >= 0.5) against the target mask on a held-out split, averaged over examples. The
target of an example is the union of its masks ('any') or of the masks of one finding
(`target` = a label name). Examples without any target mask are left out by default (an image
without masks is usually unannotated, e.g. COVID rows without a lung mask).

- `dice`: binary Dice per example (both empty -> 1).
- `mask_targets`: batch masks -> per-example targets.
- `fit_seg_head`, `predict_seg_head`: the head (JAX).
- `SegmentationEvaluator`: reads the splits with masks and calls them.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation import sheets

HEADS = ("linear", "mlp")


def dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Binary Dice 2|P∩T| / (|P| + |T|) per example of bool [N, H, W]; 1 where both are empty."""
  p = np.asarray(pred, bool).reshape(len(pred), -1)
  t = np.asarray(target, bool).reshape(len(target), -1)
  inter = np.sum(p & t, axis=1).astype(np.float64)
  total = (np.sum(p, axis=1) + np.sum(t, axis=1)).astype(np.float64)
  return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def mask_targets(masks: np.ndarray, mask_labels: np.ndarray, mask_present: np.ndarray,
                 target_index: int | None = None) -> np.ndarray:
  """bool [N, H, W]: union of each example's present masks (of label `target_index` if given)."""
  sel = np.asarray(mask_present, bool)
  if target_index is not None:
    sel = sel & (np.asarray(mask_labels) == target_index)
  return np.any((np.asarray(masks) > 0.5) & sel[:, :, None, None], axis=1)


def _head_logits(params, x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  if "w1" in params:
    x = jax.nn.relu(x @ params["w1"] + params["b1"])
  grid = (x @ params["w"] + params["b"])[..., 0]  # [N, gh, gw]
  return jax.image.resize(grid, (grid.shape[0],) + tuple(out_hw), "bilinear")


def _loss(params, x, target):
  logits = _head_logits(params, x, target.shape[1:]).astype(jnp.float32)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  prob = jax.nn.sigmoid(logits)
  inter = jnp.sum(prob * target, axis=(1, 2))
  soft_dice = (2 * inter + 1.0) / (jnp.sum(prob, axis=(1, 2)) + jnp.sum(target, axis=(1, 2)) + 1.0)
  return bce + jnp.mean(1.0 - soft_dice)


def fit_seg_head(local: np.ndarray, targets: np.ndarray, *, head: str = "linear",
                 hidden: int = 64, steps: int = 300, lr: float = 0.05, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """Trains the head on standardised local features [N, gh, gw, D] for bool targets [N, H, W]."""
  if head not in HEADS:
    raise ValueError(f"config.eval.segmentation.head={head!r} is not one of {HEADS}")
  local = np.asarray(local, np.float32)
  mean = local.reshape(-1, local.shape[-1]).mean(axis=0)
  std = local.reshape(-1, local.shape[-1]).std(axis=0) + 1e-6
  x = jnp.asarray((local - mean) / std)
  y = jnp.asarray(targets, jnp.float32)
  d = local.shape[-1]
  params = {"w": jnp.zeros((d, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
  if head == "mlp":
    k = jax.random.key(seed)
    params = {"w1": jax.random.normal(k, (d, hidden), jnp.float32) / np.sqrt(d),
              "b1": jnp.zeros((hidden,), jnp.float32),
              "w": jnp.zeros((hidden, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
  tx = optax.adam(lr)

  @jax.jit
  def run(p):
    def body(_, carry):
      p, opt = carry
      updates, opt = tx.update(jax.grad(_loss)(p, x, y), opt, p)
      return optax.apply_updates(p, updates), opt
    return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]

  out = {k: np.asarray(v) for k, v in jax.device_get(run(params)).items()}
  out.update(mean=mean, std=std)
  return out


def predict_seg_head(params: dict[str, np.ndarray], local: np.ndarray,
                     out_hw: tuple[int, int], batch: int = 64) -> np.ndarray:
  """Probabilities f32[N, H, W]."""
  head = {k: jnp.asarray(v) for k, v in params.items() if k not in ("mean", "std")}
  fn = jax.jit(lambda x: jax.nn.sigmoid(_head_logits(head, x, out_hw)))
  x = (np.asarray(local, np.float32) - params["mean"]) / params["std"]
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch])))
                         for i in range(0, len(x), batch)])


class SegmentationEvaluator:
  """`config.eval.segmentation` (train_split, test_split, target, head, steps, lr, max_train,
  max_test, require_mask, max_masks). `__call__(state, features_fn) -> (scalars, images)` with
  `features_fn(split, max_examples, with_masks=True, images=...)` giving `extract_features`
  output."""

  def __init__(self, config: Any, label_names: Sequence[str]):
    self.cfg = config.eval.segmentation
    self.data = config.data
    self.seed = int(config.seed)
    target = str(self.cfg.target)
    names = tuple(label_names)
    if target not in ("any",) + names:
      raise ValueError(f"config.eval.segmentation.target={target!r}: use 'any' (union of an "
                       f"image's masks) or one of the label names {list(names)}")
    self.target_index = None if target == "any" else names.index(target)

  def _split(self, split: str, max_examples: int, images: bool = False):
    f = self.features_fn(split, max_examples, with_masks=True, images=images)
    if "masks" not in f:
      raise ValueError(f"segmentation: split {split!r} batches carry no masks")
    t = mask_targets(f["masks"], f["mask_labels"], f["mask_present"], self.target_index)
    keep = t.reshape(len(t), -1).any(axis=1) if self.cfg.require_mask else np.ones(len(t), bool)
    return f, t, keep

  def __call__(self, state, features_fn) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    del state
    self.features_fn = features_fn
    c = self.cfg
    train, train_t, train_keep = self._split(c.train_split or self.data.train_split, c.max_train)
    test, test_t, test_keep = self._split(c.test_split or self.data.eval_split, c.max_test,
                                          images=int(c.num_sheet_examples) > 0)
    out = {"segmentation/num_train": float(train_keep.sum()),
           "segmentation/num_test": float(test_keep.sum())}
    if train_keep.sum() == 0 or test_keep.sum() == 0:
      out["segmentation/dice"] = float("nan")
      return out, {}
    params = fit_seg_head(train["image_local"][train_keep], train_t[train_keep], head=c.head,
                          hidden=c.hidden, steps=c.steps, lr=c.lr, seed=self.seed)
    prob = predict_seg_head(params, test["image_local"][test_keep], test_t.shape[1:])
    scores = dice(prob >= 0.5, test_t[test_keep])
    out["segmentation/dice"] = float(np.mean(scores))
    out["segmentation/dice_std"] = float(np.std(scores))
    images = {}
    if "image" in test and c.num_sheet_examples > 0:
      n = min(int(c.num_sheet_examples), int(test_keep.sum()))
      images["segmentation/examples"] = sheets.segmentation_sheet(
          test["image"][test_keep][:n], test_t[test_keep][:n], prob[:n] >= 0.5,
          dice=scores[:n], title=f"Segmentation of '{c.target}' with a frozen encoder + "
          f"{c.head} head: {n} test images, one per row (mean Dice over all "
          f"{int(test_keep.sum())}: {float(np.mean(scores)):.3f}).")
    return out, images


__all__ = ["dice", "mask_targets", "fit_seg_head", "predict_seg_head", "SegmentationEvaluator",
           "HEADS"]
