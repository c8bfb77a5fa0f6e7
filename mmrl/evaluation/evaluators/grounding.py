"""Phrase grounding: BioViL's CNR and mIoU (and the pointing game) of every method's own
sentence -> region maps against the boxes the sentences describe.

`GroundingEvaluator(config, mesh, state_shardings)` pairs sentences with boxes by one of two
sources (config key eval.grounding.source).
'phrase' (MS-CXR's protocol, BioViL / hi-ml): each box label is a phrase ('<category>: <phrase>',
as the ms_cxr converter writes it; a label without ': ' is the phrase itself); every (image,
phrase) is one pair: the phrase alone, encoded as a one-sentence query (the path of
`alignment_maps.make_query_batch`), against the union of the boxes that carry that label on that
image. The evaluator reads config.data.eval_split itself, with `box_labels` indexing the split's
box-label vocabulary (`pipeline.box_label_vocabulary`) and max_boxes raised to the split's most
boxes per image; metrics 'grounding/phrase/*'.
'synthetic' (default) pairs sentences with boxes exactly as the localisation evaluator does,
through the public functions of `mmrl.evaluation.maps.sentences`:
  synthetic             each held-out synthetic report sentence that names a finding, against the
                        union of that finding's boxes (negated sentences skipped);
  synthetic_templated   one templated sentence per synthetic box, encoded alone with its image;
  nih_templated         the same on converted NIH ChestX-ray14 boxes (config key
                        eval.grounding.nih_dataset_dir; '' = skip).
The maps are each method's own (`mmrl.evaluation.maps.alignment_maps.make_alignment_fn`: LoVT
attention, GLoRIA / MGCA / MLIP / LRCLR word attention, PLACE queries, local-MI critic, ConVIRT
cosine). The metrics are `metrics.grounding.grounding_metrics`: scalars
'grounding/<set>/{pairs, cnr, cnr_std, miou, pointing, gt_area, skipped_gt, skipped_flat}'.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from mmrl.evaluation.maps import sentences as sent
from mmrl.evaluation.metrics import grounding as gm
from mmrl.evaluation.metrics.localisation import boxes_to_mask

SOURCES = ("synthetic", "phrase")
PHRASE_SEPARATOR = ": "  # data_pipeline.converters.ms_cxr.box_label's '<category>: <phrase>'


def phrase_of_box_label(label: str) -> str:
  """The grounding query of a box label: the part after the first ': ', else the whole label."""
  _, sep, phrase = str(label).partition(PHRASE_SEPARATOR)
  return phrase.strip() if sep else str(label).strip()


def phrase_pairs(host: Mapping[str, np.ndarray], box_label_names: Sequence[str], size: int
                 ) -> tuple[list[tuple[int, str, np.ndarray]], int]:
  """([(row, phrase, ground truth bool[size, size])], boxes without a label) of a host batch.

  One pair per valid row and distinct box label id (first-seen order); its ground truth is the
  union of the row's boxes with that id. `box_labels` must index `box_label_names`."""
  pairs, unlabelled = [], 0
  valid = np.asarray(host["valid"], bool)
  for b in np.flatnonzero(valid):
    bm = np.asarray(host["box_mask"][b], bool)
    boxes, ids = np.asarray(host["boxes"][b])[bm], np.asarray(host["box_labels"][b])[bm]
    unlabelled += int(np.sum((ids < 0) | (ids >= len(box_label_names))))
    seen: list[int] = []
    for i in ids:
      if 0 <= int(i) < len(box_label_names) and int(i) not in seen:
        seen.append(int(i))
    for i in seen:
      pairs.append((int(b), phrase_of_box_label(box_label_names[i]),
                    boxes_to_mask(boxes[ids == i], size, size)))
  return pairs, unlabelled


class GroundingEvaluator:
  """`__call__(state, batches_fn) -> (scalars, {})`; `batches_fn()` yields host batches of the
  held-out split with boxes (the runner's `batches`)."""

  def __init__(self, config: Any, mesh: Any, state_shardings: Any, *,
               label_names: Optional[Sequence[str]] = None):
    from data_pipeline import pipeline, tokenization  # pylint: disable=g-import-not-at-top
    from mmrl.evaluation.maps import alignment_maps  # pylint: disable=g-import-not-at-top
    self.config = config
    self.cfg = config.eval.grounding
    self.mesh = mesh
    self.source = str(self.cfg.get("source", "synthetic"))
    if self.source not in SOURCES:
      raise ValueError(f"config.eval.grounding.source={self.source!r}: use one of {SOURCES}")
    if str(self.cfg.interpolation) not in gm.INTERPOLATIONS:
      raise ValueError(f"config.eval.grounding.interpolation={self.cfg.interpolation!r}: use one "
                       f"of {gm.INTERPOLATIONS}")
    self.align = alignment_maps.make_alignment_fn(config, mesh, state_shardings)
    self.make_query_batch = alignment_maps.make_query_batch
    self.keys = alignment_maps.ALIGNMENT_KEYS
    if label_names is None:
      label_names = pipeline.dataset_info(config.data.dataset_dir)["label_names"]
    self.label_names = tuple(label_names)
    self.patterns = sent.finding_patterns(self.label_names)
    spec, lower = str(config.data.tokenizer), bool(config.data.get("lowercase", True))
    self.decoder = tokenization.load_tokenizer(spec, lowercase=lower)
    self.tokenizer = tokenization.ReportTokenizer(spec, lowercase=lower)
    self.batch_size = int(config.eval.batch_size)

  def _maps(self, state, host: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from mmrl.parallel import distributed  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      raise NotImplementedError("grounding runs on one process (its pairs are host-side)")
    batch = {k: np.asarray(host[k]) for k in self.keys}
    out = self.align(state, distributed.global_batch_from_local(batch, self.mesh))
    return np.asarray(out["maps"]), np.asarray(out["sentence_mask"])

  def _query_maps(self, state, images, queries) -> np.ndarray:
    d = self.config.data
    if not queries:
      return np.zeros((0, 1, 1), np.float32)
    batches = self.make_query_batch(images, queries, self.tokenizer,
                                    max_tokens=int(d.max_tokens),
                                    max_sentences=int(d.max_sentences), batch_size=self.batch_size)
    return np.concatenate([self._maps(state, b)[0][:, 0] for b in batches])[:len(queries)]

  def _score(self, maps: list, gts: list, prefix: str) -> dict[str, float]:
    size = int(self.config.data.image_size)
    maps_a = np.stack(maps) if maps else np.zeros((0, 1, 1))
    gts_a = np.stack(gts) if gts else np.zeros((0, size, size), bool)
    return gm.grounding_metrics(maps_a, gts_a, prefix=prefix,
                                interpolation=str(self.cfg.interpolation),
                                smooth_sigma=float(self.cfg.smooth_sigma),
                                thresholds=tuple(float(t) for t in self.cfg.miou_thresholds))

  def _synthetic(self, state, batches_fn) -> dict[str, float]:
    size = int(self.config.data.image_size)
    maps, gts, images, queries, qgts = [], [], [], [], []
    for host in batches_fn():
      if "box_mask" not in host:  # a data set without boxes: a reported skip
        return {"grounding/skipped_no_boxes": 1.0}
      smap, smask = self._maps(state, host)
      valid = np.asarray(host["valid"], bool) & np.any(np.asarray(host["box_mask"], bool), axis=1)
      for b in np.flatnonzero(valid):
        bm = np.asarray(host["box_mask"][b], bool)
        boxes, blabels = np.asarray(host["boxes"][b])[bm], np.asarray(host["box_labels"][b])[bm]
        sentences = sent.decode_sentences(self.decoder, np.asarray(host["input_ids"][b]),
                                         np.asarray(host["token_to_sentence"][b]),
                                         np.asarray(host["attention_mask"][b]), smask.shape[1])
        for s, text in enumerate(sentences):
          hit = sent.match_sentence(text, blabels, self.patterns) if smask[b, s] else []
          if hit:
            maps.append(smap[b, s])
            gts.append(boxes_to_mask(boxes[hit], size, size))
        if self.cfg.templated:
          images.append(np.asarray(host["image"][b]))
          for box, label in zip(boxes, blabels):
            li = int(label)
            name = self.label_names[li] if 0 <= li < len(self.label_names) else ""
            queries.append((len(images) - 1, sent.templated_sentence(name, box)))
            qgts.append(boxes_to_mask(box, size, size))
    out = self._score(maps, gts, "grounding/synthetic")
    if self.cfg.templated:
      qmaps = self._query_maps(state, np.stack(images) if images else None, queries)
      out.update(self._score(list(qmaps), qgts, "grounding/synthetic_templated"))
    return out

  def _phrase(self, state) -> dict[str, float]:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    data_cfg = ml_collections.ConfigDict(self.config.data.to_dict())
    split = str(data_cfg.eval_split)
    names, most = pipeline.box_label_vocabulary(data_cfg.dataset_dir, split)
    data_cfg.max_boxes = max(int(data_cfg.max_boxes), most, 1)
    size = int(data_cfg.image_size)
    max_examples = int(self.config.eval.get("max_examples", 0)) or None
    maps, gts, unlabelled = [], [], 0
    for host in pipeline.make_eval_batches(data_cfg, split=split, batch_size=self.batch_size,
                                           max_examples=max_examples, box_label_names=names):
      pairs, n = phrase_pairs(host, names, size)
      unlabelled += n
      if pairs:
        qmaps = self._query_maps(state, np.asarray(host["image"]),
                                 [(row, phrase) for row, phrase, _ in pairs])
        maps.extend(qmaps)
        gts.extend(gt for _, _, gt in pairs)
    out = self._score(maps, gts, "grounding/phrase")
    out["grounding/phrase/unlabelled_boxes"] = float(unlabelled)
    return out

  def _nih(self, state) -> dict[str, float]:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    data_cfg = ml_collections.ConfigDict(self.config.data.to_dict())
    data_cfg.dataset_dir = str(self.cfg.nih_dataset_dir)
    names = pipeline.dataset_info(data_cfg.dataset_dir)["label_names"]
    size = int(data_cfg.image_size)
    images, queries, gts = [], [], []
    for split in ("validate", "test"):
      for host in pipeline.make_eval_batches(data_cfg, split=split, batch_size=self.batch_size,
                                             max_examples=int(self.cfg.nih_max_examples) or None):
        ok = np.asarray(host["valid"], bool) & np.any(np.asarray(host["box_mask"], bool), axis=1)
        for b in np.flatnonzero(ok):
          images.append(np.asarray(host["image"][b]))
          for j in np.flatnonzero(np.asarray(host["box_mask"][b], bool)):
            li = int(host["box_labels"][b, j])
            box = np.asarray(host["boxes"][b, j])
            queries.append((len(images) - 1,
                            sent.templated_sentence(names[li] if 0 <= li < len(names) else "", box)))
            gts.append(boxes_to_mask(box, size, size))
    qmaps = self._query_maps(state, np.stack(images) if images else None, queries)
    return self._score(list(qmaps), gts, "grounding/nih_templated")

  def __call__(self, state, batches_fn: Callable[[], Iterable[Mapping[str, np.ndarray]]]
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scalars = (self._phrase(state) if self.source == "phrase"
               else self._synthetic(state, batches_fn))
    if str(self.cfg.nih_dataset_dir):
      scalars.update(self._nih(state))
    return scalars, {}


__all__ = ["GroundingEvaluator", "SOURCES", "phrase_of_box_label", "phrase_pairs"]
