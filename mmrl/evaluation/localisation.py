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


def _tie_centre(values: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
  """int64[N]: for values f[N, H, W], the flat index of the pixel at the maximum that lies
  nearest the centroid of all pixels within rtol * (max - min) of the maximum (a flat peak is
  pointed at in its middle, a constant map at the image centre)."""
  n, h, w = values.shape
  v = values.reshape(n, h * w)
  hi, lo = v.max(axis=1, keepdims=True), v.min(axis=1, keepdims=True)
  tied = v >= hi - rtol * np.maximum(hi - lo, 1e-300)
  rows, cols = np.divmod(np.arange(h * w), w)
  count = tied.sum(axis=1)
  cy = (tied * rows).sum(axis=1) / count
  cx = (tied * cols).sum(axis=1) / count
  d2 = (rows[None] - cy[:, None]) ** 2 + (cols[None] - cx[:, None]) ** 2
  return np.argmin(np.where(tied, d2, np.inf), axis=1)


def pointed_pixels(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """int64[N]: the flat pixel each map f[N, gh, gw] points at once upsampled to height x width
  (the centre of a tied maximum, `_tie_centre`)."""
  maps = np.asarray(maps, np.float64)
  return _tie_centre(upsample_bilinear(maps, height, width).reshape(-1, height, width))


def pointing_game(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """f64[N]: 1 where the maximum of map i upsampled to gt's H x W lies inside gt[i] (the
  centre of a tied maximum: a flat peak is not read at its first pixel).

  Args:
    maps: f[N, gh, gw] alignment maps.
    gt: bool[N, H, W] ground-truth masks.
  """
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  idx = pointed_pixels(maps, h, w)
  return gt.reshape(n, h * w)[np.arange(n), idx].astype(np.float64)


def cell_ranges(n_cells: int, n_pixels: int) -> list[tuple[int, int]]:
  """[start, stop) pixel range of each of n_cells equal cells along an axis of n_pixels."""
  edges = np.floor(np.arange(n_cells + 1) * n_pixels / n_cells).astype(int)
  return [(int(edges[i]), int(edges[i + 1])) for i in range(n_cells)]


def cell_coverage(gt: np.ndarray, gh: int, gw: int) -> np.ndarray:
  """f64[N, gh, gw]: the fraction of each feature-grid cell's pixels inside gt (bool[N,H,W])."""
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  out = np.zeros((n, gh, gw))
  for i, (r0, r1) in enumerate(cell_ranges(gh, h)):
    for j, (c0, c1) in enumerate(cell_ranges(gw, w)):
      out[:, i, j] = gt[:, r0:r1, c0:c1].mean(axis=(1, 2)) if r1 > r0 and c1 > c0 else 0.0
  return out


def cell_pointing(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """f64[N]: 1 where the feature-grid cell holding map i's maximum (centre of a tie, on the
  grid itself, no upsampling) contains any ground-truth pixel."""
  maps = np.asarray(maps, np.float64)
  n, gh, gw = maps.shape
  cov = cell_coverage(gt, gh, gw).reshape(n, gh * gw)
  return (cov[np.arange(n), _tie_centre(maps)] > 0).astype(np.float64)


def grid_oracle_maps(gt: np.ndarray, gh: int, gw: int) -> np.ndarray:
  """The best map a gh x gw feature grid can hold: each cell scored by its overlap with gt."""
  return cell_coverage(gt, gh, gw)


def baseline_pointing(gt: np.ndarray, gh: int, gw: int) -> dict[str, float]:
  """Model-free pointing baselines of a gh x gw grid on gt (bool[N,H,W]), exact expectations:
    random_map       a map of i.i.d. random cells (its maximum is in each cell with probability
                     1/(gh*gw)): mean over cells of the pointing of a one-hot map;
    best_fixed_cell  always the same cell, the one best on these very pairs (an upper bound of
                     any location prior that ignores image and sentence);
  each as pixel pointing ('.../pointing') and cell pointing ('.../pointing_cell'); and
    grid_oracle      the pointing of `grid_oracle_maps` (what the grid can show at best)."""
  gt = np.asarray(gt, bool)
  n, h, w = gt.shape
  c = gh * gw
  one_hot = np.eye(c).reshape(c, gh, gw)
  pix = pointed_pixels(one_hot, h, w)                          # [C]
  hits = gt.reshape(n, h * w)[:, pix].astype(np.float64)       # [N, C]
  cells = (cell_coverage(gt, gh, gw).reshape(n, c) > 0).astype(np.float64)
  return {"random_map/pointing": float(hits.mean()),
          "random_map/pointing_cell": float(cells.mean()),
          "best_fixed_cell/pointing": float(hits.mean(axis=0).max()),
          "best_fixed_cell/pointing_cell": float(cells.mean(axis=0).max()),
          "grid_oracle/pointing": float(np.mean(pointing_game(grid_oracle_maps(gt, gh, gw), gt)))}


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
  """Over the pairs where `valid` (default all) is True: '<prefix>/pointing' (pixel pointing
  game), '<prefix>/pointing_cell' (`cell_pointing`), '<prefix>/iou', '<prefix>/gt_area', the
  model-free baselines of `baseline_pointing` for the maps' grid ('<prefix>/random_map/...',
  '<prefix>/best_fixed_cell/...', '<prefix>/grid_oracle/pointing') and '<prefix>/pairs';
  NaN without pairs."""
  maps = np.asarray(maps, np.float64)
  gt = np.asarray(gt, bool)
  if valid is not None:
    keep = np.asarray(valid, bool)
    maps, gt = maps[keep], gt[keep]
  n = int(gt.shape[0])
  keys = ("pointing", "pointing_cell", "iou", "gt_area", "random_map/pointing",
          "random_map/pointing_cell", "best_fixed_cell/pointing", "best_fixed_cell/pointing_cell",
          "grid_oracle/pointing")
  if n == 0:
    return {f"{prefix}/pairs": 0.0, **{f"{prefix}/{k}": float("nan") for k in keys}}
  out = {f"{prefix}/pairs": float(n),
         f"{prefix}/pointing": float(np.mean(pointing_game(maps, gt))),
         f"{prefix}/pointing_cell": float(np.mean(cell_pointing(maps, gt))),
         f"{prefix}/iou": float(np.mean(map_iou(maps, gt, threshold))),
         f"{prefix}/gt_area": float(np.mean(gt.reshape(n, -1).mean(axis=1)))}
  out.update({f"{prefix}/{k}": v
              for k, v in baseline_pointing(gt, maps.shape[1], maps.shape[2]).items()})
  return out


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


MIDLINE_MARGIN = 0.1  # a box straddling x = 0.5 with its centre this close to it has no side
_SWAP = {"right": "left", "left": "right"}


def box_location(box: Sequence[float]) -> tuple[str, str]:
  """(patient side, zone) of a normalised box on a frontal film: image left is the patient's
  right ('' for a midline box: it straddles x = 0.5 and its centre is within MIDLINE_MARGIN of
  it, e.g. an endotracheal tube); the zone is the third of the image height holding the centre."""
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
  side = "right" if cx < 0.5 else "left"
  if xmin < 0.5 < xmax and abs(cx - 0.5) < MIDLINE_MARGIN:
    side = ""
  zone = "upper" if cy < 1 / 3 else ("mid" if cy < 2 / 3 else "lower")
  return side, zone


def templated_sentence(label: str, box: Sequence[float], *, location: bool = True,
                       swap_sides: bool = False) -> str:
  """The TEMPLATED sentence for a box, e.g. 'There is a nodule in the right upper zone.'

  location=False gives the location-free sentence ('There is a nodule.'); swap_sides=True
  names the other side ('left' <-> 'right'), for the swap test."""
  phrase, located = TEMPLATE_PHRASES.get(label, (label.lower().replace("_", " "), True))
  if not located or not location:
    return f"There is {phrase}."
  side, zone = box_location(box)
  if swap_sides:
    side = _SWAP.get(side, side)
  where = f"{side} {zone}" if side else zone
  return f"There is {phrase} in the {where} zone."


def has_side(label: str, box: Sequence[float]) -> bool:
  """Whether the templated sentence of (label, box) names a side (the swap test needs one)."""
  _, located = TEMPLATE_PHRASES.get(label, ("", True))
  return bool(located and box_location(box)[0])


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


READOUTS = ("own", "similarity")
# The map metrics a second read-out repeats under '<prefix>/sim/' (the model-free references
# gt_area, random_map, best_fixed_cell and grid_oracle depend only on the boxes and the grid).
MAP_METRICS = ("pointing", "pointing_cell", "iou", "pairs")


def mean_cnr(maps: np.ndarray, gt: np.ndarray) -> float:
  """The mean CNR (grounding_metrics.cnr) of grid maps f[N,gh,gw] upsampled bilinearly like the
  pointing game, against gt bool[N,H,W], over the pairs where it is defined (NaN without)."""
  from mmrl.evaluation import grounding_metrics  # pylint: disable=g-import-not-at-top
  gt = np.asarray(gt, bool)
  if not len(gt):
    return float("nan")
  up = upsample_bilinear(maps, gt.shape[1], gt.shape[2])
  value, defined = grounding_metrics.cnr(up, gt)
  return float(np.mean(value[defined])) if defined.any() else float("nan")


def readout_metrics(maps: np.ndarray, gt: np.ndarray, *, prefix: str,
                    sim_maps: Optional[np.ndarray] = None) -> dict[str, float]:
  """`localisation_metrics` of the own maps plus '<prefix>/cnr' and, given `sim_maps`, the
  MAP_METRICS and CNR of the similarity maps under '<prefix>/sim/'."""
  out = localisation_metrics(maps, gt, prefix=prefix)
  out[f"{prefix}/cnr"] = mean_cnr(maps, gt)
  if sim_maps is not None:  # the map metrics only (no model-free references recomputed)
    sim_maps, gt = np.asarray(sim_maps, np.float64), np.asarray(gt, bool)
    n = len(gt)
    nan = float("nan")
    out[f"{prefix}/sim/pairs"] = float(n)
    out[f"{prefix}/sim/pointing"] = float(np.mean(pointing_game(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/pointing_cell"] = float(np.mean(cell_pointing(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/iou"] = float(np.mean(map_iou(sim_maps, gt))) if n else nan
    out[f"{prefix}/sim/cnr"] = mean_cnr(sim_maps, gt)
  return out


@dataclasses.dataclass
class _Pairs:
  maps: list = dataclasses.field(default_factory=list)
  gt: list = dataclasses.field(default_factory=list)
  labels: list = dataclasses.field(default_factory=list)
  sim: list = dataclasses.field(default_factory=list)

  def add(self, m, g, label, sim=None):
    self.maps.append(np.asarray(m, np.float32))
    self.gt.append(np.asarray(g, bool))
    self.labels.append(label)
    if sim is not None:
      self.sim.append(np.asarray(sim, np.float32))

  def metrics(self, prefix: str, similarity: bool = False) -> dict[str, float]:
    if not self.maps:
      empty = np.zeros([0, 1, 1])
      return readout_metrics(empty, np.zeros([0, 1, 1], bool), prefix=prefix,
                             sim_maps=empty if similarity else None)
    sim = np.stack(self.sim) if similarity else None
    return readout_metrics(np.stack(self.maps), np.stack(self.gt), prefix=prefix, sim_maps=sim)


def _local_rows(x) -> np.ndarray:
  """The rows of a batch-sharded global array held by this process (shards deduplicated)."""
  shards = {s.index[0].start or 0: np.asarray(s.data) for s in x.addressable_shards}
  return np.concatenate([shards[k] for k in sorted(shards)])


class LocalisationEvaluator:
  """Scores a state's sentence maps against boxes: synthetic report sentences, templated
  synthetic sentences and (when `nih_dataset_dir` is given) templated NIH ChestX-ray14 sentences.

  `__call__(state, batches_fn) -> (scalars, images)`: `batches_fn()` yields host batches of the
  held-out synthetic split (batch_spec keys, boxes included). Scalars are
  'loc/<set>/{pointing,iou,gt_area,pairs,cnr,...}' for set in synthetic, synthetic_templated and
  nih_templated (+ 'loc/nih_templated/pointing/<label>' per NIH class) of each method's own map;
  with the 'similarity' read-out the same map metrics and CNR of the similarity maps
  (`mmrl.evaluation.similarity_maps`) under 'loc/<set>/sim/...' (swap test
  'loc/<set>_templated/sim/swap/...', per class 'loc/nih_templated/sim/pointing/<label>');
  images are 'heatmaps/<set>_<i>' sentence sheets (uint8 HxWx3) of the first `num_heatmaps`
  examples (own maps).

  Args:
    config: the run's config (data sizes, tokenizer, method).
    mesh, state_shardings: as for the train step.
    label_names: the synthetic data set's label vocabulary (default: dataset_info.json
      'label_names' of config.data.dataset_dir).
    nih_dataset_dir: converted NIH ChestX-ray14 shards (experiments.convert --layout=nih_cxr14),
      or '' to skip; None = config.eval.localisation.nih_dataset_dir when that key exists.
    nih_splits: the NIH splits to score.
    nih_max_examples: read at most this many NIH records per split (None = all).
    num_heatmaps: sentence sheets per set.
    templated_synthetic: also score templated sentences on the synthetic boxes.
    readouts: READOUTS to score, 'own' first (None = config.eval.localisation.readouts when that
      key exists, else ('own',)); 'similarity' is skipped for a method without a shared space
      (similarity_maps.has_similarity: local_mi's concat critic).
  """

  def __init__(self, config: Any, mesh: Any, state_shardings: Any, *,
               label_names: Optional[Sequence[str]] = None,
               nih_dataset_dir: Optional[str] = None,
               nih_splits: Sequence[str] = ("validate", "test"),
               nih_max_examples: Optional[int] = None, num_heatmaps: int = 2,
               templated_synthetic: bool = True,
               readouts: Optional[Sequence[str]] = None):
    from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation import alignment_maps  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation import similarity_maps  # pylint: disable=g-import-not-at-top
    self.config = config
    self.mesh = mesh
    if readouts is None:
      loc_cfg = config.eval.get("localisation", None)
      readouts = tuple(loc_cfg.get("readouts", ("own",))) if hasattr(loc_cfg, "get") else ("own",)
    readouts = tuple(str(r) for r in readouts)
    if not readouts or readouts[0] != "own" or any(r not in READOUTS for r in readouts):
      raise ValueError(f"config.eval.localisation.readouts={readouts!r}: use 'own' first, then "
                       f"any of {READOUTS[1:]}, e.g. ('own', 'similarity')")
    self.similarity = "similarity" in readouts and similarity_maps.has_similarity(config)
    self.readouts = readouts if self.similarity else ("own",)
    self.align = alignment_maps.make_alignment_fn(config, mesh, state_shardings,
                                                  similarity=self.similarity)
    if label_names is None:
      from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
      label_names = pipeline.dataset_info(config.data.dataset_dir)["label_names"]
    if nih_dataset_dir is None:
      loc_cfg = config.eval.get("localisation", None)
      nih_dataset_dir = str(loc_cfg.get("nih_dataset_dir", "")) if hasattr(loc_cfg, "get") else ""
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

  def _maps(self, state, host_batch: Mapping[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(own maps, sentence mask, similarity maps or None) of this process's rows."""
    import jax  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation.alignment_maps import ALIGNMENT_KEYS  # pylint: disable=g-import-not-at-top
    from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
    batch = {k: np.asarray(host_batch[k]) for k in ALIGNMENT_KEYS}
    out = self.align(state, distributed.global_batch_from_local(batch, self.mesh))
    keys = ("maps", "sentence_mask") + (("sim_maps",) if self.similarity else ())
    if jax.process_count() > 1:  # this process's rows, in the order of its host batch
      got = [_local_rows(out[k]) for k in keys]
    else:
      got = [np.asarray(out[k]) for k in keys]
    return got[0], got[1], (got[2] if self.similarity else None)

  def _display(self, image: np.ndarray) -> np.ndarray:
    d = self.config.data
    return np.clip(np.asarray(image)[..., 0] * float(d.std) + float(d.mean), 0.0, 1.0)

  def _query_maps(self, state, images: np.ndarray, queries: list[tuple[int, str]]
                  ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(own f32[Q, gh, gw], similarity f32[Q, gh, gw] or None): each (image index, sentence)
    query's maps."""
    from mmrl.evaluation import alignment_maps  # pylint: disable=g-import-not-at-top
    d = self.config.data
    batches = alignment_maps.make_query_batch(
        images, queries, self.tokenizer, max_tokens=int(d.max_tokens),
        max_sentences=int(d.max_sentences), batch_size=self.batch_size)
    got = [self._maps(state, b) for b in batches]
    own = np.concatenate([g[0][:, 0] for g in got])[:len(queries)]
    sim = np.concatenate([g[2][:, 0] for g in got])[:len(queries)] if self.similarity else None
    return own, sim

  def _sheets(self, images, queries, maps, gts, sheets, set_name) -> None:
    from mmrl.evaluation import heatmaps  # pylint: disable=g-import-not-at-top
    shown: dict[int, list[int]] = {}
    for j, (i, _) in enumerate(queries):
      if i in shown or len(shown) < self.num_heatmaps:
        shown.setdefault(i, []).append(j)
    for k, (i, js) in enumerate(shown.items()):
      sheets.append((f"heatmaps/{set_name}_{k}", heatmaps.sentence_sheet(
          self._display(images[i]), maps[js], [queries[j][1] for j in js],
          np.ones(len(js), bool), boxes=[gts[j] for j in js])))

  def _templated(self, state, images: list, items: list[tuple[int, np.ndarray, str]],
                 set_name: str, scalars: dict, sheets: list) -> Optional[_Pairs]:
    """Scores the templated sentences of `items` (image index, box, label name) as
    '<set>_templated' (with location words), '<set>_nolocation' ('There is a nodule.') and the
    swap test '<set>_templated/swap/...' (left <-> right in the sentences that name a side:
    'pointing' of the swapped sentence against the true box, 'drop' = original - swapped
    pointing on those queries, 'moved_cell' = fraction whose maximum changes cell)."""
    size = int(self.config.data.image_size)
    imgs = np.stack(images) if images else np.zeros([0, size, size, 1], np.float32)
    gts = [boxes_to_mask(box, size, size) for _, box, _ in items]
    labels = [name for _, _, name in items]
    result = None
    for variant, kw in (("templated", {}), ("nolocation", {"location": False})):
      queries = [(i, templated_sentence(name, box, **kw)) for i, box, name in items]
      pairs = _Pairs()
      if queries:
        maps, sim = self._query_maps(state, imgs, queries)
        for j, (m, g, label) in enumerate(zip(maps, gts, labels)):
          pairs.add(m, g, label, None if sim is None else sim[j])
        self._sheets(imgs, queries, maps, gts, sheets, f"{set_name}_{variant}")
      scalars.update(pairs.metrics(f"loc/{set_name}_{variant}", self.similarity))
      if variant == "templated":
        result = pairs
    sided = [j for j, (_, box, name) in enumerate(items) if has_side(name, box)]
    prefix = f"loc/{set_name}_templated/swap"
    scalars[f"{prefix}/pairs"] = float(len(sided))
    if self.similarity:
      scalars[f"loc/{set_name}_templated/sim/swap/pairs"] = float(len(sided))
    if sided and result is not None:
      swapped = [(items[j][0], templated_sentence(items[j][2], items[j][1], swap_sides=True))
                 for j in sided]
      smaps, ssim = self._query_maps(state, imgs, swapped)
      g = np.stack([gts[j] for j in sided])
      readouts = [(prefix, np.stack([result.maps[j] for j in sided]), smaps)]
      if self.similarity:
        readouts.append((f"loc/{set_name}_templated/sim/swap",
                         np.stack([result.sim[j] for j in sided]), ssim))
      for key, omaps, swapped_maps in readouts:
        orig, swap = pointing_game(omaps, g), pointing_game(swapped_maps, g)
        gh, gw = omaps.shape[1:]
        moved = (_tie_centre(omaps.astype(np.float64))
                 != _tie_centre(swapped_maps.astype(np.float64)))
        scalars[f"{key}/pointing"] = float(swap.mean())
        scalars[f"{key}/drop"] = float(orig.mean() - swap.mean())
        scalars[f"{key}/moved_cell"] = float(moved.mean()) if gh * gw > 1 else 0.0
      self._sheets(imgs, swapped, smaps, [gts[j] for j in sided], sheets,
                   f"{set_name}_templated_swapped")
    return result

  # -- the sets --------------------------------------------------------------------------------

  def _synthetic(self, state, batches_fn, scalars, sheets) -> None:
    from mmrl.evaluation import heatmaps  # pylint: disable=g-import-not-at-top
    size = int(self.config.data.image_size)
    report = _Pairs()
    images, items = [], []
    for host in batches_fn():
      maps, smask, sim = self._maps(state, host)
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
            report.add(maps[b, s], gt, "report", None if sim is None else sim[b, s])
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
            items.append((len(images) - 1, box, name))
    scalars.update(report.metrics("loc/synthetic", self.similarity))
    if self.templated_synthetic:
      self._templated(state, images, items, "synthetic", scalars, sheets)

  def _nih(self, state, scalars, sheets) -> None:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    data_cfg = ml_collections.ConfigDict(self.config.data.to_dict())
    data_cfg.dataset_dir = self.nih_dataset_dir
    names = pipeline.dataset_info(self.nih_dataset_dir)["label_names"]
    images, items = [], []
    for split in self.nih_splits:
      for host in pipeline.make_eval_batches(data_cfg, split=split, batch_size=self.batch_size,
                                             max_examples=self.nih_max_examples):
        ok = np.asarray(host["valid"], bool)
        for b in np.flatnonzero(ok & np.any(np.asarray(host["box_mask"], bool), axis=1)):
          images.append(np.asarray(host["image"][b]))
          for j in np.flatnonzero(np.asarray(host["box_mask"][b], bool)):
            label = int(host["box_labels"][b, j])
            name = names[label] if 0 <= label < len(names) else ""
            items.append((len(images) - 1, np.asarray(host["boxes"][b, j]), name))
    pairs = self._templated(state, images, items, "nih", scalars, sheets)
    if pairs is not None and pairs.maps:
      hits = pointing_game(np.stack(pairs.maps), np.stack(pairs.gt))
      sim_hits = pointing_game(np.stack(pairs.sim), np.stack(pairs.gt)) if self.similarity else None
      for name in sorted(set(pairs.labels)):
        sel = np.array([lab == name for lab in pairs.labels])
        scalars[f"loc/nih_templated/pointing/{name}"] = float(np.mean(hits[sel]))
        if sim_hits is not None:
          scalars[f"loc/nih_templated/sim/pointing/{name}"] = float(np.mean(sim_hits[sel]))

  def __call__(self, state, batches_fn: Callable[[], Iterable[Mapping[str, np.ndarray]]]
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scalars: dict[str, float] = {}
    sheets: list[tuple[str, np.ndarray]] = []
    self._synthetic(state, batches_fn, scalars, sheets)
    if self.nih_dataset_dir:
      self._nih(state, scalars, sheets)
    return scalars, dict(sheets)


__all__ = ["upsample_bilinear", "boxes_to_mask", "pointing_game", "map_iou", "threshold_maps",
           "pointed_pixels", "cell_pointing", "cell_coverage", "cell_ranges", "grid_oracle_maps",
           "baseline_pointing", "has_side", "MIDLINE_MARGIN",
           "localisation_metrics", "templated_sentence", "box_location", "finding_patterns",
           "match_sentence", "decode_sentences", "LocalisationEvaluator", "IOU_THRESHOLD",
           "TEMPLATE_PHRASES", "READOUTS", "MAP_METRICS", "mean_cnr", "readout_metrics"]
