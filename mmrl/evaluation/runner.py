"""Runs the configured evaluators on a frozen state: during training and from experiments/evaluate.

`EVALUATORS` (an `mmrl.registry.Registry`) maps each evaluator name (the `config.eval.<name>` key,
the `--evaluators=` names of experiments/evaluate.py and the prefix of its metric keys) to an
`EvaluatorSpec`: `build(config, ctx)` makes the evaluator and `call(evaluator, state, ctx)` feeds
it the inputs it reads. Every evaluator thus runs in one shape, `Bound(...)(state) -> (scalars,
images)`; `ctx` is an `EvalContext` (mesh, shardings, label names, and per-state data access).

`EvalRunner(config, mesh, state_shardings)` builds the evaluators of `config.eval.<name>` and,
per call, extracts each needed split's features once (one jitted, mesh-sharded forward pass;
`mmrl.evaluation.features`) and hands them to every evaluator that reads that split.
`due(step, num_steps)` names the enabled evaluators whose `every` (0 = train.eval_every) divides
`step` (all enabled ones at the last step). `__call__(state, names)` returns
(scalars: dict[str, float], images: dict[str, uint8 HxWx3]).

Evaluators (registration order = running order): retrieval, zero_shot, linear_probe,
segmentation (its head may be a U-Net / SETR decoder), detection (YOLOv3-style head on the
tower's pyramid), grounding (CNR / mIoU / pointing of the method's sentence maps) and
localisation (`mmrl.evaluation.evaluators.localisation.LocalisationEvaluator`).
"""
from __future__ import annotations

import dataclasses
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
from mmrl import registry
from mmrl.evaluation import features as features_lib
from mmrl.evaluation.evaluators import detection
from mmrl.evaluation.evaluators import grounding
from mmrl.evaluation.evaluators import linear_probe
from mmrl.evaluation.evaluators import localisation
from mmrl.evaluation.evaluators import retrieval
from mmrl.evaluation.evaluators import segmentation
from mmrl.evaluation.evaluators import zero_shot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What evaluators share: the mesh and state shardings, the data set's label names, and the
  runner (`features_fn(state)`, `images_fn(state)`, `embed_text_fn(state)`, `batches`)."""
  mesh: Any
  state_shardings: Any
  label_names: tuple[str, ...]
  data: "EvalRunner"


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
  """`build(config, ctx) -> evaluator`; `call(evaluator, state, ctx) -> (scalars, images)`."""
  build: Callable[[Any, EvalContext], Any]
  call: Callable[[Any, Any, EvalContext], tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class Bound:
  """An evaluator with its spec and context: `__call__(state) -> (scalars, images)`."""
  evaluator: Any
  spec: EvaluatorSpec
  ctx: EvalContext

  def __call__(self, state: Any) -> tuple[dict, dict]:
    return self.spec.call(self.evaluator, state, self.ctx)


EVALUATORS: registry.Registry[EvaluatorSpec] = registry.Registry("evaluator")
ORDER: list[str] = []  # registration order: the order enabled evaluators run and log in


def register(name: str, build: Callable[[Any, EvalContext], Any],
             call: Callable[[Any, Any, EvalContext], tuple[dict, dict]]) -> None:
  EVALUATORS.register(name)(EvaluatorSpec(build, call))
  ORDER.append(name)


def _on_features(ev, state, ctx):
  return ev(state, ctx.data.features_fn(state))


register("retrieval", lambda c, ctx: retrieval.FeatureRetrievalEvaluator(c), _on_features)
register("zero_shot", lambda c, ctx: zero_shot.ZeroShotEvaluator(c, ctx.label_names),
         lambda ev, state, ctx: ev(state, ctx.data.features_fn(state),
                                   ctx.data.embed_text_fn(state)))
register("linear_probe", lambda c, ctx: linear_probe.LinearProbeEvaluator(c, ctx.label_names),
         lambda ev, state, ctx: ev(state, ctx.data.features_fn(state),
                                   ctx.data.images_fn(state)))
register("segmentation", lambda c, ctx: segmentation.SegmentationEvaluator(c, ctx.label_names),
         _on_features)
register("detection", lambda c, ctx: detection.DetectionEvaluator(c, ctx.label_names),
         _on_features)
register("grounding",
         lambda c, ctx: grounding.GroundingEvaluator(c, ctx.mesh, ctx.state_shardings,
                                                     label_names=ctx.label_names),
         lambda ev, state, ctx: ev(state, ctx.data.batches))
register("localisation",
         lambda c, ctx: localisation.LocalisationEvaluator(c, ctx.mesh, ctx.state_shardings),
         lambda ev, state, ctx: ev(state, ctx.data.batches))


class EvalRunner:
  """See the module docstring. `config.data.dataset_dir` must name the converted data set."""

  def __init__(self, config: Any, mesh: Mesh, state_shardings: Any):
    self.config = config
    self.mesh = mesh
    self.state_shardings = state_shardings
    self.label_names = tuple(data_lib.dataset_info(config.data.dataset_dir)["label_names"])
    self.step_fn = features_lib.make_feature_step(mesh, state_shardings)
    self.ctx = EvalContext(mesh, state_shardings, self.label_names, self)
    self._evaluators: dict[str, Any] = {}
    self._cache: dict[tuple, dict[str, np.ndarray]] = {}
    for name in self.enabled():
      self._get(name)  # config errors surface before training starts

  # -- scheduling --------------------------------------------------------------------------
  def enabled(self) -> list[str]:
    return [n for n in ORDER if n in self.config.eval and self.config.eval[n].enabled]

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
      raise ValueError(f"unknown evaluator(s) {unknown}; known: {', '.join(ORDER)}")
    scalars: dict[str, float] = {}
    images: dict[str, np.ndarray] = {}
    self._cache.clear()
    try:
      for name in names:
        evaluator = self._get(name)
        t0 = time.time()
        s, im = evaluator(state)
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
    return EVALUATORS.get(name).call(evaluator, state, self.ctx)

  def _get(self, name: str) -> Bound:
    if name not in self._evaluators:
      spec = EVALUATORS.get(name)
      self._evaluators[name] = Bound(spec.build(self.config, self.ctx), spec, self.ctx)
    return self._evaluators[name]

  # -- data --------------------------------------------------------------------------------
  def _size(self, max_examples: int) -> int:
    return int(max_examples) if int(max_examples) > 0 else int(self.config.eval.max_examples)

  def batches(self, split: str = "", max_examples: int = 0, with_masks: bool = False):
    """Evaluation batches of `split` ('' = data.eval_split), padded rows valid=False."""
    return data_lib.make_eval_batches(
        self.config.data, split=split or self.config.data.eval_split,
        batch_size=int(self.config.eval.batch_size), max_examples=self._size(max_examples),
        with_masks=with_masks, max_masks=int(self.config.eval.segmentation.max_masks))

  def features_fn(self, state) -> Callable[..., dict[str, np.ndarray]]:
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

  def images_fn(self, state):
    features = self.features_fn(state)

    def images(split: str, max_examples: int = 0):
      f = features(split, max_examples, images=True)
      return f["image"], f["labels"], f["label_mask"]
    return images

  def embed_text_fn(self, state) -> Callable[[Sequence[str]], np.ndarray]:
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


def evaluate_checkpoint(config: Any, checkpoint: str, names: Optional[Sequence[str]] = None, *,
                        step: Optional[int] = None, init: str = "checkpoint"
                        ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
  """Restores `checkpoint` (a run dir or its checkpoints/) and runs `names` (default: all
  evaluators). Returns (scalars, images, step).

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
    names = list(ORDER)
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
    names = list(ORDER)
  scalars, images = runner(state, names)
  return scalars, images, 0


__all__ = ["EvalRunner", "EVALUATORS", "ORDER", "EvalContext", "EvaluatorSpec", "Bound", "register", "evaluate_checkpoint", "evaluate_random_init"]
