"""Zero-shot classification from prompts (CheXzero-style; METHODS.md §9.2 "Zero-shot").

For each finding c a positive and a negative prompt ("There is {finding}." / "No {finding}."
by default; §9.2 writes "{c}" / "no {c}") are embedded with the model's text tower and text
projection. An image's score for c is

    s_c = softmax([cos(v, u+_c), cos(v, u-_c)] / tau)_0  =  sigmoid((cos+ - cos-) / tau)

and per-class AUC is computed against binary labels (entries with label_mask False, e.g. the
CheXpert "uncertain" / "not mentioned" ones, are left out of that class).

- `build_prompts`: the prompt pairs per finding (CHEXPERT_LABELS by default).
- `zero_shot_scores`: the pure scoring (numpy, float64). The image embeddings are [N, d] for
  text-independent image towers, or [N, C, 2, d] when the image embedding depends on the text it
  is paired with (LRCLR with image_embed_from='fused': one embedding per (class, prompt)).
- `zero_shot_auc`: per-class Mann-Whitney AUC with tie averaging (no sklearn;
  `mmrl.evaluation.metrics.classification.roc_auc`).
- `embed_prompts`: prompts -> text embeddings with any `apply_text(batch) -> [n, d]` function and
  a `data_pipeline.tokenization.ReportTokenizer`.
- `load_prompt_sets`: prompt sets (several positive and negative prompts per finding) from a JSON
  file, by default the shipped prompts/chexpert_prompts.json; `config.eval.zero_shot.prompts`
  replaces it. A set's embedding is the normalised mean of its prompts' embeddings.
- `zero_shot_accuracy`: accuracy of "P(finding) >= 0.5" on the known labels.
- `ZeroShotEvaluator`: embeds the prompt sets with the run's text tower and scores a split
  (AUROC and accuracy per finding of the data set's label vocabulary, and their means).
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from mmrl.evaluation.metrics.classification import roc_auc

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = pathlib.Path(__file__).parents[1] / "prompts" / "chexpert_prompts.json"

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                        "Pleural Effusion")


def build_prompts(findings: Sequence[str] = CHEXPERT_LABELS, *,
                  positive: str = "There is {finding}.", negative: str = "No {finding}.",
                  lowercase: bool = True) -> list[tuple[str, str]]:
  """(positive, negative) prompt per finding, e.g. ('There is edema.', 'No edema.')."""
  out = []
  for f in findings:
    name = f.lower() if lowercase else f
    try:
      out.append((positive.format(finding=name), negative.format(finding=name)))
    except KeyError as e:
      raise ValueError(f"prompt templates may only use '{{finding}}'; got positive={positive!r}, "
                       f"negative={negative!r} (unknown field {e})") from None
  return out


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_scores(image_embed: np.ndarray, positive_embed: np.ndarray,
                     negative_embed: np.ndarray, *, tau: float = 1.0) -> np.ndarray:
  """P(finding) f64[N, C] (module docstring).

  Args:
    image_embed: [N, d], or [N, C, 2, d] (one per class and prompt: [..., 0, :] paired with the
      positive prompt, [..., 1, :] with the negative one).
    positive_embed, negative_embed: [C, d] prompt embeddings.
    tau: softmax temperature (the ranking, hence the AUC, does not depend on it).
  """
  pos, neg = _unit(positive_embed), _unit(negative_embed)
  if pos.shape != neg.shape or pos.ndim != 2:
    raise ValueError(f"need equal [C, d] prompt embeddings, got {pos.shape} and {neg.shape}")
  img = _unit(image_embed)
  if img.ndim == 2:
    cos_pos, cos_neg = img @ pos.T, img @ neg.T
  elif img.ndim == 4 and img.shape[1:3] == (pos.shape[0], 2):
    cos_pos = np.einsum("ncd,cd->nc", img[:, :, 0], pos)
    cos_neg = np.einsum("ncd,cd->nc", img[:, :, 1], neg)
  else:
    raise ValueError(f"image_embed must be [N, d] or [N, C={pos.shape[0]}, 2, d]; got "
                     f"{img.shape}")
  if tau <= 0:
    raise ValueError(f"zero_shot_scores tau={tau} must be > 0")
  z = (cos_pos - cos_neg) / tau
  return 1.0 / (1.0 + np.exp(-z))


def zero_shot_auc(scores: np.ndarray, labels: np.ndarray, *,
                  label_mask: Optional[np.ndarray] = None,
                  findings: Sequence[str] = CHEXPERT_LABELS,
                  prefix: str = "zero_shot") -> dict[str, float]:
  """Per-class AUC '<prefix>/auc/<finding>' and their mean '<prefix>/mean_auc' (NaNs skipped)."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(findings):
    raise ValueError(f"scores {scores.shape}, labels {labels.shape} and {len(findings)} findings "
                     "must agree as [N, C]")
  mask = np.ones(scores.shape, bool) if label_mask is None else np.asarray(label_mask, bool)
  out = {}
  for c, name in enumerate(findings):
    m = mask[:, c]
    out[f"{prefix}/auc/{name}"] = roc_auc(scores[m, c], labels[m, c] > 0)
  aucs = [v for v in out.values() if not np.isnan(v)]
  out[f"{prefix}/mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
  return out


def embed_prompts(apply_text: Callable[[Mapping[str, np.ndarray]], np.ndarray], tokenizer,
                  prompts: Sequence[tuple[str, str]], *, max_tokens: int, max_sentences: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(positive [C, d], negative [C, d]) embeddings of the prompt pairs.

  Args:
    apply_text: maps a text batch (the tokenizer's fields input_ids, attention_mask,
      token_to_sentence, token_to_word; plus sentence_mask and valid, added here) to text
      embeddings [n, d], e.g.
      `lambda b: model.apply(variables, {**b, 'image': zeros}, train=False)['text_embed']`.
    tokenizer: a `data_pipeline.tokenization.ReportTokenizer`.
    prompts: from `build_prompts`.
    max_tokens, max_sentences: the model's text shapes (config.data.*).
  """
  texts = [[p] for pair in prompts for p in pair]
  batch = dict(tokenizer.encode_batch(texts, max_tokens, max_sentences))
  sentence_mask = np.zeros((len(texts), max_sentences), bool)
  sentence_mask[:, 0] = True  # every prompt is one sentence
  batch["sentence_mask"] = sentence_mask
  batch["valid"] = np.ones((len(texts),), bool)
  emb = np.asarray(apply_text(batch), np.float64)
  return emb[0::2], emb[1::2]


def load_prompt_sets(path: str | pathlib.Path = "") -> dict[str, tuple[list[str], list[str]]]:
  """finding -> (positive prompts, negative prompts) from a JSON file
  {"findings": {name: {"positive": [...], "negative": [...]}}} ('' = the shipped CheXpert set)."""
  path = pathlib.Path(path) if path else DEFAULT_PROMPTS
  try:
    doc = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"config.eval.zero_shot.prompts={str(path)!r} is not a readable JSON prompt "
                     f"file ({e}); see {DEFAULT_PROMPTS} for the format") from None
  out = {}
  for name, entry in dict(doc.get("findings", {})).items():
    pos, neg = entry.get("positive", []), entry.get("negative", [])
    if isinstance(pos, str):
      pos = [pos]
    if isinstance(neg, str):
      neg = [neg]
    if not pos or not neg:
      raise ValueError(f"{path}: finding {name!r} needs at least one 'positive' and one "
                       "'negative' prompt")
    out[str(name)] = ([str(p) for p in pos], [str(n) for n in neg])
  if not out:
    raise ValueError(f"{path} has no 'findings'; see {DEFAULT_PROMPTS} for the format")
  return out


def mean_prompt_embedding(embeddings: np.ndarray, groups: Sequence[int]) -> np.ndarray:
  """[sum(groups), d] prompt embeddings -> [len(groups), d]: unit-norm mean of each group."""
  out, start = [], 0
  for g in groups:
    out.append(_unit(embeddings[start:start + g]).mean(axis=0))
    start += g
  return _unit(np.stack(out))


def zero_shot_accuracy(scores: np.ndarray, positive: np.ndarray, known: np.ndarray,
                       findings: Sequence[str], prefix: str = "zero_shot") -> dict[str, float]:
  """'<prefix>/accuracy/<finding>' of (score >= 0.5) == positive over known entries, and
  '<prefix>/mean_accuracy'."""
  out = {}
  for c, name in enumerate(findings):
    m = np.asarray(known[:, c], bool)
    if m.any():
      out[f"{prefix}/accuracy/{name}"] = float(np.mean((scores[m, c] >= 0.5) == positive[m, c]))
  accs = list(out.values())
  out[f"{prefix}/mean_accuracy"] = float(np.mean(accs)) if accs else float("nan")
  return out


class ZeroShotEvaluator:
  """Zero-shot classification of `config.eval.zero_shot.split` (default data.eval_split) with the
  prompt sets of `config.eval.zero_shot.prompts`, for the findings in `label_names`.

  `__call__(state, features_fn, embed_text_fn) -> (scalars, {})`: `features_fn(split, max)` gives
  `extract_features` output (image_embed, labels, label_mask); `embed_text_fn(texts)` gives the
  L2-normalised projected text embeddings [n, d] of single-sentence texts.
  """

  def __init__(self, config: Any, label_names: Sequence[str]):
    self.cfg = config.eval.zero_shot
    self.data = config.data
    sets = load_prompt_sets(self.cfg.prompts)
    names = tuple(label_names)
    self.findings = [f for f in sets if f in names]
    missing = [f for f in sets if f not in names]
    if missing:
      log.info("zero-shot: prompt findings not in the label vocabulary, skipped: %s", missing)
    if not self.findings:
      raise ValueError(f"none of the prompt findings {sorted(sets)} is in the data set's "
                       f"label_names {list(names)}; give a prompt file for this vocabulary "
                       "(config.eval.zero_shot.prompts)")
    self.columns = [names.index(f) for f in self.findings]
    self.sets = [sets[f] for f in self.findings]
    self.tau = float(self.cfg.tau)

  def __call__(self, state, features_fn, embed_text_fn) -> tuple[dict[str, float], dict]:
    del state
    feats = features_fn(self.cfg.split or self.data.eval_split, self.cfg.max_examples)
    if "image_embed" not in feats:  # e.g. local_mi: pairs are scored by a critic
      logging.getLogger(__name__).warning(
          "zero-shot skipped: the method has no global image embedding")
      return {}, {}
    texts, groups = [], []
    for pos, neg in self.sets:
      texts += pos + neg
      groups += [len(pos), len(neg)]
    emb = mean_prompt_embedding(np.asarray(embed_text_fn(texts), np.float64), groups)
    scores = zero_shot_scores(feats["image_embed"], emb[0::2], emb[1::2], tau=self.tau)
    labels = np.asarray(feats["labels"])[:, self.columns]
    known = np.asarray(feats["label_mask"], bool)[:, self.columns] & (labels != -1)
    positive = known & (labels == 1)
    out = zero_shot_auc(scores, positive.astype(np.float32), label_mask=known,
                        findings=self.findings)
    out = {k: v for k, v in out.items() if k.endswith("mean_auc") or not np.isnan(v)}
    out.update(zero_shot_accuracy(scores, positive, known, self.findings))
    out["zero_shot/num_examples"] = float(len(scores))
    return out, {}


__all__ = ["CHEXPERT_LABELS", "CHEXPERT_COMPETITION", "build_prompts", "zero_shot_scores",
           "zero_shot_auc", "embed_prompts", "load_prompt_sets",
           "mean_prompt_embedding", "zero_shot_accuracy", "ZeroShotEvaluator", "DEFAULT_PROMPTS"]
