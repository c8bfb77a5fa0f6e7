"""The localisation evaluator: sentence maps scored against boxes (pointing game, IoU, CNR).

`LocalisationEvaluator` reads each method's own sentence maps (`mmrl.evaluation.maps.
alignment_maps`, and BioViL's similarity maps, `mmrl.evaluation.maps.similarity_maps`, as a
second read-out) for the sentences of `mmrl.evaluation.maps.sentences` and scores them with
`mmrl.evaluation.metrics.readouts` (metric definitions: `mmrl.evaluation.metrics.localisation`);
the sentence sheets are drawn by `mmrl.viz.heatmaps`.

Which sentence is scored against which box (report sentences, templated sentences): the module
docstring of `mmrl.evaluation.maps.sentences`, which owns those rules.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from mmrl.evaluation.maps.sentences import (decode_sentences, finding_patterns, has_side,
                                            match_sentence, templated_sentence)
from mmrl.evaluation.metrics.localisation import boxes_to_mask, pointing_game, tie_centre
from mmrl.evaluation.metrics.readouts import readout_metrics

READOUTS = ("own", "similarity")


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
  (`mmrl.evaluation.maps.similarity_maps`) under 'loc/<set>/sim/...' (swap test
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
    from mmrl.evaluation.maps import alignment_maps  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation.maps import similarity_maps  # pylint: disable=g-import-not-at-top
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
    from mmrl.evaluation.maps.alignment_maps import ALIGNMENT_KEYS  # pylint: disable=g-import-not-at-top
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
    from mmrl.evaluation.maps import alignment_maps  # pylint: disable=g-import-not-at-top
    d = self.config.data
    batches = alignment_maps.make_query_batch(
        images, queries, self.tokenizer, max_tokens=int(d.max_tokens),
        max_sentences=int(d.max_sentences), batch_size=self.batch_size)
    got = [self._maps(state, b) for b in batches]
    own = np.concatenate([g[0][:, 0] for g in got])[:len(queries)]
    sim = np.concatenate([g[2][:, 0] for g in got])[:len(queries)] if self.similarity else None
    return own, sim

  def _sheets(self, images, queries, maps, gts, sheets, set_name) -> None:
    from mmrl.viz import heatmaps  # pylint: disable=g-import-not-at-top
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
        moved = (tie_centre(omaps.astype(np.float64))
                 != tie_centre(swapped_maps.astype(np.float64)))
        scalars[f"{key}/pointing"] = float(swap.mean())
        scalars[f"{key}/drop"] = float(orig.mean() - swap.mean())
        scalars[f"{key}/moved_cell"] = float(moved.mean()) if gh * gw > 1 else 0.0
      self._sheets(imgs, swapped, smaps, [gts[j] for j in sided], sheets,
                   f"{set_name}_templated_swapped")
    return result

  # -- the sets --------------------------------------------------------------------------------

  def _synthetic(self, state, batches_fn, scalars, sheets) -> None:
    from mmrl.viz import heatmaps  # pylint: disable=g-import-not-at-top
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


__all__ = ["LocalisationEvaluator", "READOUTS"]
