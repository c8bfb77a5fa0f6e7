"""Detection metrics (pure numpy): COCO-style mAP over IoU thresholds, and Object-CXR FROC.

Inputs are flat arrays over a set of `num_images` images: detections (image index, box, score,
class) and ground truth (image index, box, class). Boxes are (xmin, ymin, xmax, ymax) in any
common unit (pixels or normalised); IoU is computed as pycocotools does for boxes (area = w * h,
no +1).

- `box_iou`: pairwise IoU.
- `average_precision`: AP per (IoU threshold, class), computed exactly as pycocotools' COCOeval
  does for iouType='bbox', areaRng 'all', one maxDets: per image and class the top `max_dets`
  detections by score, greedy matching in score order to the unmatched ground-truth box of highest
  IoU >= threshold, then over all images the precision/recall curve made monotone and read at the
  101 recall points 0, 0.01, ..., 1 (searchsorted 'left'; recall points beyond the curve count 0).
  Classes without a ground-truth box get NaN (pycocotools: -1) and are left out of every mean.
- `map_summary`: the reported numbers: mAP over IoU 0.4:0.05:0.75 (LoVT, MGCA), mAP@0.5 (COCO
  style), mAP@0.75, per-class AP, and the classes skipped for lack of a ground-truth box.
- `froc`: Object-CXR's FROC (jfhealthcare object-CXR `froc.py`, as copied in LoVT
  `src/metrics/detection_metrics.py`): detections become their box centres, ranked by score over
  all images; a point inside a ground-truth box hits it (each box counts once), a point inside no
  box is a false positive; the sensitivity (hits / boxes) is read where the false positives per
  image first reach each of 0.125, 0.25, 0.5, 1, 2, 4, 8 and the seven values are averaged.
  Difference from that script: an FP level the detections never reach takes the sensitivity of
  the whole ranked list (the script repeats the last level it reached), and one detection can
  cross several levels at once (the script moves at most one level per detection, which lags
  when there are fewer than 8 images).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# LoVT `BBoxMeanAPMetric` / MGCA detection: IoU 0.4, 0.45, ..., 0.75.
LOVT_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.4, 0.75, 8), 2).tolist())
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU f64[N, M] of boxes a [N, 4] and b [M, 4] (xyxy); 0 where the union is empty."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
  inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, threshold: float) -> np.ndarray:
  """bool[D]: detection d (rows in score order) matched a ground-truth box at `threshold`."""
  num_det, num_gt = ious.shape
  taken = np.zeros(num_gt, bool)
  hit = np.zeros(num_det, bool)
  limit = min(threshold, 1 - 1e-10)
  for d in range(num_det):
    cand = np.where(taken, -1.0, ious[d])
    if num_gt == 0:
      continue
    best = cand.max()
    if best >= limit:
      # pycocotools keeps the last ground-truth box among equal best IoUs.
      g = num_gt - 1 - int(np.argmax(cand[::-1] == best))
      taken[g] = True
      hit[d] = True
  return hit


def average_precision(det_image: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
                      det_labels: np.ndarray, gt_image: np.ndarray, gt_boxes: np.ndarray,
                      gt_labels: np.ndarray, *, num_classes: int,
                      iou_thresholds: Sequence[float] = LOVT_IOU_THRESHOLDS,
                      max_dets: int = 100) -> np.ndarray:
  """AP f64[T, K] per IoU threshold and class (NaN for a class with no ground-truth box).

  See the module docstring; equals pycocotools' `COCOeval.eval['precision']` averaged over
  recall points (areaRng 'all', maxDets `max_dets`), with -1 written as NaN.
  """
  det_image = np.asarray(det_image, np.int64)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  det_scores = np.asarray(det_scores, np.float64)
  det_labels = np.asarray(det_labels, np.int64)
  gt_image = np.asarray(gt_image, np.int64)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gt_labels = np.asarray(gt_labels, np.int64)
  thresholds = np.asarray(iou_thresholds, np.float64)
  ap = np.full((len(thresholds), num_classes), np.nan)
  for k in range(num_classes):
    gt_k = gt_labels == k
    num_gt = int(gt_k.sum())
    if num_gt == 0:
      continue
    scores, hits = [], []
    for img in np.unique(np.concatenate([det_image[det_labels == k], gt_image[gt_k]])):
      d = np.flatnonzero((det_image == img) & (det_labels == k))
      d = d[np.argsort(-det_scores[d], kind="mergesort")][:max_dets]
      g = np.flatnonzero((gt_image == img) & gt_k)
      ious = box_iou(det_boxes[d], gt_boxes[g])
      scores.append(det_scores[d])
      hits.append(np.stack([_match(ious, t) for t in thresholds]) if len(d)
                  else np.zeros((len(thresholds), 0), bool))
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="mergesort")
    hits = np.concatenate(hits, axis=1)[:, order]
    for t in range(len(thresholds)):
      tp = np.cumsum(hits[t]).astype(np.float64)
      fp = np.cumsum(~hits[t]).astype(np.float64)
      recall = tp / num_gt
      precision = tp / (tp + fp + np.spacing(1))  # as pycocotools
      precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone from the right
      idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
      q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)]
                   if len(precision) else 0.0, 0.0)
      ap[t, k] = float(np.mean(q))
  return ap


def map_summary(ap: np.ndarray, iou_thresholds: Sequence[float], names: Sequence[str],
                prefix: str) -> dict[str, float]:
  """'<prefix>/map' (mean over thresholds and classes with ground truth), '/map@0.5',
  '/map@0.75' (when those thresholds are present), '/ap/<name>' (mean over thresholds),
  '/num_classes' scored and '/num_classes_skipped' (no ground-truth box in the split).

  When no class has ground truth the mAP keys are left out (never NaN) and only the counts are
  returned.
  """
  ap = np.asarray(ap, np.float64)
  scored = ~np.isnan(ap[0]) if ap.size else np.zeros(len(names), bool)
  out = {f"{prefix}/num_classes": float(scored.sum()),
         f"{prefix}/num_classes_skipped": float(len(names) - scored.sum())}
  if not scored.any():
    return out
  out[f"{prefix}/map"] = float(np.mean(ap[:, scored]))
  thresholds = np.asarray(iou_thresholds, np.float64)
  for t in (0.5, 0.75):
    hit = np.flatnonzero(np.isclose(thresholds, t))
    if len(hit):
      out[f"{prefix}/map@{t:g}"] = float(np.mean(ap[hit[0], scored]))
  for k in np.flatnonzero(scored):
    out[f"{prefix}/ap/{names[k]}"] = float(np.mean(ap[:, k]))
  return out


def froc(det_image: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
         gt_image: np.ndarray, gt_boxes: np.ndarray, *, num_images: int,
         fp_rates: Sequence[float] = FROC_FP_RATES) -> tuple[float, np.ndarray]:
  """(FROC = mean sensitivity, sensitivity f64[len(fp_rates)]); see the module docstring.

  Class-agnostic, as in Object-CXR. With no ground-truth box the sensitivity is 1 (as in the
  script). `num_images` counts every scored image, with or without boxes.
  """
  if num_images <= 0:
    raise ValueError(f"froc needs num_images > 0, got {num_images}")
  det_image = np.asarray(det_image, np.int64)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_image = np.asarray(gt_image, np.int64)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  num_gt = len(gt_boxes)
  rates = np.asarray(fp_rates, np.float64)
  if num_gt == 0:
    return 1.0, np.ones(len(rates))
  if len(det_boxes) == 0:
    return 0.0, np.zeros(len(rates))
  order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
  cx = (det_boxes[order, 0] + det_boxes[order, 2]) / 2
  cy = (det_boxes[order, 1] + det_boxes[order, 3]) / 2
  img = det_image[order]
  inside = ((gt_image[None, :] == img[:, None])
            & (gt_boxes[None, :, 0] <= cx[:, None]) & (cx[:, None] <= gt_boxes[None, :, 2])
            & (gt_boxes[None, :, 1] <= cy[:, None]) & (cy[:, None] <= gt_boxes[None, :, 3]))
  false_pos = np.cumsum(~inside.any(axis=1))
  # hits after detection i = boxes whose first hitting detection is <= i.
  first = np.where(inside.any(axis=0), np.argmax(inside, axis=0), len(img))
  hits = np.cumsum(np.bincount(first, minlength=len(img) + 1)[:len(img)])
  sens = np.empty(len(rates))
  final = hits[-1] / num_gt
  for j, rate in enumerate(rates):
    reached = np.flatnonzero(false_pos / num_images >= rate)
    sens[j] = hits[reached[0]] / num_gt if len(reached) else final
  return float(np.mean(sens)), sens


__all__ = ["box_iou", "average_precision", "map_summary", "froc", "LOVT_IOU_THRESHOLDS",
           "COCO_RECALL_POINTS", "FROC_FP_RATES"]
