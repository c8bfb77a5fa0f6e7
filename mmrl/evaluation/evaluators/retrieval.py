"""Image<->report retrieval on held-out pairs: Recall@K, median rank, and the chance levels.

`retrieval_metrics` is the math (numpy, no JAX); `FeatureRetrievalEvaluator` scores the features
of `mmrl.evaluation.features` (the runner's path) and draws a text->image retrieval sheet.

Positives are grouped by study (the usual protocol): a study's images all carry the study's one
report, so for an image query every report of its study is a positive, and for a report query
every image of its study. A query's rank is the number of *negatives* (items of other studies)
scoring at least as high as its best-scoring positive; R@K is the share of queries with rank < K.
Ties with a negative count against the query (a constant score never looks good); ties among a
study's own items do not (they are the same report). Without study ids every pair is its own
study, and chance R@K = K / N. Study ids are the batches' `study_id` (a 31-bit hash of the
study id: two studies collide with probability about N^2 / 2^32, then they count as one).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np


def retrieval_metrics(image_embed: np.ndarray, text_embed: np.ndarray, *,
                      groups: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                      ks: Sequence[int] = (1, 5, 10),
                      prefix: str = "retrieval") -> dict[str, float]:
  """Recall@K both ways for N aligned pairs (rows are L2-normalised here, cosine scores).

  Args:
    image_embed, text_embed: [N, D]; row i of each is pair i.
    groups: int [N], the study of each pair (module docstring); None = every pair its own.
    labels: bool [N, K], the positive findings of each pair: also reports class-aware retrieval,
      `<dir>_label_P@1`, how often the top-ranked item of *another study* has exactly the
      query's set of positive findings, and its chance level under random ranking.
    ks: the K of R@K.
    prefix: metric name prefix.

  Returns:
    '<prefix>/{i2t,t2i}_R@K', '<prefix>/{i2t,t2i}_median_rank' (1-based rank of the first
    positive), '<prefix>/chance_R@K' (expected R@K of a random ranking, given the study sizes),
    '<prefix>/num_pairs', '<prefix>/num_studies' (and the label metrics).
  """
  img = _normalise(np.asarray(image_embed, np.float64))
  txt = _normalise(np.asarray(text_embed, np.float64))
  if img.shape != txt.shape or img.ndim != 2:
    raise ValueError(f"need equal [N, D] embeddings, got {img.shape} and {txt.shape}")
  n = img.shape[0]
  same = same_study(groups, n)
  scores = img @ txt.T
  out = {f"{prefix}/num_pairs": float(n),
         f"{prefix}/num_studies": float(len(np.unique(np.asarray(groups).reshape(-1))))
         if groups is not None else float(n)}
  for name, s in (("i2t", scores), ("t2i", scores.T)):  # `same` is symmetric
    ranks = first_positive_ranks(s, same)
    for k in ks:
      out[f"{prefix}/{name}_R@{k}"] = float(np.mean(ranks < k))
    out[f"{prefix}/{name}_median_rank"] = float(np.median(ranks) + 1)
  positives = same.sum(axis=1)
  for k in ks:
    out[f"{prefix}/chance_R@{k}"] = float(np.mean(_chance_hit(n, positives, k)))
  if labels is not None:
    out.update(_label_precision_at_1(scores, np.asarray(labels, bool), same, prefix))
  return out


def same_study(groups: Optional[np.ndarray], n: int) -> np.ndarray:
  """bool [N, N]: True where items i and j belong to one study (the diagonal without groups)."""
  if groups is None:
    return np.eye(n, dtype=bool)
  g = np.asarray(groups).reshape(-1)
  if g.shape[0] != n:
    raise ValueError(f"groups has {g.shape[0]} entries for {n} pairs")
  return g[:, None] == g[None, :]


def first_positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """int [Q]: 0-based rank of each row's best-scoring positive among the row's negatives
  (negatives tying it rank ahead of it). Every row needs at least one positive."""
  best = np.max(np.where(positive, scores, -np.inf), axis=1, keepdims=True)
  return np.sum((scores >= best) & ~positive, axis=1)


def _chance_hit(n: int, positives: np.ndarray, k: int) -> np.ndarray:
  """P(some positive in the top k of a uniformly random order of n items, m of them positive)
  = 1 - C(n - m, k) / C(n, k), per query."""
  k = min(k, n)
  miss = np.ones(len(positives), np.float64)
  for t in range(k):
    miss *= np.clip((n - positives - t) / (n - t), 0.0, None)
  return 1.0 - miss


def _label_precision_at_1(scores: np.ndarray, labels: np.ndarray, same: np.ndarray,
                          prefix: str) -> dict[str, float]:
  n = scores.shape[0]
  if labels.shape[0] != n:
    raise ValueError(f"labels has {labels.shape[0]} rows for {n} pairs")
  same_labels = np.all(labels[:, None, :] == labels[None, :, :], axis=-1)
  others = ~same  # items of other studies: a same-study item has the query's very report
  rows = others.any(axis=1)
  if not rows.any():
    return {}
  out = {}
  for name, s in (("i2t", scores), ("t2i", scores.T)):
    top = np.argmax(np.where(others, s, -np.inf), axis=1)
    out[f"{prefix}/{name}_label_P@1"] = float(np.mean(same_labels[np.arange(n), top][rows]))
  out[f"{prefix}/chance_label_P@1"] = float(np.mean(
      (np.sum(same_labels & others, axis=1) / np.maximum(others.sum(axis=1), 1))[rows]))
  return out


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k_images(image_embed: np.ndarray, text_embed: np.ndarray, k: int) -> np.ndarray:
  """int [N, k]: for each report, the indices of its k best-scoring images (ties: lower index)."""
  scores = _normalise(np.asarray(text_embed, np.float64)) @ _normalise(
      np.asarray(image_embed, np.float64)).T
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


class FeatureRetrievalEvaluator:
  """`config.eval.retrieval` (split, max_examples, sheet_queries, sheet_k).
  `__call__(state, features_fn) -> (scalars, images)`; images['retrieval/text_to_image'] shows,
  per query report (its text, decoded from the tokens the model read), the report's own image
  and the top-k retrieved ones, framed green when of the query's study and red otherwise."""

  def __init__(self, config):
    self.cfg = config.eval.retrieval
    self.data = config.data

  def __call__(self, state, features_fn):
    del state
    f = features_fn(self.cfg.split or self.data.eval_split, self.cfg.max_examples,
                    images=int(self.cfg.sheet_queries) > 0)
    if "image_embed" not in f or "text_embed" not in f:
      # e.g. local_mi: it scores image-report pairs with a critic, not with embeddings.
      logging.getLogger(__name__).warning(
          "retrieval skipped: the method has no global image/text embeddings")
      return {}, {}
    if len(f["image_embed"]) < 2:
      raise ValueError("retrieval needs at least 2 evaluation pairs; check data.eval_split")
    groups = f.get("study_id")
    if groups is None:
      logging.getLogger(__name__).warning(
          "retrieval: the features carry no study_id; every pair counts as its own study")
    positives = (f["labels"] == 1) & f["label_mask"].astype(bool)
    out = retrieval_metrics(f["image_embed"], f["text_embed"], groups=groups, labels=positives)
    images = {}
    q = min(int(self.cfg.sheet_queries), len(f["image_embed"]))
    if q > 0 and "image" in f:
      from mmrl.viz import sheets  # pylint: disable=g-import-not-at-top
      k = min(int(self.cfg.sheet_k), len(f["image_embed"]))
      top = top_k_images(f["image_embed"], f["text_embed"][:q], k)
      images["retrieval/text_to_image"] = sheets.retrieval_sheet(
          f["image"], top, queries=self._query_texts(f, q), groups=groups)
    return out, images

  def _query_texts(self, f, q: int) -> Optional[list[str]]:
    if "input_ids" not in f:
      return None
    from data_pipeline import tokenization  # pylint: disable=g-import-not-at-top
    tok = tokenization.ReportTokenizer(str(self.data.tokenizer))
    return [tok.decode(ids) for ids in np.asarray(f["input_ids"])[:q]]
