"""Localisation from alignment: pointing game and IoU of sentence maps against boxes.

Owns the metric math (pure numpy, masked, vectorised) and `LocalisationEvaluator`, which scores
the sentence maps of `mmrl.evaluation.alignment_maps` against ground-truth boxes.

Metrics, for N (map, ground truth) pairs, each map f[gh,gw] upsampled bilinearly (half-pixel
centres, edges clamped) to the image's H x W:
  pointing game  1 when the argmax pixel of the upsampled map lies inside the ground truth
                 (the first pixel in row-major order on ties; a constant map points at (0, 0)).
  IoU            the map min-max normalised to [0, 1] and thresholded at a fixed value
                 (`IOU_THRESHOLD` = 0.5), against the ground truth; a constant map predicts the
                 whole image (it carries no location), scoring IoU = the ground-truth area.
  gt_area        the mean ground-truth area fraction: the chance level of the pointing game (a
                 uniformly random point) and the IoU of predicting the whole image.
A box (normalised xmin, ymin, xmax, ymax) covers the pixels whose centres lie inside it.

Which sentence is scored against which box (`LocalisationEvaluator`):
  synthetic (report sentences)  each report sentence of a held-out synthetic study is decoded
      from its tokens and matched to the boxes of the findings it names: a finding's box label
      (CheXpert name) -> the synthetic finding it comes from (report_writer.FINDING_LABELS) ->
      the words the report writer always uses for it (report_writer.FINDING_SYNONYMS), matched
      as whole words. Negated sentences (containing the word 'no') are skipped; 'pleural line'
      does not count as a device 'line'. The sentence's ground truth is the union of the boxes
      of every finding it names (a report sentence may name a finding seen twice).
  synthetic_templated / nih_templated  one TEMPLATED sentence per box, written by us from the
      box's label and position, never by a radiologist: "There is a nodule in the right upper
      zone." (`templated_sentence`): the side from the box centre (image left = the patient's
      right on a frontal film), the zone from the centre's third of the image height; labels
      without a location (cardiomegaly) read "There is cardiomegaly.". Each sentence is encoded
      alone as a one-sentence report with its own image, and its ground truth is its box. NIH
      ChestX-ray14 has no reports, so its localisation uses only these templated sentences.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

IOU_THRESHOLD = 0.5

# ---------------------------------------------------------------------------------------------
# Pure metrics
# ---------------------------------------------------------------------------------------------


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bilinear (half-pixel centres, clamped) source indices lo/hi and weight of hi."""
  x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  x = np.clip(x, 0.0, n_in - 1)
  lo = np.floor(x).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, x - lo


def upsample_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """maps f[..., gh, gw] -> f64[..., height, width] (bilinear, half-pixel centres, clamped)."""
  maps = np.asarray(maps, np.float64)
  gh, gw = maps.shape[-2:]
  r0, r1, rw = _axis_weights(gh, height)
  c0, c1, cw = _axis_weights(gw, width)
  rows = maps[..., r0, :] * (1 - rw)[:, None] + maps[..., r1, :] * rw[:, None]
  return rows[..., c0] * (1 - cw) + rows[..., c1] * cw


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Union of normalised boxes f[K,4] (xmin, ymin, xmax, ymax) as bool[height, width]: the
  pixels whose centres lie inside a box."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  ys = (np.arange(height) + 0.5) / height
  xs = (np.arange(width) + 0.5) / width
  inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])    # [K,H]
  inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])    # [K,W]
  return np.any(inside_y[:, :, None] & inside_x[:, None, :], axis=0)


def pointing_game(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """f64[N]: 1 where the argmax of map i upsampled to gt's H x W lies inside gt[i].

  Args:
    maps: f[N, gh, gw] alignment maps.
    gt: bool[N, H, W] ground-truth masks.
  """
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  up = upsample_bilinear(maps, h, w).reshape(n, h * w)
  idx = np.argmax(up, axis=1)
  return gt.reshape(n, h * w)[np.arange(n), idx].astype(np.float64)


def threshold_maps(maps: np.ndarray, height: int, width: int,
                   threshold: float = IOU_THRESHOLD) -> np.ndarray:
  """bool[N, H, W]: each upsampled map, min-max normalised, >= threshold (constant: all True)."""
  up = upsample_bilinear(maps, height, width)
  lo = up.min(axis=(-2, -1), keepdims=True)
  span = up.max(axis=(-2, -1), keepdims=True) - lo
  norm = np.where(span > 1e-12, (up - lo) / np.maximum(span, 1e-12), 1.0)
  return norm >= threshold


def map_iou(maps: np.ndarray, gt: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
  """f64[N]: IoU of the thresholded map i (see `threshold_maps`) with gt[i] (bool[N,H,W])."""
  gt = np.asarray(gt, bool)
  pred = threshold_maps(maps, gt.shape[1], gt.shape[2], threshold)
  inter = np.sum(pred & gt, axis=(1, 2))
  union = np.sum(pred | gt, axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def localisation_metrics(maps: np.ndarray, gt: np.ndarray, *, prefix: str,
                         valid: Optional[np.ndarray] = None,
                         threshold: float = IOU_THRESHOLD) -> dict[str, float]:
  """'<prefix>/pointing', '<prefix>/iou', '<prefix>/gt_area' (the chance level) and
  '<prefix>/pairs' over the pairs where `valid` (default all) is True; NaN without pairs."""
  maps = np.asarray(maps, np.float64)
  gt = np.asarray(gt, bool)
  if valid is not None:
    keep = np.asarray(valid, bool)
    maps, gt = maps[keep], gt[keep]
  n = int(gt.shape[0])
  if n == 0:
    return {f"{prefix}/pairs": 0.0, f"{prefix}/pointing": float("nan"),
            f"{prefix}/iou": float("nan"), f"{prefix}/gt_area": float("nan")}
  return {f"{prefix}/pairs": float(n),
          f"{prefix}/pointing": float(np.mean(pointing_game(maps, gt))),
          f"{prefix}/iou": float(np.mean(map_iou(maps, gt, threshold))),
          f"{prefix}/gt_area": float(np.mean(gt.reshape(n, -1).mean(axis=1)))}


# ---------------------------------------------------------------------------------------------
# Sentences <-> boxes
# ---------------------------------------------------------------------------------------------

# label -> (phrase, has a location) for the templated sentences (CheXpert and NIH names).
TEMPLATE_PHRASES: dict[str, tuple[str, bool]] = {
    "Atelectasis": ("atelectasis", True), "Cardiomegaly": ("cardiomegaly", False),
    "Consolidation": ("consolidation", True), "Edema": ("edema", True),
    "Enlarged Cardiomediastinum": ("an enlarged cardiomediastinum", False),
    "Fracture": ("a fracture", True), "Lung Lesion": ("a nodule", True),
    "Lung Opacity": ("an opacity", True), "Pleural Effusion": ("a pleural effusion", True),
    "Effusion": ("a pleural effusion", True), "Pleural Other": ("a pleural abnormality", True),
    "Pneumonia": ("pneumonia", True), "Pneumothorax": ("a pneumothorax", True),
    "Support Devices": ("a support device", True), "Infiltration": ("an infiltrate", True),
    "Mass": ("a mass", True), "Nodule": ("a nodule", True), "Emphysema": ("emphysema", True),
    "Fibrosis": ("fibrosis", True), "Hernia": ("a hernia", True),
    "Pleural_Thickening": ("pleural thickening", True),
}


def box_location(box: Sequence[float]) -> tuple[str, str]:
  """(patient side, zone) of a normalised box on a frontal film: image left is the patient's
  right; the zone is the third of the image height holding the box centre."""
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
  side = "right" if cx < 0.5 else "left"
  zone = "upper" if cy < 1 / 3 else ("mid" if cy < 2 / 3 else "lower")
  return side, zone


def templated_sentence(label: str, box: Sequence[float]) -> str:
  """The TEMPLATED sentence for a box, e.g. 'There is a nodule in the right upper zone.'"""
  phrase, located = TEMPLATE_PHRASES.get(label, (label.lower().replace("_", " "), True))
  if not located:
    return f"There is {phrase}."
  side, zone = box_location(box)
  return f"There is {phrase} in the {side} {zone} zone."


def finding_patterns(label_names: Sequence[str]) -> dict[int, re.Pattern]:
  """label index -> whole-word regex of the words the synthetic report writer uses for it."""
  from data_pipeline.synthetic import report_writer  # pylint: disable=g-import-not-at-top
  by_label = {labels[0]: report_writer.FINDING_SYNONYMS[name]
              for name, labels in report_writer.FINDING_LABELS.items()}
  out = {}
  for i, label in enumerate(label_names):
    words = by_label.get(label)
    if words:
      out[i] = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
  return out


_NEGATION = re.compile(r"\bno\b")


def match_sentence(sentence: str, box_labels: Sequence[int],
                   patterns: Mapping[int, re.Pattern]) -> list[int]:
  """Indices of the boxes whose finding `sentence` names (module docstring); [] if negated."""
  text = sentence.lower().replace("pleural line", "pleural")
  if _NEGATION.search(text):
    return []
  named = {label for label, pat in patterns.items() if pat.search(text)}
  return [j for j, label in enumerate(box_labels) if int(label) in named]


def decode_sentences(tokenizer: Any, input_ids: np.ndarray, token_to_sentence: np.ndarray,
                     attention_mask: np.ndarray, num_sentences: int) -> list[str]:
  """The text of each sentence slot of one row (a `tokenizers.Tokenizer`; '' for empty slots)."""
  out = []
  for s in range(num_sentences):
    ids = input_ids[(token_to_sentence == s) & (attention_mask > 0)]
    out.append(tokenizer.decode([int(i) for i in ids]) if ids.size else "")
  return out


# ---------------------------------------------------------------------------------------------
# Evaluator
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Pairs:
  maps: list = dataclasses.field(default_factory=list)
  gt: list = dataclasses.field(default_factory=list)
  labels: list = dataclasses.field(default_factory=list)

  def add(self, m, g, label):
    self.maps.append(np.asarray(m, np.float32))
    self.gt.append(np.asarray(g, bool))
    self.labels.append(label)

  def metrics(self, prefix: str) -> dict[str, float]:
    if not self.maps:
      return localisation_metrics(np.zeros([0, 1, 1]), np.zeros([0, 1, 1], bool), prefix=prefix)
    return localisation_metrics(np.stack(self.maps), np.stack(self.gt), prefix=prefix)


class LocalisationEvaluator:
  """Scores a state's sentence maps against boxes: synthetic report sentences, templated
  synthetic sentences and (when `nih_dataset_dir` is given) templated NIH ChestX-ray14 sentences.

  `__call__(state, batches_fn) -> (scalars, images)`: `batches_fn()` yields host batches of the
  held-out synthetic split (batch_spec keys, boxes included). Scalars are
  'loc/<set>/{pointing,iou,gt_area,pairs}' for set in synthetic, synthetic_templated and
  nih_templated (+ 'loc/nih_templated/pointing/<label>' per NIH class); images are
  'heatmaps/<set>_<i>' sentence sheets (uint8 HxWx3) of the first `num_heatmaps` examples.

  Args:
    config: the run's config (data sizes, tokenizer, method).
    mesh, state_shardings: as for the train step.
    label_names: the synthetic data set's label vocabulary (dataset_info.json 'label_names').
    nih_dataset_dir: converted NIH ChestX-ray14 shards (experiments.convert --layout=nih_cxr14),
      or '' to skip.
    nih_splits: the NIH splits to score.
    nih_max_examples: read at most this many NIH records per split (None = all).
    num_heatmaps: sentence sheets per set.
    templated_synthetic: also score templated sentences on the synthetic boxes.
  """

  def __init__(self, config: Any, mesh: Any, state_shardings: Any, *,
               label_names: Sequence[str], nih_dataset_dir: str = "",
               nih_splits: Sequence[str] = ("validate", "test"),
               nih_max_examples: Optional[int] = None, num_heatmaps: int = 2,
               templated_synthetic: bool = True):
    from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation import alignment_maps  # pylint: disable=g-import-not-at-top
    self.config = config
    self.mesh = mesh
    self.align = alignment_maps.make_alignment_fn(config, mesh, state_shardings)
    self.label_names = tuple(label_names)
    self.patterns = finding_patterns(self.label_names)
    spec, lower = str(config.data.tokenizer), bool(config.data.get("lowercase", True))
    self.decoder = tokenization.load_tokenizer(spec, lowercase=lower)
    self.tokenizer = tokenization.ReportTokenizer(spec, lowercase=lower)
    self.nih_dataset_dir = str(nih_dataset_dir)
    self.nih_splits = tuple(nih_splits)
    self.nih_max_examples = nih_max_examples
    self.num_heatmaps = int(num_heatmaps)
    self.templated_synthetic = bool(templated_synthetic)
    self.batch_size = int(config.eval.batch_size)

  # -- helpers ---------------------------------------------------------------------------------

  def _maps(self, state, host_batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import jax  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation.alignment_maps import ALIGNMENT_KEYS  # pylint: disable=g-import-not-at-top
    from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
    batch = {k: np.asarray(host_batch[k]) for k in ALIGNMENT_KEYS}
    out = self.align(state, distributed.global_batch_from_local(batch, self.mesh))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      out = multihost_utils.process_allgather(out, tiled=True)
    return np.asarray(out["maps"]), np.asarray(out["sentence_mask"])

  def _display(self, image: np.ndarray) -> np.ndarray:
    d = self.config.data
    return np.clip(np.asarray(image)[..., 0] * float(d.std) + float(d.mean), 0.0, 1.0)

  def _score_queries(self, state, images: np.ndarray, queries: list[tuple[int, str]],
                     gts: list[np.ndarray], labels: list[str], pairs: _Pairs,
                     sheets: list, set_name: str) -> None:
    """Maps of one-sentence query rows -> pairs (and sheets of the first images)."""
    from mmrl.evaluation import alignment_maps, heatmaps  # pylint: disable=g-import-not-at-top
    if not queries:
      return
    d = self.config.data
    batches = alignment_maps.make_query_batch(
        images, queries, self.tokenizer, max_tokens=int(d.max_tokens),
        max_sentences=int(d.max_sentences), batch_size=self.batch_size)
    maps = np.concatenate([self._maps(state, b)[0][:, 0] for b in batches])[:len(queries)]
    for m, g, label in zip(maps, gts, labels):
      pairs.add(m, g, label)
    shown: dict[int, list[int]] = {}
    for j, (i, _) in enumerate(queries):
      if i in shown or len(shown) < self.num_heatmaps:
        shown.setdefault(i, []).append(j)
    for k, (i, js) in enumerate(shown.items()):
      sheets.append((f"heatmaps/{set_name}_{k}", heatmaps.sentence_sheet(
          self._display(images[i]), maps[js], [queries[j][1] for j in js],
          np.ones(len(js), bool), boxes=[gts[j] for j in js])))

  # -- the sets --------------------------------------------------------------------------------

  def _synthetic(self, state, batches_fn, scalars, sheets) -> None:
    from mmrl.evaluation import heatmaps  # pylint: disable=g-import-not-at-top
    size = int(self.config.data.image_size)
    report, templated = _Pairs(), _Pairs()
    images, queries, gts, qlabels = [], [], [], []
    for host in batches_fn():
      maps, smask = self._maps(state, host)
      valid = np.asarray(host["valid"], bool)
      for b in np.flatnonzero(valid & np.any(np.asarray(host["box_mask"], bool), axis=1)):
        bm = np.asarray(host["box_mask"][b], bool)
        boxes = np.asarray(host["boxes"][b])[bm]
        blabels = np.asarray(host["box_labels"][b])[bm]
        sentences = decode_sentences(self.decoder, np.asarray(host["input_ids"][b]),
                                     np.asarray(host["token_to_sentence"][b]),
                                     np.asarray(host["attention_mask"][b]), smask.shape[1])
        rows = []
        for s, text in enumerate(sentences):
          hit = match_sentence(text, blabels, self.patterns) if smask[b, s] else []
          if hit:
            gt = boxes_to_mask(boxes[hit], size, size)
            report.add(maps[b, s], gt, "report")
            rows.append((s, text, gt))
        if rows and sum(1 for n, _ in sheets if n.startswith("heatmaps/synthetic_")) < (
            self.num_heatmaps):
          k = sum(1 for n, _ in sheets if n.startswith("heatmaps/synthetic_"))
          sheets.append((f"heatmaps/synthetic_{k}", heatmaps.sentence_sheet(
              self._display(host["image"][b]), maps[b, [r[0] for r in rows]],
              [r[1] for r in rows], np.ones(len(rows), bool), boxes=[r[2] for r in rows])))
        if self.templated_synthetic:
          images.append(np.asarray(host["image"][b]))
          for box, label in zip(boxes, blabels):
            name = self.label_names[int(label)] if 0 <= int(label) < len(self.label_names) else ""
            queries.append((len(images) - 1, templated_sentence(name, box)))
            gts.append(boxes_to_mask(box, size, size))
            qlabels.append(name)
    scalars.update(report.metrics("loc/synthetic"))
    if self.templated_synthetic:
      self._score_queries(state, np.stack(images) if images else np.zeros([0, size, size, 1]),
                          queries, gts, qlabels, templated, sheets, "synthetic_templated")
      scalars.update(templated.metrics("loc/synthetic_templated"))

  def _nih(self, state, scalars, sheets) -> None:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    data_cfg = ml_collections.ConfigDict(self.config.data.to_dict())
    data_cfg.dataset_dir = self.nih_dataset_dir
    names = pipeline.dataset_info(self.nih_dataset_dir)["label_names"]
    size = int(data_cfg.image_size)
    images, queries, gts, labels = [], [], [], []
    for split in self.nih_splits:
      for host in pipeline.make_eval_batches(data_cfg, split=split, batch_size=self.batch_size,
                                             max_examples=self.nih_max_examples):
        ok = np.asarray(host["valid"], bool)
        for b in np.flatnonzero(ok & np.any(np.asarray(host["box_mask"], bool), axis=1)):
          images.append(np.asarray(host["image"][b]))
          for j in np.flatnonzero(np.asarray(host["box_mask"][b], bool)):
            label = int(host["box_labels"][b, j])
            name = names[label] if 0 <= label < len(names) else ""
            box = np.asarray(host["boxes"][b, j])
            queries.append((len(images) - 1, templated_sentence(name, box)))
            gts.append(boxes_to_mask(box, size, size))
            labels.append(name)
    pairs = _Pairs()
    self._score_queries(state, np.stack(images) if images else np.zeros([0, size, size, 1]),
                        queries, gts, labels, pairs, sheets, "nih_templated")
    scalars.update(pairs.metrics("loc/nih_templated"))
    if pairs.maps:
      hits = pointing_game(np.stack(pairs.maps), np.stack(pairs.gt))
      for name in sorted(set(pairs.labels)):
        sel = np.array([lab == name for lab in pairs.labels])
        scalars[f"loc/nih_templated/pointing/{name}"] = float(np.mean(hits[sel]))

  def __call__(self, state, batches_fn: Callable[[], Iterable[Mapping[str, np.ndarray]]]
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scalars: dict[str, float] = {}
    sheets: list[tuple[str, np.ndarray]] = []
    self._synthetic(state, batches_fn, scalars, sheets)
    if self.nih_dataset_dir:
      self._nih(state, scalars, sheets)
    return scalars, dict(sheets)


__all__ = ["upsample_bilinear", "boxes_to_mask", "pointing_game", "map_iou", "threshold_maps",
           "localisation_metrics", "templated_sentence", "box_location", "finding_patterns",
           "match_sentence", "decode_sentences", "LocalisationEvaluator", "IOU_THRESHOLD",
           "TEMPLATE_PHRASES"]
