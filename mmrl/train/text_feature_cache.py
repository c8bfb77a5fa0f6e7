"""A host-side cache of a frozen text tower's outputs, so a locked-text step costs only the image side.

    cache = TextFeatureCache(config, state.params["text_tower"])   # after restore / init_from
    host_batch = cache.add_to_batch(host_batch)   # adds 'text_features/<field>' [B_local, ...]

Owner of config.model.text.cache_frozen_features (default False). It lives in mmrl/train because
it is a training-loop concern: it holds host memory, runs its own jitted forward and is rebuilt
from the state's parameters at every start (it is never checkpointed: a resumed run recomputes
each report's features once). The model side only reads the features
(mmrl.models.features.text_features_from_batch, TwoTowerModel), so heads and objectives see the
same TextFeatures contract and cannot tell a cached step from a plain one.

Key of a row: blake2b over (the frozen text weights' fingerprint, the row's input_ids,
attention_mask and token_to_sentence bytes, dtypes and length, the number of sentence slots S).
The fingerprint hashes every text_tower parameter (path, dtype, shape, bytes) together with
config.model.text and config.model.dtype, so other weights or another tower config never hit.

A batch with any missing row runs the jitted text tower forward (eval mode: no dropout) on this
process's whole local batch and stores every row; a batch whose rows are all cached runs no text
compute. Works unchanged with the sharded step and with several processes: each process fills
its own local rows before `global_batch_from_local` shards the batch like every other entry.

Refused (ConfigError, `check_config`): the text tower not frozen (optim.freeze.text=False),
model.text.dropout > 0 (train-mode dropout would make the plain step differ from cached
eval-mode features; set it to 0), and methods that run the text tower again through the model
(`Method.uses_model`, e.g. MLIP's knowledge and swapped-report encodings). The EMA teacher's text
forward (`teacher_towers`) still runs the tower itself: it stays exact, it is just not cached.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import jax
import numpy as np

from mmrl.config_errors import ConfigError
from mmrl.models import towers
from mmrl.models.features import text_features_to_batch

KEY = "model.text.cache_frozen_features"
_ROW_KEYS = ("input_ids", "attention_mask", "token_to_sentence")


def enabled(config: Any) -> bool:
  """Whether config.model.text.cache_frozen_features is set."""
  return bool(config.model.text.get("cache_frozen_features", False))


def check_config(config: Any) -> None:
  """ConfigError naming the key and the fix when the cache cannot be exact for `config`."""
  if not enabled(config):
    return
  freeze = config.optim.get("freeze", {})
  if not bool(freeze.get("text", False)):
    raise ConfigError(f"config.{KEY}=True needs a fully frozen text tower, but "
                      "config.optim.freeze.text=False (the cache would serve stale features of "
                      f"trained weights); set config.optim.freeze.text=True or {KEY}=False")
  dropout = float(config.model.text.get("dropout", 0.0))
  if dropout > 0:
    raise ConfigError(f"config.{KEY}=True with config.model.text.dropout={dropout}: cached "
                      "features are eval-mode (no dropout), so steps would differ from the "
                      f"uncached train-mode ones; set config.model.text.dropout=0.0 or {KEY}=False")
  from mmrl.objectives.methods import get_method  # pylint: disable=g-import-not-at-top
  method = get_method(config.method)
  if method.uses_model:
    raise ConfigError(f"config.{KEY}=True with config.method.name={config.method.name!r}: its "
                      "heads run the text tower again through the model (Method.uses_model), "
                      f"which the cache cannot serve; set {KEY}=False")


def weights_fingerprint(text_params: Any, config: Any) -> str:
  """A hex digest of every text_tower parameter plus the tower's config and compute dtype."""
  h = hashlib.blake2b(digest_size=16)
  h.update(json.dumps(json.loads(config.model.text.to_json_best_effort()), sort_keys=True)
           .encode())
  h.update(str(config.model.get("dtype", "float32")).encode())
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(text_params)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def row_key(fingerprint: str, batch: Mapping[str, np.ndarray], i: int) -> bytes:
  """The cache key of row `i` of a host batch (see the module docstring)."""
  h = hashlib.blake2b(fingerprint.encode(), digest_size=16)
  h.update(f"S={batch['sentence_mask'].shape[-1]}".encode())
  for name in _ROW_KEYS:
    row = np.ascontiguousarray(batch[name][i])
    h.update(f"{name}:{row.dtype}{row.shape}".encode())
    h.update(row.tobytes())
  return h.digest()


class TextFeatureCache:
  """Row-keyed text-tower outputs for one set of frozen text weights (see module docstring).

  Attributes:
    fingerprint: `weights_fingerprint` of the weights the cache was built for.
    hits, misses: rows served from the cache / computed, since construction.
    forwards: text-tower forwards run (one per batch with a missing row).
  """

  def __init__(self, config: Any, text_params: Any):
    check_config(config)
    self._tower = towers.build_text_tower(config.model)
    self._params = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), text_params)
    self.fingerprint = weights_fingerprint(self._params, config)
    self._rows: dict[bytes, dict[str, np.ndarray]] = {}
    self.hits = self.misses = self.forwards = 0

    def forward(params, input_ids, attention_mask, token_to_sentence, num_sentences):
      out = self._tower.apply({"params": params}, input_ids, attention_mask, token_to_sentence,
                              num_sentences=num_sentences, train=False)
      return text_features_to_batch(out)

    self._forward = jax.jit(forward, static_argnums=4)

  def __len__(self) -> int:
    return len(self._rows)

  def features(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{'text_features/<field>': np.ndarray [B, ...]} for the rows of a host batch."""
    keys = [row_key(self.fingerprint, batch, i) for i in range(batch["input_ids"].shape[0])]
    missing = [i for i, k in enumerate(keys) if k not in self._rows]
    if missing:
      out = jax.device_get(self._forward(self._params, batch["input_ids"],
                                         batch["attention_mask"], batch["token_to_sentence"],
                                         int(batch["sentence_mask"].shape[-1])))
      self.forwards += 1
      for i in missing:
        self._rows[keys[i]] = {name: np.asarray(v[i]) for name, v in out.items()}
    self.misses += len(missing)
    self.hits += len(keys) - len(missing)
    rows = [self._rows[k] for k in keys]
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}

  def add_to_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` plus its rows' cached text features (see `features`)."""
    return {**batch, **self.features(batch)}
