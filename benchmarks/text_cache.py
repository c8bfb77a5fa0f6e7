"""CPU seconds per train step with and without the frozen-text feature cache, localisation size.

COMMAND: nice -n 2 python -m benchmarks.text_cache --methods=convirt,gloria,lovt --steps=20

Config: experiments.comparison.method_configs.method_config at Budget 'localisation' with text_layers=6,
freeze_text=True (128 px, resnet_small_s16, batch 16, 64 tokens, pretrained MiniLM), once with
config.model.text.cache_frozen_features=False and once True. Batches: random images and token
rows from a pool of 64 reports (after the first pass every row hits the cache, as it does after
the first epoch of a real run). Reports process CPU seconds (resource.getrusage, all threads:
the machine is shared, so wall time says little) per step after one warm-up step, and, for
the cached run, the cost of one text-tower forward on a batch (what a cache miss costs).
"""
from __future__ import annotations

import dataclasses
import json
import resource

from absl import app, flags
import jax
import numpy as np

from experiments.comparison import budget as budget_lib
from experiments.comparison import method_configs
from mmrl.parallel.distributed import global_batch_from_local
from mmrl.parallel.mesh import batch_sharding, make_mesh
from mmrl.train.state import create_train_state
from mmrl.train.step import make_train_step
from mmrl.train.text_feature_cache import TextFeatureCache

_METHODS = flags.DEFINE_list("methods", ["convirt", "gloria", "lovt"], "methods to time")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per run (after one warm-up step)")


def cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def report_pool(config, n=64, seed=0):
  rng = np.random.default_rng(seed)
  length, s = int(config.data.max_tokens), int(config.data.max_sentences)
  ids = np.zeros((n, length), np.int32)
  mask = np.zeros((n, length), np.int32)
  t2s = np.full((n, length), -1, np.int32)
  sent = np.zeros((n, s), bool)
  for b in range(n):
    k = int(rng.integers(12, length))
    ids[b, :k] = rng.integers(1000, 8000, k)
    mask[b, :k] = 1
    t2s[b, 1:k - 1] = np.sort(rng.integers(0, int(rng.integers(1, s + 1)), k - 2))
    sent[b, np.unique(t2s[b, 1:k - 1])] = True
  return ids, mask, t2s, sent


def host_batch(config, pool, step):
  rng = np.random.default_rng(step)
  bsz, size = int(config.train.batch_size), int(config.data.image_size)
  rows = rng.integers(0, pool[0].shape[0], bsz)
  return {"image": rng.normal(size=(bsz, size, size, 1)).astype(np.float32),
          "input_ids": pool[0][rows], "attention_mask": pool[1][rows],
          "token_to_sentence": pool[2][rows], "sentence_mask": pool[3][rows],
          "valid": np.ones(bsz, bool)}


def time_run(method: str, cached: bool, steps: int) -> dict[str, float]:
  budget = dataclasses.replace(budget_lib.PRESETS["localisation"], text_layers=6,
                               freeze_text=True)
  config = method_configs.method_config(method, budget, seed=0)
  config.model.text.dropout = 0.0
  config.model.text.cache_frozen_features = cached
  mesh = make_mesh(config.mesh, devices=jax.devices()[:1])
  state, shardings = create_train_state(config, jax.random.key(0), mesh)
  step = make_train_step(config, mesh, shardings)
  cache = TextFeatureCache(config, state.params["text_tower"]) if cached else None
  pool = report_pool(config)
  out = {}
  if cache is not None:  # fill the cache (the first epoch) and time one miss
    for i in range(0, pool[0].shape[0], int(config.train.batch_size)):
      cache.features({k: v[i:i + int(config.train.batch_size)] for k, v in zip(
          ("input_ids", "attention_mask", "token_to_sentence", "sentence_mask"), pool)})
    b = host_batch(config, pool, 0)
    b["input_ids"] = b["input_ids"] + 1  # all rows miss
    t = cpu_s()
    cache.features(b)
    out["text_forward_cpu_s"] = cpu_s() - t
  def one(i):
    nonlocal state
    host = host_batch(config, pool, i)
    if cache is not None:
      host = cache.add_to_batch(host)
    state, m = step(state, global_batch_from_local(host, mesh, batch_sharding(mesh)))
    jax.block_until_ready(m["loss"])
  one(0)
  t = cpu_s()
  for i in range(1, steps + 1):
    one(i)
  out["step_cpu_s"] = (cpu_s() - t) / steps
  return out


def main(argv):
  del argv
  for method in _METHODS.value:
    for cached in (False, True):
      row = {"method": method, "cached": cached, **time_run(method, cached, _STEPS.value)}
      print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True)


if __name__ == "__main__":
  app.run(main)
