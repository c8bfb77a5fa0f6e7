"""Image<->report retrieval on held-out pairs: Recall@K, median rank, and the chance levels.

`retrieval_metrics` is the math (numpy, no JAX); `RetrievalEvaluator` embeds an evaluation split
with the model's frozen encoders and calls it; `FeatureRetrievalEvaluator` scores the features
of `mmrl.evaluation.features` (the runner's path) and draws a text->image retrieval sheet. Pair i's positive is report i; ties count against
the query (a constant score never looks good), so chance R@K = K / N.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np


def retrieval_metrics(image_embed: np.ndarray, text_embed: np.ndarray, *,
                      labels: Optional[np.ndarray] = None, ks: Sequence[int] = (1, 5, 10),
                      prefix: str = "retrieval") -> dict[str, float]:
  """Recall@K both ways for N aligned pairs (rows are L2-normalised here, cosine scores).

  With `labels` (bool [N, K]: the positive findings of each pair) it also reports class-aware
  retrieval, `<dir>_label_P@1`: how often the top-ranked *other* item has exactly the query's set
  of positive findings (the query's own pair excluded), and its chance level under random ranking.
  """
  img = _normalise(np.asarray(image_embed, np.float64))
  txt = _normalise(np.asarray(text_embed, np.float64))
  if img.shape != txt.shape or img.ndim != 2:
    raise ValueError(f"need equal [N, D] embeddings, got {img.shape} and {txt.shape}")
  n = img.shape[0]
  scores = img @ txt.T
  out = {f"{prefix}/num_pairs": float(n)}
  for name, s in (("i2t", scores), ("t2i", scores.T)):
    ranks = _ranks_of_diagonal(s)
    for k in ks:
      out[f"{prefix}/{name}_R@{k}"] = float(np.mean(ranks < k))
    out[f"{prefix}/{name}_median_rank"] = float(np.median(ranks) + 1)
  for k in ks:
    out[f"{prefix}/chance_R@{k}"] = min(1.0, k / n)
  if labels is not None:
    out.update(_label_precision_at_1(scores, np.asarray(labels, bool), prefix))
  return out


def _label_precision_at_1(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
  n = scores.shape[0]
  if labels.shape[0] != n:
    raise ValueError(f"labels has {labels.shape[0]} rows for {n} pairs")
  same = np.all(labels[:, None, :] == labels[None, :, :], axis=-1)
  others = ~np.eye(n, dtype=bool)
  out = {}
  for name, s in (("i2t", scores), ("t2i", scores.T)):
    top = np.argmax(np.where(others, s, -np.inf), axis=1)
    out[f"{prefix}/{name}_label_P@1"] = float(np.mean(same[np.arange(n), top]))
  out[f"{prefix}/chance_label_P@1"] = float(np.sum(same & others) / max(1, n * (n - 1)))
  return out


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ranks_of_diagonal(scores: np.ndarray) -> np.ndarray:
  """0-based rank of each row's diagonal entry; other entries that tie it rank ahead of it."""
  pos = np.diagonal(scores)[:, None]
  off_diag = ~np.eye(scores.shape[0], dtype=bool)
  return np.sum((scores >= pos) & off_diag, axis=1)


def top_k_images(image_embed: np.ndarray, text_embed: np.ndarray, k: int) -> np.ndarray:
  """int [N, k]: for each report, the indices of its k best-scoring images (ties: lower index)."""
  scores = _normalise(np.asarray(text_embed, np.float64)) @ _normalise(
      np.asarray(image_embed, np.float64)).T
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


class FeatureRetrievalEvaluator:
  """`config.eval.retrieval` (split, max_examples, sheet_queries, sheet_k).
  `__call__(state, features_fn) -> (scalars, images)`; images['retrieval/text_to_image'] shows,
  per query report, its own image then the top-k retrieved ones (green = its pair)."""

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
    positives = (f["labels"] == 1) & f["label_mask"].astype(bool)
    out = retrieval_metrics(f["image_embed"], f["text_embed"], labels=positives)
    images = {}
    q = min(int(self.cfg.sheet_queries), len(f["image_embed"]))
    if q > 0 and "image" in f:
      from mmrl.evaluation import sheets  # pylint: disable=g-import-not-at-top
      k = min(int(self.cfg.sheet_k), len(f["image_embed"]))
      top = top_k_images(f["image_embed"], f["text_embed"][:q], k)
      images["retrieval/text_to_image"] = sheets.retrieval_sheet(f["image"], top)
    return out, images


class RetrievalEvaluator:
  """Embeds `batches` (dicts with a boolean `valid`) with `embed_fn` and scores retrieval.

  `embed_fn(batch) -> (image_embed [B, D], text_embed [B, D])` as host numpy arrays. When batches
  carry `labels`/`label_mask` (batch_spec), class-aware P@1 is scored on the positive findings.
  """

  def __init__(self, batches_fn: Callable[[], Iterable[Mapping[str, np.ndarray]]],
               embed_fn: Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]):
    self.batches_fn = batches_fn
    self.embed_fn = embed_fn

  def run(self) -> dict[str, float]:
    images, texts, positives = [], [], []
    for batch in self.batches_fn():
      img, txt = self.embed_fn(batch)
      valid = np.asarray(batch["valid"], bool)
      images.append(np.asarray(img)[valid])
      texts.append(np.asarray(txt)[valid])
      if "labels" in batch and "label_mask" in batch:
        pos = (np.asarray(batch["labels"]) == 1) & np.asarray(batch["label_mask"], bool)
        positives.append(pos[valid])
    if not images or sum(len(i) for i in images) < 2:
      raise ValueError("retrieval needs at least 2 evaluation pairs; check data.eval_split")
    labels = np.concatenate(positives) if len(positives) == len(images) else None
    return retrieval_metrics(np.concatenate(images), np.concatenate(texts), labels=labels)
