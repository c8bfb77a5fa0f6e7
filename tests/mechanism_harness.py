"""Trains only a method's heads on planted tower outputs and scores its own maps (tests only).

`HeadsOnly(method)` is `TwoTowerModel` without towers: the planted batch's feature arrays become
`ImageFeatures` / `TextFeatures` and the method's `apply_heads` runs on them, so the outputs are
what the objectives and `mmrl.evaluation.maps.alignment_maps.method_maps` read in a real run.
`train_heads` fits the heads with the method's own `total_loss` (optax Adam, jitted), a method
with an EMA teacher getting the online heads under stop_gradient as its teacher (the towers are
fixed, so the only difference from a real EMA is the heads' lag). `pointing_scores` reads
`method_maps` (the benchmark's read-out) for the report sentences and for one-sentence queries and
scores them with `localisation.pointing_game` against `baseline_pointing`'s grid oracle.
"""
from __future__ import annotations

import time
import types
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation.maps import alignment_maps
from mmrl.evaluation.metrics import localisation
from mmrl.models.features import ImageFeatures, TextFeatures
from mmrl.objectives.methods import get_method, total_loss
from tests import planted_features as pf

FEATURE_KEYS = ("image_local", "image_global", "text_tokens", "text_token_mask",
                "text_sentences", "text_global")


class HeadsOnly(nn.Module):
  method: Any
  grid: tuple[int, int]

  @nn.compact
  def __call__(self, batch, *, train: bool, teacher: bool = False):
    # [CLS] attention (MGCA's word/patch weights) planted uniform: over the cells, and over the
    # valid tokens other than [CLS].
    r = batch["image_local"].shape[1]
    image = ImageFeatures(batch["image_global"], batch["image_local"], self.grid,
                          jnp.full(batch["image_local"].shape[:2], 1.0 / r))
    tok = jnp.asarray(batch["text_token_mask"], jnp.float32).at[:, 0].set(0.0)
    text = TextFeatures(batch["text_global"], batch["text_tokens"], batch["text_token_mask"],
                        batch["text_sentences"], batch["sentence_mask"],
                        tok / jnp.maximum(tok.sum(-1, keepdims=True), 1.0))
    if teacher:
      return self.method.teacher_heads(image, text, batch, train=train, dtype=jnp.float32)
    out = {"image": image, "text": text}
    out.update(self.method.apply_heads(image, text, batch, train=train, dtype=jnp.float32))
    return out


def load_config(name: str, **method_overrides):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"experiments.configs.{name}").get_config("tiny")
  for k, v in method_overrides.items():
    config.method[k] = v
  return config


def _jnp(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()}


def train_heads(config, world: pf.World, *, seed: int, steps: int = 300, batch_size: int = 16,
                lr: float = 3e-3, pool: int = 16):
  """(model, variables, cpu_seconds): the method's heads fitted on planted batches."""
  method = get_method(config.method)
  model = HeadsOnly(method, world.grid)
  rng = np.random.default_rng(seed + 1000)
  batches = [_jnp(pf.planted_batch(world, rng, batch_size)[0]) for _ in range(pool)]
  variables = model.init(jax.random.PRNGKey(seed), batches[0], train=True)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  tx = optax.adam(lr)
  opt = tx.init(params)
  use_teacher = method.uses_teacher()

  def loss_fn(p, stats, batch, key):
    out, new = model.apply({"params": p, "batch_stats": stats}, batch, train=True,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, 1)})
    if use_teacher:
      out["teacher"] = jax.lax.stop_gradient(model.apply(
          {"params": p, "batch_stats": stats}, batch, train=False, teacher=True))
    loss, metrics = total_loss(out, batch, config, key)
    return loss, (new.get("batch_stats", {}), metrics)

  @jax.jit
  def step(p, stats, opt, batch, key):
    (loss, (stats, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, stats, batch, key)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), stats, opt, loss

  t0 = time.process_time()
  key = jax.random.PRNGKey(seed + 7)
  losses = []
  for i in range(steps):
    params, stats, opt, loss = step(params, stats, opt, batches[i % pool],
                                    jax.random.fold_in(key, i))
    losses.append(loss)
  jax.block_until_ready(params)
  cpu = time.process_time() - t0
  losses = np.asarray(jax.device_get(losses))
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"{config.method.name}: non-finite loss {losses[-5:]}")
  return model, {"params": params, "batch_stats": stats}, cpu, losses


def maps_of(config, model, variables, batch) -> np.ndarray:
  """f32[B, S, gh, gw]: `alignment_maps.method_maps` on the heads' eval outputs."""
  state = types.SimpleNamespace(params=variables["params"],
                                batch_stats=variables.get("batch_stats") or None)

  @jax.jit
  def fn(variables, batch):
    out = model.apply({k: v for k, v in variables.items() if v}, batch, train=False)
    return alignment_maps.method_maps(config, state_with(variables), out, batch)

  def state_with(v):
    return types.SimpleNamespace(params=v["params"], batch_stats=v.get("batch_stats") or None)

  del state
  maps = np.asarray(fn(variables, _jnp(batch)))
  gh, gw = model.grid
  return maps.reshape(maps.shape[0], maps.shape[1], gh, gw)


def pointing_scores(config, model, variables, world: pf.World, *, seed: int,
                    batch_size: int = 16, num_batches: int = 4) -> dict[str, float]:
  """Pointing of the method's own maps on fresh planted images: 'report' (each finding sentence
  of the report), 'query' (the one-sentence templated query), and the grid oracle of each."""
  rng = np.random.default_rng(seed + 5000)
  rep_maps, rep_boxes, rep_class, q_maps, q_boxes = [], [], [], [], []
  for _ in range(num_batches):
    batch, truth = pf.planted_batch(world, rng, batch_size)
    maps = maps_of(config, model, variables, batch)
    for i, row in enumerate(truth):
      for s, t in enumerate(row):
        if t is not None:
          rep_maps.append(maps[i, s])
          rep_boxes.append(t[1])
          rep_class.append(t[0])
    q, items = pf.query_batch(world, rng, batch, truth)
    qm = maps_of(config, model, variables, q)
    q_maps.extend(qm[:, 0])
    q_boxes.extend(t[1] for t in items)
  out = {}
  for name, maps, boxes in (("report", rep_maps, rep_boxes), ("query", q_maps, q_boxes)):
    gt = pf.box_masks(boxes, world.grid)
    out[f"{name}/pointing"] = float(np.mean(localisation.pointing_game(np.stack(maps), gt)))
    base = localisation.baseline_pointing(gt, *world.grid)
    out[f"{name}/grid_oracle"] = base["grid_oracle/pointing"]
    out[f"{name}/random"] = base["random_map/pointing"]
    out[f"{name}/ratio"] = out[f"{name}/pointing"] / base["grid_oracle/pointing"]
  # per finding class (report sentences): a class-level failure shows as a class near 0
  hits = localisation.pointing_game(np.stack(rep_maps), pf.box_masks(rep_boxes, world.grid))
  cls = np.asarray(rep_class)
  for k, f in enumerate(pf.FINDINGS):
    if np.any(cls == k):
      out[f"report/pointing_{f}"] = float(hits[cls == k].mean())
  return out


def run(name: str, seed: int, *, steps: int = 300, world_kw=None, **overrides) -> dict[str, float]:
  config = load_config(name, **overrides)
  world = pf.make_world(seed, **(world_kw or {}))
  model, variables, cpu, losses = train_heads(config, world, seed=seed, steps=steps)
  out = pointing_scores(config, model, variables, world, seed=seed)
  out["cpu_s"] = cpu
  out["loss_first"], out["loss_last"] = float(losses[:10].mean()), float(losses[-10:].mean())
  return out
