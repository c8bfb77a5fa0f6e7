"""The EMA (momentum) teacher's parameters: config check, decay schedule, init and update.

Config `config.train.ema` (defaults in mmrl/config/schema.py):
  enabled      False: the TrainState holds `ema = {}` and the step pays nothing.
  decay        m in  theta' <- m theta' + (1 - m) theta, applied once per finite step after the
               optimiser update (MLIP/ALBEF 0.995, PLACE 0.996; METHODS.md §8.2, §7.2).
  schedule     'constant' (m every step; ALBEF) or 'cosine' (BYOL/DINO: m_k = 1 - (1 - m)
               (cos(pi k / K) + 1) / 2 rising from m to 1 over K = train.num_steps).
  collections  which variable collections are averaged: ('params',) or ('params',
               'batch_stats'). The teacher forward always normalises with the current batch's
               statistics (train mode, like the MoCo/BYOL target network), so BatchNorm running
               statistics are only averaged when listed (for evaluating the EMA model).

The EMA starts as a copy of the initial variables; `TrainState.ema` is {collection: tree}.
Leaves have the parameters' paths under 'ema/<collection>/...', so the sharding rules (suffix
patterns) give them the parameters' shardings.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmrl.config_errors import ConfigError

SCHEDULES = ("constant", "cosine")
COLLECTIONS = ("params", "batch_stats")


def ema_config(config: Any) -> dict[str, Any]:
  """The validated `config.train.ema` as a plain dict ({'enabled': False} when absent)."""
  ema = config.train.get("ema") if hasattr(config.train, "get") else None
  if ema is None or not bool(ema.get("enabled", False)):
    return {"enabled": False}
  decay = float(ema.get("decay", 0.995))
  if not 0.0 <= decay < 1.0:
    raise ConfigError(f"config.train.ema.decay={decay} must be in [0, 1) (MLIP 0.995, PLACE "
                      "0.996)")
  schedule = str(ema.get("schedule", "constant"))
  if schedule not in SCHEDULES:
    raise ConfigError(f"config.train.ema.schedule={schedule!r} is not known; use one of "
                      f"{SCHEDULES}")
  collections = tuple(ema.get("collections", ("params",)))
  bad = [c for c in collections if c not in COLLECTIONS]
  if bad or "params" not in collections:
    raise ConfigError(f"config.train.ema.collections={collections} must contain 'params' and "
                      f"only names from {COLLECTIONS}")
  return {"enabled": True, "decay": decay, "schedule": schedule, "collections": collections}


def decay_schedule(config: Any) -> Callable[[jax.Array], jax.Array]:
  """step (the step being taken, from 0) -> decay m f32[] (module docstring)."""
  cfg = ema_config(config)
  if not cfg["enabled"]:
    raise ConfigError("decay_schedule needs config.train.ema.enabled=True")
  m = cfg["decay"]
  if cfg["schedule"] == "constant":
    return lambda step: jnp.asarray(m, jnp.float32)
  total = max(int(config.train.num_steps), 1)

  def cosine(step):
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
    return 1.0 - (1.0 - m) * (jnp.cos(math.pi * frac) + 1.0) / 2.0
  return cosine


def init_ema(config: Any, params: Any, batch_stats: Any) -> dict[str, Any]:
  """{} when disabled, else copies of the listed collections (module docstring)."""
  cfg = ema_config(config)
  if not cfg["enabled"]:
    return {}
  online = {"params": params, "batch_stats": batch_stats}
  return {c: jax.tree.map(jnp.copy, online[c]) for c in cfg["collections"]}


def ema_update(ema: dict[str, Any], online: dict[str, Any], decay: jax.Array
               ) -> dict[str, Any]:
  """m * ema + (1 - m) * online for every collection in `ema` (float32 math, leaf dtype kept)."""
  decay = jnp.asarray(decay, jnp.float32)

  def mix(e, o):
    out = decay * e.astype(jnp.float32) + (1.0 - decay) * o.astype(jnp.float32)
    return out.astype(e.dtype)
  return {c: jax.tree.map(mix, tree, online[c]) for c, tree in ema.items()}


__all__ = ["ema_config", "decay_schedule", "init_ema", "ema_update", "SCHEDULES", "COLLECTIONS"]
