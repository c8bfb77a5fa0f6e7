"""Linear probe: L2-regularised multi-label logistic regression on frozen pooled image features.

Protocol (docs/evaluation.md): features of a train split and a test split; a per-label-stratified,
seeded subset of the train split for each label fraction (1 %, 10 %, 100 % by default); features
standardised with the subset's mean/std; one logistic regression per label (all at once, [D, K]),
trained full-batch with Adam for a fixed number of steps (deterministic on a given backend); AUROC
per label on the test split and their macro mean. Labels: 1 positive, 0 negative; uncertain (-1)
and blank (label_mask False) entries are left out of both training and scoring; labels with one
class in the test split get no AUROC. `finetune=True` also runs the fine-tune protocol: the whole
image tower (from the checkpoint; BatchNorm on its running statistics) and a linear head trained
end to end on each fraction's subset, for `finetune_seeds` seeds (seed config.seed + i; the
subsets of seed config.seed are the probe's own), reported as the mean over seeds, '_std' (sample
std, ddof=1), 'num_seeds' and each seed's macro AUROC.

- `fit_logistic`, `predict_logistic`, `probe_auroc`, `linear_probe`: math.
- `finetune_probe`: image tower + linear head trained end to end (JAX, small data).
- the label-fraction subsets, minibatch order and over-seeds summary it shares with the other
  trained heads live in `mmrl.evaluation.evaluators.protocol`; AUROC in
  `mmrl.evaluation.metrics.classification`.
- `LinearProbeEvaluator`: reads the two splits with the feature step and calls them; its
  `subset_fn` (set by the downstream runner from the subsets file next to the shards,
  `data_pipeline.subsets`) replaces the stratified subsets of the probe and the fine-tune.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation.evaluators.protocol import (aggregate_seeds, fraction_tag, minibatch_order,
                                                stratified_subset, subset_digest)
from mmrl.evaluation.metrics.classification import roc_auc


def known_and_positive(labels: np.ndarray, label_mask: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(known bool[N,K]: labelled and not uncertain, positive bool[N,K]) from batch labels."""
  labels = np.asarray(labels)
  known = np.asarray(label_mask, bool) & (labels != -1)
  return known, known & (labels == 1)


def _bce(logits: jax.Array, positive: jax.Array, known: jax.Array) -> jax.Array:
  """Mean over labels of the per-label mean binary cross-entropy on known entries (fp32)."""
  logits = logits.astype(jnp.float32)
  per = optax.sigmoid_binary_cross_entropy(logits, positive.astype(jnp.float32))
  w = known.astype(jnp.float32)
  return jnp.mean(jnp.sum(per * w, axis=0) / jnp.maximum(jnp.sum(w, axis=0), 1.0))


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_adam(xs, pos, known, l2, lr, *, steps: int):
  tx = optax.adam(lr)

  def loss_fn(p):
    return _bce(xs @ p["w"] + p["b"], pos, known) + l2 * jnp.sum(p["w"] ** 2)

  def body(_, carry):
    p, opt = carry
    updates, opt = tx.update(jax.grad(loss_fn)(p), opt, p)
    return optax.apply_updates(p, updates), opt

  p = {"w": jnp.zeros((xs.shape[1], pos.shape[1]), jnp.float32),
       "b": jnp.zeros((pos.shape[1],), jnp.float32)}
  return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]


def fit_logistic(x: np.ndarray, positive: np.ndarray, known: np.ndarray, *, l2: float = 1e-3,
                 steps: int = 500, lr: float = 0.05, rows: Optional[np.ndarray] = None
                 ) -> dict[str, np.ndarray]:
  """Multi-label logistic regression {'w' [D,K], 'b' [K], 'mean' [D], 'std' [D]} on standardised
  features, loss = masked BCE + l2 * ||w||², full-batch Adam for `steps` steps.

  `rows` (indices) restricts training to a subset while keeping the arrays' shapes, so every
  label fraction reuses one compiled fit.
  """
  x = np.asarray(x, np.float32)
  known = np.asarray(known, bool)
  if rows is not None:
    keep = np.zeros(len(x), bool)
    keep[rows] = True
    known = known & keep[:, None]
  else:
    keep = np.ones(len(x), bool)
  mean, std = x[keep].mean(axis=0), x[keep].std(axis=0) + 1e-6
  params = jax.device_get(_fit_adam(jnp.asarray((x - mean) / std), jnp.asarray(positive, bool),
                                    jnp.asarray(known), jnp.float32(l2), jnp.float32(lr),
                                    steps=int(steps)))
  return {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]), "mean": mean, "std": std}


def predict_logistic(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """Logits f64[N, K]."""
  xs = (np.asarray(x, np.float64) - params["mean"]) / params["std"]
  return xs @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)


def probe_auroc(scores: np.ndarray, positive: np.ndarray, known: np.ndarray,
                names: Sequence[str], prefix: str) -> dict[str, float]:
  """'<prefix>/auroc/<name>' per label with both classes among known rows, and
  '<prefix>/macro_auroc' (their mean; NaN when none)."""
  out = {}
  for k, name in enumerate(names):
    m = np.asarray(known[:, k], bool)
    auc = roc_auc(scores[m, k], positive[m, k])
    if not np.isnan(auc):
      out[f"{prefix}/auroc/{name}"] = auc
  aucs = list(out.values())
  out[f"{prefix}/macro_auroc"] = float(np.mean(aucs)) if aucs else float("nan")
  return out


def linear_probe(train_x: np.ndarray, train_pos: np.ndarray, train_known: np.ndarray,
                 test_x: np.ndarray, test_pos: np.ndarray, test_known: np.ndarray, *,
                 names: Sequence[str], fractions: Sequence[float] = (0.01, 0.1, 1.0),
                 l2: float = 1e-3, steps: int = 500, lr: float = 0.05, seed: int = 0,
                 prefix: str = "linear_probe",
                 subsets: Optional[Callable[[float], np.ndarray]] = None) -> dict[str, float]:
  """Probe AUROCs for each label fraction: '<prefix>/<pct>/auroc/<name>', '.../macro_auroc',
  '.../num_train'. `subsets(fraction) -> sorted train rows` replaces the stratified subsets."""
  out = {}
  for fraction in fractions:
    idx = (np.asarray(subsets(fraction)) if subsets
           else stratified_subset(train_pos, train_known, fraction, seed))
    params = fit_logistic(train_x, train_pos, train_known, l2=l2, steps=steps, lr=lr, rows=idx)
    tag = f"{prefix}/{fraction_tag(fraction)}"
    out.update(probe_auroc(predict_logistic(params, test_x), test_pos, test_known, names, tag))
    out[f"{tag}/num_train"] = float(len(idx))
  return out


def finetune_probe(apply_image: Callable[[Any, jax.Array], jax.Array], tower_params: Any,
                   train_images: np.ndarray, train_pos: np.ndarray, train_known: np.ndarray,
                   test_images: np.ndarray, subsets: Sequence[np.ndarray], *, steps: int = 50,
                   lr: float = 1e-4, head_lr: float = 1e-2, batch_size: int = 32, seed: int = 0
                   ) -> list[np.ndarray]:
  """For each subset (train row indices): trains the image tower (`apply_image(tower_params,
  images) -> pooled [B, D]`, starting from `tower_params`) and a zero-initialised linear head
  jointly with masked BCE (Adam; `steps` minibatches of `batch_size` rows in a seeded order);
  returns the test logits [N, K] of each. One compiled update serves every subset."""
  k = train_pos.shape[1]
  d = int(apply_image(tower_params, jnp.asarray(train_images[:1])).shape[-1])
  labels = {"tower": jax.tree.map(lambda _: "tower", tower_params), "w": "head", "b": "head"}
  tx = optax.multi_transform({"tower": optax.adam(lr), "head": optax.adam(head_lr)}, labels)

  def logits_fn(p, images):
    return apply_image(p["tower"], images).astype(jnp.float32) @ p["w"] + p["b"]

  @jax.jit
  def update(p, opt, images, pos, known):
    grads = jax.grad(lambda q: _bce(logits_fn(q, images), pos, known))(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  predict = jax.jit(logits_fn)
  results = []
  for rows in subsets:
    params = {"tower": tower_params, "w": jnp.zeros((d, k), jnp.float32),
              "b": jnp.zeros((k,), jnp.float32)}
    opt = tx.init(params)
    for idx in minibatch_order(rows, steps, batch_size, seed):
      params, opt = update(params, opt, jnp.asarray(train_images[idx]),
                           jnp.asarray(train_pos[idx]), jnp.asarray(train_known[idx]))
    out = [np.asarray(predict(params, jnp.asarray(test_images[i:i + batch_size])))
           for i in range(0, len(test_images), batch_size)]
    results.append(np.concatenate(out).astype(np.float64))
  return results


class LinearProbeEvaluator:
  """Linear probe on `config.eval.linear_probe` (train_split, test_split, fractions, l2, steps,
  lr, max_train, finetune...). `__call__(state, features_fn, images_fn) -> (scalars, {})` where
  `features_fn(split, max_examples)` returns `extract_features` output and
  `images_fn(split, max_examples)` returns (images, labels, label_mask) numpy (finetune only)."""

  def __init__(self, config: Any, label_names: Sequence[str]):
    self.cfg = config.eval.linear_probe
    self.data = config.data
    self.names = tuple(label_names)
    self.seed = int(config.seed)
    # (fraction, seed, n_train) -> sorted train rows; None = stratified_subset. Set by the
    # downstream runner from the subsets file next to the shards (data_pipeline.subsets).
    self.subset_fn: Optional[Callable[[float, int, int], np.ndarray]] = None

  def __call__(self, state, features_fn, images_fn=None) -> tuple[dict[str, float], dict]:
    c = self.cfg
    train_split = c.train_split or self.data.train_split
    test_split = c.test_split or self.data.eval_split
    train = features_fn(train_split, c.max_train)
    test = features_fn(test_split, c.max_test)
    tr_known, tr_pos = known_and_positive(train["labels"], train["label_mask"])
    te_known, te_pos = known_and_positive(test["labels"], test["label_mask"])
    out = linear_probe(train["image_global"], tr_pos, tr_known, test["image_global"], te_pos,
                       te_known, names=self.names, fractions=tuple(c.fractions), l2=c.l2,
                       steps=c.steps, lr=c.lr, seed=self.seed,
                       subsets=(lambda f: self.subset_fn(f, self.seed, len(tr_pos)))
                       if self.subset_fn else None)
    out["linear_probe/num_test"] = float(len(test["image_global"]))
    if c.finetune:
      if images_fn is None:
        raise ValueError("config.eval.linear_probe.finetune=True needs the images of the splits")
      out.update(self.finetune(state, images_fn, train_split, test_split))
    return out, {}

  def finetune(self, state, images_fn, train_split: str, test_split: str) -> dict[str, float]:
    c = self.cfg
    tr_img, tr_lab, tr_mask = images_fn(train_split, c.max_train)
    te_img, te_lab, te_mask = images_fn(test_split, c.max_test)
    tr_known, tr_pos = known_and_positive(tr_lab, tr_mask)
    te_known, te_pos = known_and_positive(te_lab, te_mask)
    variables = state.variables()

    def apply_image(tower, images):
      v = dict(variables)
      v["params"] = {**variables["params"], "image_tower": tower}
      return state.apply_fn(v, images, train=False, method="encode_image").global_embedding

    fractions = tuple(c.fractions)
    num_seeds = int(c.get("finetune_seeds", 1))
    if num_seeds < 1:
      raise ValueError(f"config.eval.linear_probe.finetune_seeds={num_seeds} must be >= 1")
    runs: dict[float, list[dict[str, float]]] = {f: [] for f in fractions}
    out: dict[str, float] = {}
    for i in range(num_seeds):
      seed = self.seed + i  # seed config.seed: the linear probe's own subsets
      subsets = [np.asarray(self.subset_fn(f, seed, len(tr_pos))) if self.subset_fn
                 else stratified_subset(tr_pos, tr_known, f, seed) for f in fractions]
      all_logits = finetune_probe(apply_image, variables["params"]["image_tower"], tr_img,
                                  tr_pos, tr_known, te_img, subsets, steps=c.finetune_steps,
                                  lr=c.finetune_lr, batch_size=c.finetune_batch_size, seed=seed)
      for fraction, rows, logits in zip(fractions, subsets, all_logits):
        tag = f"linear_probe/finetune/{fraction_tag(fraction)}"
        run = probe_auroc(logits, te_pos, te_known, self.names, tag)
        run[f"{tag}/num_train"] = float(len(rows))
        runs[fraction].append(run)
        out[f"{tag}/seed_{seed}/subset_crc32"] = subset_digest(rows)
        if np.isfinite(run[f"{tag}/macro_auroc"]):
          out[f"{tag}/seed_{seed}/macro_auroc"] = run[f"{tag}/macro_auroc"]
    for fraction in fractions:
      tag = f"linear_probe/finetune/{fraction_tag(fraction)}"
      out.update(aggregate_seeds(runs[fraction], tag, ("macro_auroc",)))
    return out


__all__ = ["known_and_positive", "fit_logistic", "predict_logistic", "probe_auroc",
           "linear_probe", "finetune_probe", "LinearProbeEvaluator"]
