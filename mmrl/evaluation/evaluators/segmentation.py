"""Segmentation protocols scored by Dice: a cheap head on the frozen grid, or a dense decoder.

Protocols (`config.eval.segmentation.head`; docs/evaluation.md, Segmentation):
  linear / mlp  the frozen local features [N, gh, gw, D] of a train split, standardised per
      channel; a 1x1 conv to one logit per cell ('mlp': 1x1 conv -> ReLU -> 1x1 conv, `hidden`
      wide) bilinearly upsampled to the mask size; trained full-batch with Adam on BCE + soft Dice
      for `steps` steps (LoVT's `linear_seg`, METHODS.md §10.1).
  unet / setr / dense  a U-Net decoder on conv2..conv5 of a ResNet, or SETR-PUP on a ViT's patch
      grid ('dense' picks by tower), frozen or fine-tuned encoder (`finetune`), BCE + soft Dice,
      minibatch Adam (`mmrl.evaluation.evaluators.dense_segmentation`; the papers' `unet_seg`).
Every protocol runs for each label fraction in `fractions` (train subsets nested, stratified by
empty / non-empty target mask, seeded: `subset_rows`) and each of `num_seeds` seeds (seed i =
config.seed + i draws the subset, the initialisation and the batch order); each number is the mean
over seeds with its sample std (ddof = 1) and the seed count.

Dice, as MGCA's `SSLSegmenter.get_dice` computes it: per test image, 2|P∩T| / (|P| + |T|) of the
prediction P = (sigmoid >= 0.5) and the target T; an image whose target is empty scores 1 when
the prediction is empty too and 0 otherwise; the mean over all scored test images ("whole test
set", empty targets included). `require_mask` = True leaves images without any target mask out of
training and scoring (an image without masks is usually unannotated, e.g. COVID rows without a
lung mask); set it False where an empty mask means "no finding" (the synthetic set). The target of
an example is the union of its masks ('any') or of the masks of one finding (`target`).

- `dice`: binary Dice per example (both empty -> 1).
- `mask_targets`: batch masks -> per-example targets.
- `subset_rows`: the nested, stratified, seeded train subsets.
- `fit_seg_head`, `predict_seg_head`: the linear / mlp head (JAX).
- `SegmentationEvaluator`: reads the splits with masks and runs the configured protocol. Its
  `subset_fn`, when set ((fraction, seed, number of train rows) -> sorted rows of the whole train
  split; the downstream runner's subsets file), replaces `subset_rows`; rows without a target
  mask are then left out of the given subset.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation.evaluators import dense_segmentation as dense
from mmrl.evaluation.evaluators.protocol import fraction_tag, stratified_subset
from mmrl.viz import sheets

LINEAR_HEADS = ("linear", "mlp")
HEADS = LINEAR_HEADS + dense.DENSE_HEADS


def dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Binary Dice 2|P∩T| / (|P| + |T|) per example of bool [N, H, W]; 1 where both are empty."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.ndim < 2:
    raise ValueError(f"dice: predictions {pred.shape} and target masks {target.shape} must both be "
                     "[N, H, W] of the same size; resize the masks to the image size")
  p = pred.astype(bool).reshape(len(pred), -1)
  t = target.astype(bool).reshape(len(target), -1)
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
  return dense.bce_dice_loss(_head_logits(params, x, target.shape[1:]), target)


def subset_rows(nonempty: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted train rows of a `fraction` subset, stratified by empty / non-empty target mask.

  protocol.stratified_subset with the one 'label' non-empty: ceil(fraction * count) of the
  non-empty and of the empty rows (at least one of each present class), in one seeded order, so
  the same seed nests the subsets (1 % within 10 % within 100 %)."""
  nonempty = np.asarray(nonempty, bool)[:, None]
  return stratified_subset(nonempty, np.ones_like(nonempty), fraction, seed)


def fit_seg_head(local: np.ndarray, targets: np.ndarray, *, head: str = "linear",
                 hidden: int = 64, steps: int = 300, lr: float = 0.05, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """Trains the head on standardised local features [N, gh, gw, D] for bool targets [N, H, W]."""
  if head not in LINEAR_HEADS:
    raise ValueError(f"config.eval.segmentation.head={head!r} is not one of {LINEAR_HEADS}")
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
  """`config.eval.segmentation` (head, target, fractions, num_seeds, finetune, splits, sizes...).

  `__call__(state, features_fn) -> (scalars, images)` with `features_fn(split, max_examples,
  with_masks=True, images=...)` giving `extract_features` output. Scalars, for the head h and
  each fraction tag p ('1pct', '10pct', '100pct'):
    segmentation/<h>/<p>/dice        mean over seeds of the test-set Dice
    segmentation/<h>/<p>/dice_std    sample std over seeds (ddof 1; 0 for one seed)
    segmentation/<h>/<p>/num_seeds, .../num_train (mean subset size), .../dice_seed<i>
    segmentation/<h>/<p>/dice_nonempty  the same mean over the test images with a target pixel
  plus segmentation/dice (= the largest fraction's mean, the headline number),
  segmentation/num_train, num_test, num_test_empty (test targets without a pixel).
  With no scorable train or test image: segmentation/skipped = 1 and no Dice (never a NaN).
  Dense heads need `state` (the image tower's parameters); `model_cfg` defaults to config.model.
  """

  def __init__(self, config: Any, label_names: Sequence[str]):
    self.cfg = config.eval.segmentation
    self.data = config.data
    self.model_cfg = config.model
    self.seed = int(config.seed)
    target = str(self.cfg.target)
    names = tuple(label_names)
    if target not in ("any",) + names:
      raise ValueError(f"config.eval.segmentation.target={target!r}: use 'any' (union of an "
                       f"image's masks) or one of the label names {list(names)}")
    self.target_index = None if target == "any" else names.index(target)
    head = str(self.cfg.head)
    if head not in HEADS:
      raise ValueError(f"config.eval.segmentation.head={head!r} is not one of {HEADS}")
    self.head = head if head in LINEAR_HEADS else dense.resolve_head(head, self.model_cfg)
    self.fractions = tuple(float(f) for f in self.cfg.get("fractions", (1.0,)))
    for f in self.fractions:
      if not 0 < f <= 1:
        raise ValueError(f"config.eval.segmentation.fractions has {f}; each must be in (0, 1]")
    self.num_seeds = int(self.cfg.get("num_seeds", 1))
    if self.num_seeds < 1:
      raise ValueError(f"config.eval.segmentation.num_seeds={self.num_seeds} must be >= 1")
    self.subset_fn: Optional[Callable[[float, int, int], np.ndarray]] = None

  def _split(self, split: str, max_examples: int, images: bool = False):
    f = self.features_fn(split, max_examples, with_masks=True, images=images)
    if "masks" not in f:
      raise ValueError(f"segmentation: split {split!r} batches carry no masks")
    t = mask_targets(f["masks"], f["mask_labels"], f["mask_present"], self.target_index)
    keep = t.any(axis=(1, 2)) if self.cfg.require_mask else np.ones(len(t), bool)
    return f, t, keep

  def runs(self, train_targets: np.ndarray, kept: Optional[np.ndarray] = None
           ) -> dict[float, list[tuple[np.ndarray, int]]]:
    """fraction -> [(train rows, seed)] for seeds config.seed + 0 .. num_seeds - 1.

    `kept`: bool over the whole train split, True for the rows of `train_targets` (needed with
    `subset_fn`, whose rows index the whole split)."""
    if self.subset_fn is None:
      nonempty = train_targets.any(axis=(1, 2))
      return {f: [(subset_rows(nonempty, f, self.seed + i), self.seed + i)
                  for i in range(self.num_seeds)] for f in self.fractions}
    kept = np.ones(len(train_targets), bool) if kept is None else np.asarray(kept, bool)
    kept_rows = np.flatnonzero(kept)
    out = {}
    for f in self.fractions:
      out[f] = []
      for i in range(self.num_seeds):
        rows = np.flatnonzero(np.isin(kept_rows, np.asarray(self.subset_fn(f, self.seed + i,
                                                                           len(kept)))))
        if not len(rows):
          raise ValueError(f"segmentation: the {100 * f:g} % subset of seed {self.seed + i} "
                           "holds no training image with a target mask; use a larger fraction")
        out[f].append((rows, self.seed + i))
    return out

  def _linear(self, train_local, train_t, test_local, out_hw, runs):
    c = self.cfg
    probs = []
    for rows, seed in runs:
      params = fit_seg_head(train_local[rows], train_t[rows], head=self.head, hidden=c.hidden,
                            steps=c.steps, lr=c.lr, seed=seed)
      probs.append(predict_seg_head(params, test_local, out_hw))
    return probs

  def __call__(self, state, features_fn) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    self.features_fn = features_fn
    c = self.cfg
    is_dense = self.head not in LINEAR_HEADS
    train, train_t, train_keep = self._split(c.train_split or self.data.train_split, c.max_train,
                                             images=is_dense)
    test, test_t, test_keep = self._split(c.test_split or self.data.eval_split, c.max_test,
                                          images=is_dense or int(c.num_sheet_examples) > 0)
    test_t = test_t[test_keep]
    out = {"segmentation/num_train": float(train_keep.sum()),
           "segmentation/num_test": float(test_keep.sum()),
           "segmentation/num_test_empty": float(np.sum(~test_t.any(axis=(1, 2))))}
    if train_keep.sum() == 0 or test_keep.sum() == 0:
      out["segmentation/skipped"] = 1.0  # reported, never a NaN Dice
      return out, {}
    train_t = train_t[train_keep]
    runs = self.runs(train_t, train_keep)
    flat = [r for f in self.fractions for r in runs[f]]
    if is_dense:
      if state is None:
        raise ValueError(f"segmentation head {self.head!r} trains on the image tower: pass the "
                         "TrainState (the evaluator got state=None)")
      encode, enc_params = dense.make_encoder(self.model_cfg, state, self.head)
      probs = dense.fit_predict_dense(
          encode, enc_params, dense.make_decoder(self.head, c), self.head,
          train["image"][train_keep], train_t, test["image"][test_keep], flat,
          finetune=bool(c.finetune), steps=int(c.dense_steps), batch_size=int(c.batch_size),
          lr=float(c.dense_lr), finetune_lr=float(c.finetune_lr))
    else:
      probs = self._linear(train["image_local"][train_keep], train_t,
                           test["image_local"][test_keep], test_t.shape[1:], flat)
    nonempty = test_t.any(axis=(1, 2))
    per_image = [dice(p >= 0.5, test_t) for p in probs]
    scores = iter([float(np.mean(d)) for d in per_image])
    scores_nonempty = iter([float(np.mean(d[nonempty])) if nonempty.any() else None
                            for d in per_image])
    prefix = f"segmentation/{self.head}" + ("_finetune" if is_dense and c.finetune else "")
    for f in self.fractions:
      vals = np.array([next(scores) for _ in runs[f]])
      vals_nonempty = [next(scores_nonempty) for _ in runs[f]]
      tag = f"{prefix}/{fraction_tag(f)}"
      if nonempty.any():  # the Dice of the images with a target pixel alone
        out[f"{tag}/dice_nonempty"] = float(np.mean(vals_nonempty))
      out[f"{tag}/dice"] = float(vals.mean())
      out[f"{tag}/dice_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
      out[f"{tag}/num_seeds"] = float(len(vals))
      out[f"{tag}/num_train"] = float(np.mean([len(r) for r, _ in runs[f]]))
      for i, v in enumerate(vals):
        out[f"{tag}/dice_seed{i}"] = float(v)
    top = max(self.fractions)
    out["segmentation/dice"] = out[f"{prefix}/{fraction_tag(top)}/dice"]
    images = {}
    if "image" in test and c.num_sheet_examples > 0:
      n = min(int(c.num_sheet_examples), int(test_keep.sum()))
      images["segmentation/examples"] = sheets.segmentation_sheet(
          test["image"][test_keep][:n], test_t[:n], probs[-1][:n] >= 0.5,
          dice=per_image[-1][:n], title=f"Segmentation of '{c.target}' with a "
          f"{'fine-tuned' if is_dense and c.finetune else 'frozen'} encoder + {self.head} head "
          f"(last run): {n} test images, one per row (mean Dice over all "
          f"{int(test_keep.sum())}: {float(np.mean(per_image[-1])):.3f}).")
    return out, images


__all__ = ["dice", "mask_targets", "subset_rows", "fit_seg_head", "predict_seg_head",
           "SegmentationEvaluator", "HEADS", "LINEAR_HEADS"]
