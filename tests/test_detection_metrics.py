"""Detection metrics: pycocotools parity, known answers, FROC against an independent reference."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from mmrl.evaluation.metrics import detection as dm


def _random_problem(seed, num_images=6, num_classes=3, gt_per_image=3, det_per_image=8):
  rng = np.random.default_rng(seed)
  gt_image, gt_boxes, gt_labels = [], [], []
  det_image, det_boxes, det_scores, det_labels = [], [], [], []
  for i in range(num_images):
    for _ in range(rng.integers(0, gt_per_image + 1)):
      x, y = rng.uniform(0, 80, 2)
      w, h = rng.uniform(5, 40, 2)
      gt_image.append(i)
      gt_boxes.append([x, y, x + w, y + h])
      gt_labels.append(int(rng.integers(num_classes)))
    for _ in range(rng.integers(0, det_per_image + 1)):
      if gt_boxes and rng.random() < 0.6:  # near a ground-truth box of this image or another
        base = np.asarray(gt_boxes[int(rng.integers(len(gt_boxes)))])
        box = base + rng.normal(0, 4, 4)
        box[2:] = np.maximum(box[2:], box[:2] + 1)
      else:
        x, y = rng.uniform(0, 80, 2)
        w, h = rng.uniform(5, 40, 2)
        box = np.array([x, y, x + w, y + h])
      det_image.append(i)
      det_boxes.append(box)
      det_scores.append(float(rng.random()))
      det_labels.append(int(rng.integers(num_classes)))
  f = lambda v, shape=None: np.asarray(v, np.float64).reshape(shape) if shape else np.asarray(v)
  return (f(det_image).astype(int), f(det_boxes, (-1, 4)), f(det_scores),
          f(det_labels).astype(int), f(gt_image).astype(int), f(gt_boxes, (-1, 4)),
          f(gt_labels).astype(int))


def _pycocotools_ap(problem, num_images, num_classes, thresholds):
  pytest.importorskip("pycocotools")
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  di, db, ds, dl, gi, gb, gl = problem
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  gt = {"images": [{"id": i} for i in range(num_images)],
        "categories": [{"id": k} for k in range(num_classes)],
        "annotations": [{"id": n + 1, "image_id": int(i), "category_id": int(k), "bbox": xywh(b),
                         "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                        for n, (i, b, k) in enumerate(zip(gi, gb, gl))]}
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = coco.loadRes([{"image_id": int(i), "category_id": int(k), "bbox": xywh(b),
                          "score": float(s)} for i, b, s, k in zip(di, db, ds, dl)])
    ev = COCOeval(coco, dets, "bbox")
    ev.params.iouThrs = np.asarray(thresholds, np.float64)
    ev.evaluate()
    ev.accumulate()
  prec = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area 'all', maxDets 100
  ap = np.where((prec > -1).all(axis=1), prec.mean(axis=1), np.nan)
  return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_pycocotools_on_random_predictions(seed):
  num_images, num_classes = 7, 4
  problem = _random_problem(seed, num_images, num_classes)
  ours = dm.average_precision(*problem, num_classes=num_classes)
  ref = _pycocotools_ap(problem, num_images, num_classes, dm.LOVT_IOU_THRESHOLDS)
  np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
  np.testing.assert_allclose(np.nan_to_num(ours), np.nan_to_num(ref), atol=1e-12)
  assert np.isfinite(ours).any()


def test_perfect_predictions_give_map_one():
  _, _, _, _, gi, gb, gl = _random_problem(3, 5, 3)
  ap = dm.average_precision(gi, gb, np.linspace(1, 0.5, len(gb)), gl, gi, gb, gl, num_classes=3)
  out = dm.map_summary(ap, dm.LOVT_IOU_THRESHOLDS, ["a", "b", "c"], "det")
  assert out["det/map"] == 1.0 and out["det/map@0.5"] == 1.0 and out["det/map@0.75"] == 1.0


def _shift_reference_ap(iou, thresholds):
  """One box per image, one class, every detection shifted to the same IoU: AP is 1 where the
  IoU clears the threshold, else 0 (an independent closed form)."""
  return np.array([1.0 if iou >= t else 0.0 for t in thresholds])


def test_shifted_boxes_give_the_closed_form_map():
  n = 4
  gb = np.tile([[10.0, 10.0, 30.0, 30.0]], (n, 1))
  shift = 4.0  # 20x20 box shifted by 4 in x: IoU = 16*20 / (2*400 - 320) = 2/3
  db = gb + [shift, 0, shift, 0]
  ap = dm.average_precision(np.arange(n), db, np.ones(n), np.zeros(n, int), np.arange(n), gb,
                            np.zeros(n, int), num_classes=1)
  iou = (20 - shift) * 20 / (2 * 400 - (20 - shift) * 20)
  np.testing.assert_allclose(ap[:, 0], _shift_reference_ap(iou, dm.LOVT_IOU_THRESHOLDS))
  out = dm.map_summary(ap, dm.LOVT_IOU_THRESHOLDS, ["x"], "d")
  assert out["d/map"] == pytest.approx(np.mean(_shift_reference_ap(iou, dm.LOVT_IOU_THRESHOLDS)))
  assert out["d/map@0.5"] == 1.0 and out["d/map@0.75"] == 0.0


def test_class_without_ground_truth_is_a_counted_skip_not_nan():
  ap = dm.average_precision([0], [[0, 0, 1, 1]], [0.9], [1], [0], [[0, 0, 1, 1]], [0],
                            num_classes=3)
  out = dm.map_summary(ap, dm.LOVT_IOU_THRESHOLDS, ["a", "b", "c"], "d")
  assert out["d/num_classes"] == 1 and out["d/num_classes_skipped"] == 2
  assert not any(np.isnan(v) for v in out.values())
  empty = dm.map_summary(np.full((8, 2), np.nan), dm.LOVT_IOU_THRESHOLDS, ["a", "b"], "d")
  assert "d/map" not in empty and empty["d/num_classes_skipped"] == 2


def _froc_reference(det_image, det_boxes, det_scores, gt_image, gt_boxes, num_images, fps):
  """The Object-CXR / LoVT loop: box centres in score order; at most one FP level per step."""
  order = sorted(range(len(det_scores)), key=lambda i: -det_scores[i])
  hits, false_positives, level, hit, froc = 0, 0, 0, set(), []
  for i in order:
    x = (det_boxes[i][0] + det_boxes[i][2]) / 2
    y = (det_boxes[i][1] + det_boxes[i][3]) / 2
    inside = False
    for j in range(len(gt_boxes)):
      if gt_image[j] == det_image[i]:
        x1, y1, x2, y2 = gt_boxes[j]
        if x1 <= x <= x2 and y1 <= y <= y2:
          inside = True
          if j not in hit:
            hits += 1
            hit.add(j)
    if not inside:
      false_positives += 1
    if false_positives / num_images >= fps[level]:
      froc.append(hits / len(gt_boxes))
      level += 1
      if level == len(fps):
        break
  return froc


def test_froc_equals_the_object_cxr_loop_when_every_level_is_reached():
  rng = np.random.default_rng(0)
  num_images = 10
  gi = np.repeat(np.arange(num_images), 2)
  xy = rng.uniform(0, 60, (len(gi), 2))
  gb = np.concatenate([xy, xy + rng.uniform(10, 30, (len(gi), 2))], axis=1)
  nd = 200
  di = rng.integers(0, num_images, nd)
  c = rng.uniform(0, 90, (nd, 2))
  db = np.concatenate([c - 2, c + 2], axis=1)
  ds = rng.random(nd)
  value, sens = dm.froc(di, db, ds, gi, gb, num_images=num_images)
  ref = _froc_reference(di, db, ds, gi, gb, num_images, dm.FROC_FP_RATES)
  assert len(ref) == len(dm.FROC_FP_RATES)
  np.testing.assert_allclose(sens, ref)
  assert value == pytest.approx(np.mean(ref))


def test_froc_of_points_inside_every_box_with_no_false_positive_is_one():
  gb = np.array([[0, 0, 10, 10], [20, 20, 40, 40.0]])
  value, sens = dm.froc([0, 1], gb, [0.9, 0.8], [0, 1], gb, num_images=2)
  assert value == 1.0 and (sens == 1).all()


def test_froc_without_detections_is_zero_and_without_boxes_is_one():
  gb = np.array([[0, 0, 10, 10.0]])
  assert dm.froc([], np.zeros((0, 4)), [], [0], gb, num_images=1)[0] == 0.0
  assert dm.froc([0], gb, [0.5], [], np.zeros((0, 4)), num_images=1)[0] == 1.0


def test_seed_comparison_pairs_seeds_and_uses_the_textbook_paired_t_test():
  from mmrl.evaluation.metrics import seed_comparison as sc
  a, b = [0.30, 0.35, 0.28, 0.40], [0.20, 0.22, 0.25, 0.21]
  d = np.subtract(a, b)
  t = d.mean() / (d.std(ddof=1) / 2)
  out = sc.compare({f"x/seed_{i}/map": v for i, v in enumerate(a)},
                   {f"x/seed_{i}/map": v for i, v in enumerate(b)})[0]
  assert out["t"] == pytest.approx(t)
  assert out["p"] == pytest.approx(0.04301, abs=1e-4)  # scipy.stats.ttest_rel(a, b): t=3.382
  assert out["verdict"] == "better"
  rows = sc.compare({"x/seed_0/map": 0.3, "x/seed_1/map": 0.4, "x/map": 0.35},
                    {"x/seed_0/map": 0.1, "x/seed_1/map": 0.15})
  assert len(rows) == 1 and rows[0]["n"] == 2 and rows[0]["beyond_spread"]
