"""TrainState and its sharded creation.

`create_train_state` evaluates the state's shapes with `jax.eval_shape`, derives NamedShardings
from the sharding rules (params and the matching Adam moments alike), and runs the initialiser
under `jax.jit(out_shardings=...)`, so no full copy of the parameters ever lives on one device.
Pretrained text weights (`config.model.text.weights`) are loaded afterwards and placed with the
same shardings (and copied into the EMA teacher when `config.train.ema.enabled`); so are the
image tower's (`config.model.image.weights`, mmrl.models.pretrained.init), which are read and
checked before the initialiser is compiled.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from mmrl.objectives.two_tower import build_model
from mmrl.parallel import sharding as sharding_lib
from mmrl.train import ema as ema_lib
from mmrl.train.optimizer import make_optimizer

log = logging.getLogger(__name__)


class TrainState(struct.PyTreeNode):
  """step i32[], params (f32), batch_stats ({} without BatchNorm), opt_state, rng u32[2], ema.

  `ema` is {} unless config.train.ema.enabled; then {'params': ..., ['batch_stats': ...]}, the
  momentum teacher's variables (mmrl.train.ema), shaped and sharded like the online ones.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema: Any
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def variables(self, params: Any | None = None) -> dict[str, Any]:
    """The Flax variables dict for `apply_fn` (params, plus batch_stats when present)."""
    v = {"params": self.params if params is None else params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v

  def teacher_variables(self) -> dict[str, Any]:
    """The EMA teacher's Flax variables: its params, and batch_stats (averaged ones when
    config.train.ema.collections lists them, else the online ones: train-mode BatchNorm uses the
    batch's statistics anyway)."""
    if not self.ema:
      raise ValueError("this TrainState has no EMA teacher; set config.train.ema.enabled=True")
    v = {"params": self.ema["params"]}
    stats = self.ema.get("batch_stats", self.batch_stats)
    if stats:
      v["batch_stats"] = stats
    return v


def _config_key(config: Any) -> str:
  parts = {k: config[k] for k in ("model", "method", "optim")}
  parts["num_steps"] = config.train.num_steps
  return ml_collections.ConfigDict(parts).to_json_best_effort(sort_keys=True)


_STATIC_CACHE: dict[str, tuple[nn.Module, optax.GradientTransformation]] = {}


def model_and_optimizer(config: Any) -> tuple[nn.Module, optax.GradientTransformation]:
  """The model and optimiser for `config`, the *same objects* for equal configs.

  They are the TrainState's static fields (pytree aux data), so two states created from equal
  configs have equal tree structures and share jit caches and shardings.
  """
  key = _config_key(config)
  if key not in _STATIC_CACHE:
    if len(_STATIC_CACHE) >= 8:
      _STATIC_CACHE.pop(next(iter(_STATIC_CACHE)))
    _STATIC_CACHE[key] = (build_model(config), make_optimizer(config))
  return _STATIC_CACHE[key]


def dummy_batch(config: Any, batch_size: int = 2) -> dict[str, np.ndarray]:
  """A zero batch with the model's input shapes (for init and shape inference)."""
  d = config.data
  size, length, s = int(d.image_size), int(d.max_tokens), int(d.max_sentences)
  return {
      "image": np.zeros((batch_size, size, size, 1), np.float32),
      "input_ids": np.zeros((batch_size, length), np.int32),
      "attention_mask": np.ones((batch_size, length), np.int32),
      "token_to_sentence": np.zeros((batch_size, length), np.int32),
      "sentence_mask": np.ones((batch_size, s), bool),
      "valid": np.ones((batch_size,), bool),
  }


def _init_fn(config: Any, model: nn.Module | None) -> Callable[[jax.Array], TrainState]:
  """rng (raw u32[2]) -> freshly initialised TrainState for `config`."""
  if model is None:
    model, tx = model_and_optimizer(config)
  else:
    tx = model_and_optimizer(config)[1]
  batch = dummy_batch(config)

  def init(rng):
    param_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": param_rng, "dropout": dropout_rng}, batch, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=state_rng,
                      ema=ema_lib.init_ema(config, params, batch_stats), apply_fn=model.apply,
                      tx=tx)
  return init


def abstract_train_state(config: Any, mesh: Mesh, *,
                         rules: Sequence[sharding_lib.Rule] | None = None,
                         min_shard_size: int = sharding_lib.DEFAULT_MIN_SIZE
                         ) -> tuple[TrainState, TrainState]:
  """(state of ShapeDtypeStructs carrying their shardings, state_shardings), allocating nothing:
  for lowering/compiling a full-size step on a machine that cannot hold it."""
  abstract = jax.eval_shape(_init_fn(config, None), jax.ShapeDtypeStruct((2,), jnp.uint32))
  shardings = sharding_lib.tree_shardings(abstract, mesh, rules, min_shard_size)
  with_shardings = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings)
  return with_shardings, shardings


def create_train_state(config: Any, rng: jax.Array, mesh: Mesh, *, model: nn.Module | None = None,
                       rules: Sequence[sharding_lib.Rule] | None = None,
                       min_shard_size: int = sharding_lib.DEFAULT_MIN_SIZE
                       ) -> tuple[TrainState, TrainState]:
  """Initialises the TrainState directly sharded on `mesh`.

  Args:
    config: the full config (model, method, optim, data shapes, train.num_steps).
    rng: a PRNG key (raw u32[2] or typed `jax.random.key`); split for params / dropout / the
      state's own rng (stored as raw key data).
    mesh: the device mesh.
    model: the model (default: `model_and_optimizer(config)`'s, shared by equal configs).
    rules: sharding rules (default `sharding.default_rules()`).
    min_shard_size: leaves smaller than this stay replicated under the FSDP heuristic.

  Returns:
    (state, state_shardings): the state and a TrainState-shaped tree of NamedShardings.
  """
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)  # the state keeps raw u32 key data (plain for checkpoints)
  # config.model.image.weights: resolved, read and mapped before anything is compiled, so a
  # missing or wrong file stops the run here (mmrl.models.pretrained.init).
  from mmrl.models.pretrained import init as pretrained_init  # pylint: disable=g-import-not-at-top
  imported = pretrained_init.import_image_weights(config.model, config.data)
  log.info(pretrained_init.describe(config.model))
  if imported is not None:
    log.info("image weights: %s; %s", imported[1].summary(), "; ".join(imported[1].notes))
  init = _init_fn(config, model)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding_lib.tree_shardings(abstract, mesh, rules, min_shard_size)
  state = jax.jit(init, out_shardings=shardings)(rng)

  if imported is not None:
    tree = pretrained_init.replace_image_tower(
        {"params": state.params, "batch_stats": state.batch_stats}, imported[0])
    state = state.replace(params=tree["params"], batch_stats=tree["batch_stats"])
    if state.ema:  # the EMA teacher starts from the imported weights too
      state = state.replace(ema={
          name: (jax.tree.map(lambda a, e: jax.device_put(jnp.copy(a), e.sharding),
                              getattr(state, name), value)
                 if name in ("params", "batch_stats") else value)
          for name, value in state.ema.items()})
  weights = str(config.model.text.get("weights", ""))
  if weights:
    from mmrl.models import towers  # pylint: disable=g-import-not-at-top
    params = towers.load_text_weights(config.model, state.params)
    params = jax.device_put(params, shardings.params)
    state = state.replace(params=params)
    if state.ema:  # the teacher starts from the same (pretrained) weights
      state = state.replace(ema=dict(state.ema, params=jax.device_put(
          jax.tree.map(jnp.copy, params), shardings.ema["params"])))
  return state, shardings
