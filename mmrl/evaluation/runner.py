"""Runs the configured evaluators on a frozen state: during training and from experiments/evaluate.

`EvalRunner(config, mesh, state_shardings)` builds the evaluators of `config.eval.<name>` lazily
and, per call, extracts each needed split's features once (one jitted, mesh-sharded forward pass;
`mmrl.evaluation.features`) and hands them to every evaluator that reads that split.
`due(step, num_steps)` names the enabled evaluators whose `every` (0 = train.eval_every) divides
`step` (all enabled ones at the last step). `__call__(state, names)` returns
(scalars: dict[str, float], images: dict[str, uint8 HxWx3]).

Evaluators: retrieval, zero_shot, linear_probe, segmentation (this package; its head may be a
U-Net / SETR decoder), detection (YOLOv3-style head on the tower's pyramid), grounding
(`mmrl.evaluation.grounding`: CNR / mIoU / pointing of the method's sentence maps) and localisation
(`mmrl.evaluation.localisation.LocalisationEvaluator`, imported only when asked for; skipped with a
warning when that module is not installed).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import time
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np
from jax.sharding import Mesh

from data_pipeline import pipeline as data_lib
from data_pipeline import synthetic_dataset
from data_pipeline import transforms
from data_pipeline import tokenization
from mmrl.evaluation import detection
from mmrl.evaluation import features as features_lib
from mmrl.evaluation import linear_probe
from mmrl.evaluation import retrieval
from mmrl.evaluation import segmentation
from mmrl.evaluation import zero_shot

log = logging.getLogger(__name__)

EVALUATORS = ("retrieval", "zero_shot", "linear_probe", "segmentation", "detection", "grounding",
              "localisation")


class EvalRunner:
  """See the module docstring. `config.data.dataset_dir` must name the converted data set."""

  def __init__(self, config: Any, mesh: Mesh, state_shardings: Any):
    self.config = config
    self.mesh = mesh
    self.state_shardings = state_shardings
    self.label_names = tuple(data_lib.dataset_info(config.data.dataset_dir)["label_names"])
    self.step_fn = features_lib.make_feature_step(mesh, state_shardings)
    self._evaluators: dict[str, Any] = {}
    self._cache: dict[tuple, dict[str, np.ndarray]] = {}
    for name in self.enabled():
      self._get(name)  # config errors surface before training starts

  # -- scheduling --------------------------------------------------------------------------
  def enabled(self) -> list[str]:
    return [n for n in EVALUATORS if n in self.config.eval and self.config.eval[n].enabled]

  def every(self, name: str) -> int:
    every = int(self.config.eval[name].get("every", 0))
    return every if every > 0 else int(self.config.train.eval_every)

  def due(self, step: int, num_steps: int) -> list[str]:
    """Enabled evaluators to run after `step`."""
    return [n for n in self.enabled()
            if step == num_steps or (self.every(n) > 0 and step % self.every(n) == 0)]

  # -- running -----------------------------------------------------------------------------
  def __call__(self, state: Any, names: Optional[Sequence[str]] = None
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    names = self.enabled() if names is None else list(names)
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
      raise ValueError(f"unknown evaluator(s) {unknown}; known: {', '.join(EVALUATORS)}")
    scalars: dict[str, float] = {}
    images: dict[str, np.ndarray] = {}
    self._cache.clear()
    try:
      for name in names:
        evaluator = self._get(name)
        if evaluator is None:
          continue
        t0 = time.time()
        s, im = self._run(name, evaluator, state)
        scalars.update({k: float(v) for k, v in s.items()})
        scalars[f"{name}/eval_seconds"] = time.time() - t0
        images.update(im)
    finally:
      self._cache.clear()  # features are per state; keep no host copies between calls
    return scalars, images

  def run_one(self, name: str, evaluator: Any, state: Any
              ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs `evaluator` (kind `name`, built by the caller, e.g. with a per-run config) on
    `state`, reusing the features earlier `run_one` calls extracted; `clear()` when the state
    changes. The downstream runner scores many (fraction, seed) runs this way."""
    return self._run(name, evaluator, state)

  def clear(self) -> None:
    """Drops the cached features (call when the state changes)."""
    self._cache.clear()

  def _run(self, name: str, evaluator: Any, state: Any):
    if name in ("retrieval", "segmentation"):
      return evaluator(state, self._features_fn(state))
    if name == "zero_shot":
      return evaluator(state, self._features_fn(state), self._embed_text_fn(state))
    if name == "linear_probe":
      return evaluator(state, self._features_fn(state), self._images_fn(state))
    if name == "detection":
      return evaluator(state, self._features_fn(state))
    return evaluator(state, self.batches)  # grounding, localisation

  def _get(self, name: str):
    if name in self._evaluators:
      return self._evaluators[name]
    config = self.config
    if name == "retrieval":
      ev = retrieval.FeatureRetrievalEvaluator(config)
    elif name == "zero_shot":
      ev = zero_shot.ZeroShotEvaluator(config, self.label_names)
    elif name == "linear_probe":
      ev = linear_probe.LinearProbeEvaluator(config, self.label_names)
    elif name == "segmentation":
      ev = segmentation.SegmentationEvaluator(config, self.label_names)
    elif name == "detection":
      ev = detection.DetectionEvaluator(config, self.label_names)
    elif name == "grounding":
      from mmrl.evaluation import grounding  # pylint: disable=g-import-not-at-top
      ev = grounding.GroundingEvaluator(config, self.mesh, self.state_shardings,
                                        label_names=self.label_names)
    else:
      ev = _localisation(config, self.mesh, self.state_shardings)
    self._evaluators[name] = ev
    return ev

  # -- data --------------------------------------------------------------------------------
  def _size(self, max_examples: int) -> int:
    return int(max_examples) if int(max_examples) > 0 else int(self.config.eval.max_examples)

  def batches(self, split: str = "", max_examples: int = 0, with_masks: bool = False):
    """Evaluation batches of `split` ('' = data.eval_split), padded rows valid=False."""
    return data_lib.make_eval_batches(
        self.config.data, split=split or self.config.data.eval_split,
        batch_size=int(self.config.eval.batch_size), max_examples=self._size(max_examples),
        with_masks=with_masks, max_masks=int(self.config.eval.segmentation.max_masks))

  def _features_fn(self, state) -> Callable[..., dict[str, np.ndarray]]:
    """`features(split, max_examples=0, with_masks=False, images=False)`: `extract_features`
    output of a split, extracted once per evaluation (a superset already extracted is reused);
    `images` also keeps the input images (sheets, fine-tuning)."""
    def features(split: str, max_examples: int = 0, with_masks: bool = False,
                 images: bool = False):
      n = self._size(max_examples)
      for (s, m, masks), f in self._cache.items():
        if (s, m) == (split, n) and (masks or not with_masks) and ("image" in f or not images):
          return f
      batches = self.batches(split, n, with_masks)
      f = features_lib.extract_features(state, self.step_fn, batches, self.mesh,
                                        keep_images=images)
      if getattr(batches, "num_skipped", 0):
        log.warning("evaluation split %s: %d bad records skipped", split, batches.num_skipped)
      self._cache[(split, n, with_masks)] = f
      return f
    return features

  def _images_fn(self, state):
    features = self._features_fn(state)

    def images(split: str, max_examples: int = 0):
      f = features(split, max_examples, images=True)
      return f["image"], f["labels"], f["label_mask"]
    return images

  def _embed_text_fn(self, state) -> Callable[[Sequence[str]], np.ndarray]:
    """Projected, L2-normalised embeddings of single-sentence texts (images are zeros)."""
    data = self.config.data
    tok = tokenization.ReportTokenizer(str(data.tokenizer), lowercase=bool(data.lowercase))
    pad = transforms.RecordTransform(data, self.label_names, train=False).padding_example()
    bs = int(self.config.eval.batch_size)

    def embed(texts: Sequence[str]) -> np.ndarray:
      enc = tok.encode_batch([[t] for t in texts], int(data.max_tokens), int(data.max_sentences))
      out = []
      for start in range(0, len(texts), bs):
        n = min(bs, len(texts) - start)
        batch = {k: np.stack([v] * bs) for k, v in pad.items()}
        for k, v in enc.items():
          batch[k][:n] = v[start:start + n]
        batch["sentence_mask"][:n, 0] = True
        batch["n_sentences"][:n] = 1
        batch["valid"][:n] = True
        f = features_lib.extract_features(state, self.step_fn, [batch], self.mesh,
                                          keep_local=False)
        out.append(f["text_embed"])
      return np.concatenate(out)
    return embed


def _localisation(config, mesh, state_shardings):
  try:
    localisation = importlib.import_module("mmrl.evaluation.localisation")
  except ModuleNotFoundError as e:
    if e.name != "mmrl.evaluation.localisation":
      raise
    log.warning("config.eval.localisation is requested but mmrl/evaluation/localisation.py is "
                "not installed; skipping it")
    return None
  return localisation.LocalisationEvaluator(config, mesh, state_shardings)




def evaluate_checkpoint(config: Any, checkpoint: str, names: Optional[Sequence[str]] = None, *,
                        step: Optional[int] = None, init: str = "checkpoint"
                        ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
  """Restores `checkpoint` (a run dir or its checkpoints/) and runs `names` (default: all
  evaluators; localisation only when its module is installed). Returns (scalars, images, step).

  init='random' evaluates a freshly initialised state instead (config.seed; the text tower still
  loads config.model.text.weights): the random-init baseline of the downstream protocols, on the
  same data and mesh as the checkpoint.

  With data.dataset_dir '' the synthetic data set is resolved as pretraining did (under the run
  directory or data.synthetic.cache_dir).
  """
  ckpt_dir = features_lib.checkpoint_dir(checkpoint)
  config = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  config.data.dataset_dir = str(synthetic_dataset.resolve_dataset_dir(
      config.data, ckpt_dir.parent, make=True))
  state, mesh, shardings, step = features_lib.restore_or_init(config, ckpt_dir, step=step,
                                                               init=init)
  runner = EvalRunner(config, mesh, shardings)
  if names is None:
    names = [n for n in EVALUATORS if n != "localisation" or _localisation_installed()]
  scalars, images = runner(state, names)
  return scalars, images, int(step)


def evaluate_random_init(config: Any, names: Optional[Sequence[str]] = None
                         ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
  """The evaluators on a freshly initialised state (seed `config.seed`; no training): the
  random-initialisation baseline. `config.data.dataset_dir` must name converted shards.
  Returns (scalars, images, 0)."""
  from mmrl.train import run_dir  # pylint: disable=g-import-not-at-top
  if not str(config.data.dataset_dir):
    raise ValueError("--init=random without --checkpoint needs --config.data.dataset_dir=<converted shards> (there "
                     "is no run directory to find synthetic data under)")
  state, mesh, shardings = run_dir.random_init(config)
  runner = EvalRunner(config, mesh, shardings)
  if names is None:
    names = [n for n in EVALUATORS if n != "localisation" or _localisation_installed()]
  scalars, images = runner(state, names)
  return scalars, images, 0


def _localisation_installed() -> bool:
  return importlib.util.find_spec("mmrl.evaluation.localisation") is not None


__all__ = ["EvalRunner", "EVALUATORS", "evaluate_checkpoint", "evaluate_random_init"]
