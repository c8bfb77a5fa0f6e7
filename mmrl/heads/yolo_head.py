"""A YOLOv3-style detection head on three feature scales: anchors, targets, loss, decoding.

Facts taken from YOLOv3 (Redmon & Farhadi 2018) as used by LoVT and MGCA (METHODS.md §4.4,
§5.4, §10.1): 3 scales (strides 8/16/32 = conv3/4/5) x 3 anchors each; per anchor and cell
(tx, ty, tw, th, objectness, K class logits); a box is (cell + sigmoid(t_xy)) / grid and
anchor * exp(t_wh); each ground-truth box is assigned to the one anchor (of all 9) with the best
shape IoU, in the cell holding its centre; predictions whose box overlaps any ground-truth box
with IoU > `ignore_iou` are not penalised as background; independent sigmoid class scores.

Our own choices (listed in docs/evaluation.md, Detection): the neck adds the upsampled coarser
level to a 1x1 lateral projection (an FPN-style top-down path; YOLOv3 concatenates), then one
3x3 conv (leaky ReLU 0.1) and a 1x1 prediction conv per scale, `width` channels throughout;
objectness/class biases start at the prior 0.01; the loss (sum over cells, mean over images) is
BCE on (sigmoid t_xy) offsets, 0.5 * squared error on t_wh, both weighted 2 - w * h, BCE on
objectness and on the classes of assigned anchors.

- `shape_iou`, `kmeans_anchors`: anchors fitted to the training boxes (IoU distance, seeded).
- `YoloHead`: the Flax module (pyramid -> raw predictions per scale).
- `encode_targets`: padded boxes [B, NB] -> fixed-shape dense targets per scale (jit-able).
- `yolo_loss`: loss and metrics.
- `decode`: raw predictions -> boxes [B, N, 4] (normalised xyxy) and scores [B, N, K].
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_SCALES = 3
ANCHORS_PER_SCALE = 3
_PRIOR_BIAS = float(np.log(0.01 / 0.99))


def shape_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
  """IoU [N, M] of boxes given by (w, h) aligned at a common corner (numpy or jax arrays)."""
  xp = jnp if isinstance(wh_a, jax.Array) or isinstance(wh_b, jax.Array) else np
  inter = (xp.minimum(wh_a[:, None, 0], wh_b[None, :, 0])
           * xp.minimum(wh_a[:, None, 1], wh_b[None, :, 1]))
  union = (wh_a[:, 0] * wh_a[:, 1])[:, None] + (wh_b[:, 0] * wh_b[:, 1])[None, :] - inter
  return inter / xp.maximum(union, 1e-12)


def kmeans_anchors(wh: np.ndarray, k: int = NUM_SCALES * ANCHORS_PER_SCALE, *, seed: int = 0,
                   iters: int = 100) -> np.ndarray:
  """k anchors f32[k, 2] (w, h) fitted to box sizes `wh` [N, 2] by k-means with distance
  1 - shape IoU (YOLOv2's anchor clustering; medians as centres), seeded, sorted by area.

  With fewer distinct sizes than k, the missing anchors are the distinct sizes scaled by powers of
  2 (so small training sets still give k valid anchors).
  """
  wh = np.asarray(wh, np.float64).reshape(-1, 2)
  wh = wh[(wh > 0).all(axis=1)]
  if not len(wh):
    raise ValueError("kmeans_anchors: no training box with positive width and height; the "
                     "detection train split has no usable boxes (check its boxes/* features)")
  distinct = np.unique(wh, axis=0)
  if len(distinct) < k:
    scales = 2.0 ** np.arange(-(k // 2), k - k // 2)
    extra = np.concatenate([distinct * s for s in scales if s != 1])
    centres = np.concatenate([distinct, extra])[:k]
    centres = np.clip(centres, 1e-4, 1.0)
  else:
    rng = np.random.default_rng(seed)
    centres = distinct[rng.choice(len(distinct), k, replace=False)]
    for _ in range(iters):
      assign = np.argmax(shape_iou(wh, centres), axis=1)
      new = np.stack([np.median(wh[assign == j], axis=0) if np.any(assign == j) else centres[j]
                      for j in range(k)])
      if np.allclose(new, centres):
        break
      centres = new
  return centres[np.argsort(centres[:, 0] * centres[:, 1], kind="stable")].astype(np.float32)


class YoloHead(nn.Module):
  """`__call__(pyramid) -> [f32[B, h, w, A, 5 + K]]` per scale, pyramid fine to coarse."""
  num_classes: int
  width: int = 64
  num_anchors: int = ANCHORS_PER_SCALE

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array]) -> list[jax.Array]:
    if len(pyramid) != NUM_SCALES:
      raise ValueError(f"YoloHead expects {NUM_SCALES} feature scales, got {len(pyramid)}")
    a, k = self.num_anchors, self.num_classes
    bias = np.zeros((a, 5 + k), np.float32)
    bias[:, 4:] = _PRIOR_BIAS
    bias_init = lambda *_: jnp.asarray(bias.reshape(-1))
    outs: list[jax.Array] = [None] * NUM_SCALES  # type: ignore[list-item]
    above = None
    for i in reversed(range(NUM_SCALES)):  # coarse -> fine
      x = nn.Conv(self.width, (1, 1), name=f"lateral{i}")(pyramid[i].astype(jnp.float32))
      if above is not None:
        x = x + jax.image.resize(above, x.shape[:3] + (above.shape[-1],), "nearest")
      above = x
      y = nn.leaky_relu(nn.Conv(self.width, (3, 3), name=f"conv{i}")(x), 0.1)
      y = nn.Conv(a * (5 + k), (1, 1), bias_init=bias_init, name=f"predict{i}")(y)
      outs[i] = y.reshape(y.shape[:3] + (a, 5 + k))
    return outs


def _assign(boxes: jax.Array, anchors: jax.Array) -> jax.Array:
  """Index [B, NB] of the best-shape-IoU anchor (of all) for each box."""
  wh = boxes[..., 2:] - boxes[..., :2]
  iou = shape_iou(wh.reshape(-1, 2), anchors)
  return jnp.argmax(iou, axis=1).reshape(boxes.shape[:2])


def encode_targets(boxes: jax.Array, labels: jax.Array, mask: jax.Array, anchors: jax.Array,
                   grids: Sequence[tuple[int, int]], num_classes: int
                   ) -> list[dict[str, jax.Array]]:
  """Dense targets per scale from padded boxes (fixed shapes, jit-able).

  Args:
    boxes: f32[B, NB, 4] normalised xyxy; labels: i32[B, NB] class 0..K-1; mask: bool[B, NB].
    anchors: f32[S * A, 2] (w, h) normalised, scale-major (anchors[s * A + a]).
    grids: (h, w) of each scale.
  Returns per scale {'obj' f32[B,h,w,A], 'txy' f32[B,h,w,A,2], 'twh' f32[B,h,w,A,2],
    'cls' f32[B,h,w,A,K], 'weight' f32[B,h,w,A] (2 - w*h at assigned anchors)}.
  Two boxes falling on the same cell and anchor: the later one's box wins, classes are merged.
  """
  a_per = anchors.shape[0] // len(grids)
  best = _assign(boxes, anchors)
  b_idx = jnp.broadcast_to(jnp.arange(boxes.shape[0])[:, None], best.shape)
  cxcy = (boxes[..., :2] + boxes[..., 2:]) / 2
  wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 1e-6)
  out = []
  for s, (h, w) in enumerate(grids):
    sel = mask & (best // a_per == s)
    a = best % a_per
    gx = jnp.clip(jnp.floor(cxcy[..., 0] * w), 0, w - 1).astype(jnp.int32)
    gy = jnp.clip(jnp.floor(cxcy[..., 1] * h), 0, h - 1).astype(jnp.int32)
    gy = jnp.where(sel, gy, h)  # out of range: dropped by the scatters below
    idx = (b_idx, gy, gx, a)
    shape = (boxes.shape[0], h, w, a_per)
    anchor_wh = anchors[s * a_per + a]
    txy = jnp.stack([cxcy[..., 0] * w - gx, cxcy[..., 1] * h - jnp.minimum(gy, h - 1)], -1)
    twh = jnp.log(wh / anchor_wh)
    out.append({
        "obj": jnp.zeros(shape).at[idx].set(1.0, mode="drop"),
        "txy": jnp.zeros(shape + (2,)).at[idx].set(txy, mode="drop"),
        "twh": jnp.zeros(shape + (2,)).at[idx].set(twh, mode="drop"),
        "cls": jnp.zeros(shape + (num_classes,)).at[idx + (labels,)].set(1.0, mode="drop"),
        "weight": jnp.zeros(shape).at[idx].set(2.0 - wh[..., 0] * wh[..., 1], mode="drop"),
    })
  return out


def _decode_scale(pred: jax.Array, anchors: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(boxes f32[B,h,w,A,4] normalised xyxy, raw logits [..., 1+K]) of one scale."""
  h, w = pred.shape[1:3]
  gx = jnp.arange(w, dtype=jnp.float32)[None, None, :, None]
  gy = jnp.arange(h, dtype=jnp.float32)[None, :, None, None]
  cx = (gx + jax.nn.sigmoid(pred[..., 0])) / w
  cy = (gy + jax.nn.sigmoid(pred[..., 1])) / h
  bw = anchors[:, 0] * jnp.exp(jnp.minimum(pred[..., 2], 6.0))
  bh = anchors[:, 1] * jnp.exp(jnp.minimum(pred[..., 3], 6.0))
  boxes = jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
  return boxes, pred[..., 4:]


def _pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU [B, N, M] of xyxy boxes a [B, N, 4], b [B, M, 4]."""
  lt = jnp.maximum(a[:, :, None, :2], b[:, None, :, :2])
  rb = jnp.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0.0), axis=-1)
  area = lambda x: jnp.prod(jnp.clip(x[..., 2:] - x[..., :2], 0.0), axis=-1)
  return inter / jnp.maximum(area(a)[:, :, None] + area(b)[:, None, :] - inter, 1e-12)


def yolo_loss(preds: Sequence[jax.Array], boxes: jax.Array, labels: jax.Array, mask: jax.Array,
              anchors: jax.Array, *, ignore_iou: float = 0.5
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """YOLOv3 loss (module docstring) of raw predictions against padded boxes; fp32."""
  preds = [p.astype(jnp.float32) for p in preds]
  k = preds[0].shape[-1] - 5
  a_per = anchors.shape[0] // len(preds)
  targets = encode_targets(boxes, labels, mask, anchors, [p.shape[1:3] for p in preds], k)
  bsz = boxes.shape[0]
  parts = {"xy": 0.0, "wh": 0.0, "obj": 0.0, "cls": 0.0}
  for s, (p, t) in enumerate(zip(preds, targets)):
    pos = t["obj"]
    wgt = t["weight"] * pos
    parts["xy"] += jnp.sum(optax.sigmoid_binary_cross_entropy(p[..., :2], t["txy"])
                           * wgt[..., None])
    parts["wh"] += jnp.sum(0.5 * (p[..., 2:4] - t["twh"]) ** 2 * wgt[..., None])
    pred_boxes, _ = _decode_scale(p, anchors[s * a_per:(s + 1) * a_per])
    iou = _pairwise_iou(jax.lax.stop_gradient(pred_boxes).reshape(bsz, -1, 4), boxes)
    best = jnp.max(jnp.where(mask[:, None, :], iou, 0.0), axis=-1).reshape(pos.shape)
    obj_w = pos + (1.0 - pos) * (best <= ignore_iou)
    parts["obj"] += jnp.sum(optax.sigmoid_binary_cross_entropy(p[..., 4], pos) * obj_w)
    parts["cls"] += jnp.sum(optax.sigmoid_binary_cross_entropy(p[..., 5:], t["cls"])
                            * pos[..., None])
  parts = {n: v / bsz for n, v in parts.items()}
  loss = sum(parts.values())
  metrics = {f"yolo/{n}_loss": v for n, v in parts.items()}
  metrics["yolo/num_assigned"] = sum(jnp.sum(t["obj"]) for t in targets)
  return loss, metrics


def decode(preds: Sequence[jax.Array], anchors: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(boxes f32[B, N, 4] normalised xyxy, scores f32[B, N, K] = sigmoid(obj) * sigmoid(cls)),
  N = sum over scales of h * w * A."""
  a_per = anchors.shape[0] // len(preds)
  all_boxes, all_scores = [], []
  for s, p in enumerate(preds):
    p = p.astype(jnp.float32)
    b, logits = _decode_scale(p, anchors[s * a_per:(s + 1) * a_per])
    scores = jax.nn.sigmoid(logits[..., :1]) * jax.nn.sigmoid(logits[..., 1:])
    all_boxes.append(b.reshape(b.shape[0], -1, 4))
    all_scores.append(scores.reshape(scores.shape[0], -1, scores.shape[-1]))
  return jnp.concatenate(all_boxes, 1), jnp.concatenate(all_scores, 1)


__all__ = ["YoloHead", "kmeans_anchors", "shape_iou", "encode_targets", "yolo_loss", "decode",
           "NUM_SCALES", "ANCHORS_PER_SCALE"]
