"""Detection evaluator: a YOLOv3-style head on the image tower's three scales, frozen or fine-tuned.

Protocol (docs/evaluation.md, Detection; METHODS.md §4.4, §5.4, §10.1 `yolo_det`):
1. Images and padded boxes of a train and a test split (`features_fn(..., images=True)`); boxes
   are cleaned (`clean_boxes`: clipped to the image, zero-area and unknown-class boxes dropped,
   each counted and reported).
2. Detector classes = the labels with at least one training box (the rest are reported as
   `num_classes_without_train_boxes`); 9 anchors by k-means (IoU distance, seeded) on the
   training boxes' sizes, 3 per scale, smallest at stride 8.
3. For each label fraction (nested, class-stratified, seeded subsets of the training images:
   `protocol.stratified_subset` on "has a box of class k") and each of `seeds` seeds: a fresh
   head (seeded init) trained with Adam on minibatches of `batch_size` images for `steps` steps,
   either on cached frozen features ('frozen') or with the image tower trained too ('finetune';
   the first `finetune_warmup_steps` keep the tower fixed, as LoVT's 100 warm-up steps).
4. Test predictions: scores sigmoid(obj) * sigmoid(class), per-class NMS (`nms`, numpy), top
   `max_dets` per image; mAP over IoU 0.4:0.05:0.75, mAP@0.5, mAP@0.75
   (`metrics.detection.average_precision`, pycocotools-exact) and Object-CXR FROC.
5. Reported per mode and fraction: the mean over seeds, `_std` (sample std, ddof=1, when >= 2
   seeds), `num_seeds`, each seed's value (`seed_<s>/...`, for paired tests) and subset
   (`seed_<s>/subset_crc32`, `protocol.subset_digest`), `num_train`.
   `subset_fn`, when set (the downstream runner sets it from the subsets file next to the
   shards, `data_pipeline.subsets`), replaces the stratified subsets: (fraction, seed, number of
   train images) -> sorted train rows.
   A class without a test box is a counted skip (`num_classes_skipped`), never a NaN.

- `clean_boxes`, `nms`, `postprocess`: numpy helpers (pure).
- `DetectorTrainer`: one compiled update/predict per mode, reused for every fraction and seed.
- `DetectionEvaluator`: reads the splits and runs the protocol.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation.evaluators.protocol import (aggregate_seeds, fraction_tag, minibatch_order,
                                                stratified_subset, subset_digest)
from mmrl.evaluation.metrics import detection as dm
from mmrl.heads import yolo_head
from mmrl.models import multiscale

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune", "both")


def clean_boxes(boxes: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                class_index: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         dict[str, int]]:
  """Padded boxes f[N, NB, 4] (normalised xyxy), labels i[N, NB], mask bool[N, NB] -> the same
  shapes with boxes clipped to [0, 1], labels mapped through `class_index` (label-vocabulary index
  -> detector class; others -1) and mask False for dropped boxes, plus counts
  {'clipped', 'dropped_zero_area', 'dropped_other_class'}. Coordinates are also put in order
  (xmin <= xmax) before clipping."""
  boxes = np.asarray(boxes, np.float32).copy()
  mask = np.asarray(mask, bool).copy()
  labels = np.asarray(labels)
  lo = np.minimum(boxes[..., :2], boxes[..., 2:])
  hi = np.maximum(boxes[..., :2], boxes[..., 2:])
  ordered = np.concatenate([lo, hi], axis=-1)
  clipped = np.clip(ordered, 0.0, 1.0)
  changed = mask & np.any(clipped != boxes, axis=-1)
  area = (clipped[..., 2] - clipped[..., 0]) * (clipped[..., 3] - clipped[..., 1])
  zero = mask & ~(area > 0)
  mapped = np.vectorize(lambda v: class_index.get(int(v), -1), otypes=[np.int32])(labels) \
      if labels.size else labels.astype(np.int32)
  other = mask & ~zero & (mapped < 0)
  keep = mask & ~zero & ~other
  counts = {"clipped": int(np.sum(changed & keep)), "dropped_zero_area": int(zero.sum()),
            "dropped_other_class": int(other.sum())}
  return np.where(keep[..., None], clipped, 0.0), np.where(keep, mapped, -1), keep, counts


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Indices kept by greedy non-maximum suppression (highest score first)."""
  order = np.argsort(-np.asarray(scores), kind="stable")
  keep = []
  while len(order):
    i = order[0]
    keep.append(i)
    if len(order) == 1:
      break
    iou = dm.box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
    order = order[1:][iou <= iou_threshold]
  return np.asarray(keep, np.int64)


def postprocess(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float,
                nms_iou: float, max_dets: int, pre_nms: int = 200
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One image's boxes [N, 4] and scores [N, K] -> (boxes [D, 4] clipped to [0, 1], scores [D],
  classes [D]): per class the `pre_nms` best above `score_threshold`, NMS, then the `max_dets`
  best over all classes."""
  out_b, out_s, out_c = [], [], []
  for k in range(scores.shape[1]):
    idx = np.flatnonzero(scores[:, k] > score_threshold)
    idx = idx[np.argsort(-scores[idx, k], kind="stable")][:pre_nms]
    if not len(idx):
      continue
    kept = idx[nms(boxes[idx], scores[idx, k], nms_iou)]
    out_b.append(boxes[kept])
    out_s.append(scores[kept, k])
    out_c.append(np.full(len(kept), k))
  if not out_b:
    return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
  b, s, c = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_c)
  top = np.argsort(-s, kind="stable")[:max_dets]
  return np.clip(b[top], 0.0, 1.0), s[top], c[top]


class DetectorTrainer:
  """Trains and applies the YOLO head for one mode; compiled once, reused across subsets/seeds.

  `frozen`: inputs are cached pyramids (list of [N, h, w, C]); `finetune`: inputs are images and
  `pyramid(tower_params, images)` runs the tower.
  """

  def __init__(self, *, num_classes: int, anchors: np.ndarray, width: int, lr: float,
               ignore_iou: float, pyramid: Optional[Callable] = None,
               tower_params: Any = None, tower_lr: float = 0.0, warmup_steps: int = 0):
    self.head = yolo_head.YoloHead(num_classes=num_classes, width=width)
    self.anchors = jnp.asarray(anchors, jnp.float32)
    self.finetune = pyramid is not None
    self.tower_params = tower_params
    head_tx = optax.adam(lr)
    if self.finetune:
      tower_lr_fn = lambda step: jnp.where(step < warmup_steps, 0.0, tower_lr)
      labels = {"head": "head", "tower": jax.tree.map(lambda _: "tower", tower_params)}
      self.tx = optax.multi_transform({"head": head_tx, "tower": optax.adam(tower_lr_fn)},
                                      labels)
    else:
      self.tx = head_tx

    def features(params, inputs):
      return pyramid(params["tower"], inputs) if self.finetune else list(inputs)

    def loss_fn(params, inputs, boxes, labels, mask):
      preds = self.head.apply({"params": params["head"]}, features(params, inputs))
      return yolo_head.yolo_loss(preds, boxes, labels, mask, self.anchors,
                                 ignore_iou=ignore_iou)

    def update(params, opt, inputs, boxes, labels, mask):
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, inputs, boxes, labels, mask)
      updates, opt = self.tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, loss, metrics

    def predict(params, inputs):
      preds = self.head.apply({"params": params["head"]}, features(params, inputs))
      return yolo_head.decode(preds, self.anchors)

    self._update = jax.jit(update)
    self._predict = jax.jit(predict)
    self._init_head = jax.jit(self.head.init)
    self._init_opt = jax.jit(self.tx.init)

  def init(self, sample_pyramid: Sequence[np.ndarray], seed: int) -> dict[str, Any]:
    head = self._init_head(jax.random.key(seed), [jnp.asarray(x[:1]) for x in sample_pyramid])
    params = {"head": head["params"]}
    if self.finetune:
      params["tower"] = self.tower_params
    return params

  def fit(self, params, inputs, boxes, labels, mask, rows: np.ndarray, *, steps: int,
          batch_size: int, seed: int) -> tuple[dict[str, Any], float]:
    """Adam on `steps` minibatches of `batch_size` rows (seeded order, rows repeat when few);
    returns (params, last loss)."""
    opt = self._init_opt(params)
    loss = float("nan")
    take = (lambda idx: [x[idx] for x in inputs]) if not self.finetune else (
        lambda idx: inputs[idx])
    for idx in minibatch_order(rows, steps, batch_size, seed):
      params, opt, loss, _ = self._update(params, opt, take(idx), boxes[idx], labels[idx],
                                          mask[idx])
    return params, float(loss)

  def predict(self, params, inputs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, A, 4], scores [N, A, K]) numpy; fixed-shape batches (last one padded)."""
    n = len(inputs) if self.finetune else len(inputs[0])
    boxes, scores = [], []
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size) % n
      batch = inputs[idx] if self.finetune else [x[idx] for x in inputs]
      b, s = self._predict(params, batch)
      m = min(batch_size, n - start)
      boxes.append(np.asarray(b)[:m])
      scores.append(np.asarray(s)[:m])
    return np.concatenate(boxes), np.concatenate(scores)


def score_detections(pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray,
                     gt_labels: np.ndarray, gt_mask: np.ndarray, *, names: Sequence[str],
                     prefix: str, score_threshold: float, nms_iou: float, max_dets: int,
                     iou_thresholds: Sequence[float]) -> dict[str, float]:
  """Postprocesses every test image and returns map_summary + '<prefix>/froc' (+ its levels)."""
  di, db, ds, dc = [], [], [], []
  for i in range(len(pred_boxes)):
    b, s, c = postprocess(pred_boxes[i], pred_scores[i], score_threshold=score_threshold,
                          nms_iou=nms_iou, max_dets=max_dets)
    di.append(np.full(len(b), i))
    db.append(b)
    ds.append(s)
    dc.append(c)
  di, db, ds, dc = (np.concatenate(x) for x in (di, db, ds, dc))
  gi = np.nonzero(gt_mask)[0]
  gb = gt_boxes[gt_mask]
  gl = gt_labels[gt_mask]
  ap = dm.average_precision(di, db, ds, dc, gi, gb, gl, num_classes=len(names),
                            iou_thresholds=iou_thresholds, max_dets=max_dets)
  out = dm.map_summary(ap, iou_thresholds, names, prefix)
  out[f"{prefix}/froc"], _ = dm.froc(di, db, ds, gi, gb, num_images=len(pred_boxes))
  out[f"{prefix}/num_detections"] = float(len(di))
  return out


class DetectionEvaluator:
  """`config.eval.detection`; `__call__(state, features_fn) -> (scalars, {})`, where
  `features_fn(split, max_examples, images=True)` returns `extract_features` output with the
  images and the batches' boxes/box_labels/box_mask."""

  def __init__(self, config: Any, label_names: Sequence[str]):
    self.cfg = config.eval.detection
    self.config = config
    self.data = config.data
    self.label_names = tuple(label_names)
    self.seed = int(config.seed)
    mode = str(self.cfg.mode)
    if mode not in MODES:
      raise ValueError(f"config.eval.detection.mode={mode!r} is not one of {MODES}")
    if int(self.cfg.seeds) < 1:
      raise ValueError(f"config.eval.detection.seeds={self.cfg.seeds} must be >= 1")
    for f in self.cfg.fractions:
      if not 0 < float(f) <= 1:
        raise ValueError(f"config.eval.detection.fractions has {f}; each must be in (0, 1]")
    self.modes = ("frozen", "finetune") if mode == "both" else (mode,)
    # (fraction, seed, n_train) -> sorted train rows; None = stratified_subset (module docstring)
    self.subset_fn: Optional[Callable[[float, int, int], np.ndarray]] = None

  def __call__(self, state, features_fn) -> tuple[dict[str, float], dict]:
    c = self.cfg
    train_split = c.train_split or self.data.train_split
    test_split = c.test_split or self.data.eval_split
    train = features_fn(train_split, c.max_train, images=True)
    test = features_fn(test_split, c.max_test, images=True)
    # Detector classes: labels with a usable training box.
    _, raw_labels, raw_mask, _ = clean_boxes(train["boxes"], train["box_labels"],
                                             train["box_mask"],
                                             {k: k for k in range(len(self.label_names))})
    present = sorted(set(raw_labels[raw_mask].tolist()))
    out: dict[str, float] = {
        "detection/num_classes_without_train_boxes": float(len(self.label_names) - len(present))}
    if not present:
      log.warning("detection: split %s has no usable box; nothing to train", train_split)
      return out, {}
    class_index = {lab: j for j, lab in enumerate(present)}
    names = [self.label_names[lab] for lab in present]
    tr_boxes, tr_labels, tr_mask, tr_counts = clean_boxes(
        train["boxes"], train["box_labels"], train["box_mask"], class_index)
    te_boxes, te_labels, te_mask, te_counts = clean_boxes(
        test["boxes"], test["box_labels"], test["box_mask"], class_index)
    for split, counts in (("train", tr_counts), ("test", te_counts)):
      for key, v in counts.items():
        out[f"detection/{split}_boxes_{key}"] = float(v)
    out["detection/num_train_images"] = float(len(tr_boxes))
    out["detection/num_test_images"] = float(len(te_boxes))
    out["detection/num_test_boxes"] = float(te_mask.sum())
    wh = (tr_boxes[..., 2:] - tr_boxes[..., :2])[tr_mask]
    anchors = yolo_head.kmeans_anchors(wh, seed=self.seed)
    has_class = np.zeros((len(tr_boxes), len(names)), bool)
    for k in range(len(names)):
      has_class[:, k] = np.any(tr_mask & (tr_labels == k), axis=1)
    known = np.ones_like(has_class)

    pyramid = multiscale.pyramid_fn(self.config.model)
    variables = state.variables()

    def tower_pyramid(tower, images):
      v = dict(variables)
      v["params"] = {**variables["params"], "image_tower": tower}
      return pyramid(state.apply_fn, v, images)

    bs = int(c.batch_size)
    eval_bs = int(self.config.eval.batch_size)
    frozen_fn = jax.jit(lambda images: pyramid(state.apply_fn, variables, images))
    for mode in self.modes:
      if mode == "frozen":
        tr_in = _batched_pyramid(frozen_fn, train["image"], eval_bs)
        te_in = _batched_pyramid(frozen_fn, test["image"], eval_bs)
        trainer = DetectorTrainer(num_classes=len(names), anchors=anchors, width=int(c.width),
                                  lr=float(c.lr), ignore_iou=float(c.ignore_iou))
        sample = tr_in
      else:
        tr_in, te_in = np.asarray(train["image"]), np.asarray(test["image"])
        trainer = DetectorTrainer(num_classes=len(names), anchors=anchors, width=int(c.width),
                                  lr=float(c.lr), ignore_iou=float(c.ignore_iou),
                                  pyramid=tower_pyramid,
                                  tower_params=variables["params"]["image_tower"],
                                  tower_lr=float(c.finetune_lr),
                                  warmup_steps=int(c.finetune_warmup_steps))
        sample = [np.zeros((1,) + x.shape[1:], x.dtype) for x in
                  jax.eval_shape(frozen_fn, jnp.zeros((1,) + tr_in.shape[1:], jnp.float32))]
      for fraction in c.fractions:
        tag = f"detection/{mode}/{fraction_tag(float(fraction))}"
        runs: list[dict[str, float]] = []
        for i in range(int(c.seeds)):
          seed = self.seed + i
          t0 = time.time()
          rows = (np.asarray(self.subset_fn(float(fraction), seed, len(tr_boxes)))
                  if self.subset_fn else stratified_subset(has_class, known, float(fraction), seed))
          params = trainer.init(sample, seed)
          params, loss = trainer.fit(params, tr_in, tr_boxes, tr_labels, tr_mask, rows,
                                     steps=int(c.steps), batch_size=bs, seed=seed)
          pb, ps = trainer.predict(params, te_in, eval_bs)
          run = score_detections(pb, ps, te_boxes, te_labels, te_mask, names=names, prefix=tag,
                                 score_threshold=float(c.score_threshold),
                                 nms_iou=float(c.nms_iou), max_dets=int(c.max_dets),
                                 iou_thresholds=tuple(c.iou_thresholds))
          run[f"{tag}/train_loss"] = loss
          log.info("%s seed %d: %d train images, %.0f s, loss %.3f, mAP %.4f, mAP@0.5 %.4f, "
                   "FROC %.4f", tag, seed, len(rows), time.time() - t0, loss,
                   run.get(f"{tag}/map", float("nan")), run.get(f"{tag}/map@0.5", float("nan")),
                   run[f"{tag}/froc"])
          run[f"{tag}/num_train"] = float(len(rows))
          runs.append(run)
          out[f"{tag}/seed_{seed}/subset_crc32"] = subset_digest(rows)
          for key in ("map", "map@0.5", "froc"):
            if f"{tag}/{key}" in run:
              out[f"{tag}/seed_{seed}/{key}"] = run[f"{tag}/{key}"]
        out.update(aggregate_seeds(runs, tag, ("map", "map@0.5", "map@0.75", "froc")))
    return out, {}


def _batched_pyramid(fn, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
  """Frozen pyramid of all images (fixed-shape batches; the last one padded by wrapping)."""
  n = len(images)
  parts = None
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    feats = [np.asarray(f)[:min(batch_size, n - start)] for f in fn(jnp.asarray(images[idx]))]
    parts = [[f] for f in feats] if parts is None else [p + [f] for p, f in zip(parts, feats)]
  return [np.concatenate(p) for p in parts]


__all__ = ["DetectionEvaluator", "DetectorTrainer", "clean_boxes", "nms", "postprocess",
           "score_detections", "MODES"]
