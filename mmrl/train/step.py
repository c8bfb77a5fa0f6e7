"""The sharded train and eval steps: `jax.jit` with NamedShardings in and out, state donation.

Compute runs in `config.model.dtype` (bf16 by default) with float32 params and float32 loss math.
The batch is sharded along its leading axis over the whole mesh; objectives see global arrays and
XLA inserts the gathers/reductions. A non-finite loss or gradient norm returns
`metrics['nonfinite'] = True` and the *old* state (step not advanced), so the loop can stop before
anything is overwritten.

EMA teacher (`config.train.ema`, mmrl.train.ema): when enabled, each finite step also updates
`state.ema` <- m * ema + (1 - m) * new online variables (m from the decay schedule at the step
being taken). When the method `uses_teacher()`, the step first runs the teacher forward
(`apply_fn(..., teacher=True)` on the EMA variables, train-mode BatchNorm with the batch's
statistics, its own dropout key, stop_gradient) and the objectives see it as
`outputs['teacher']`. With the EMA disabled the step is exactly the plain one.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmrl.config_errors import ConfigError
from mmrl.objectives.contrastive import l2_normalize
from mmrl.objectives.methods import get_method, total_loss
from mmrl.parallel.mesh import batch_sharding, check_batch_size, replicated
from mmrl.train import ema as ema_lib
from mmrl.train.optimizer import make_schedule
from mmrl.train.optimizer import param_labels
from mmrl.train.state import TrainState


def _apply(state: TrainState, params: Any, batch: dict[str, Any], *, train: bool, rng: jax.Array):
  """Runs the model; returns (outputs, new batch_stats)."""
  variables = state.variables(params)
  if train and state.batch_stats:
    outputs, mutated = state.apply_fn(variables, batch, train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"])
    return outputs, mutated["batch_stats"]
  outputs = state.apply_fn(variables, batch, train=train, rngs={"dropout": rng})
  return outputs, state.batch_stats


def _teacher(state: TrainState, batch: dict[str, Any], rng: jax.Array) -> dict[str, Any]:
  """The EMA teacher's outputs (train mode: batch-statistics BatchNorm), under stop_gradient."""
  variables = state.teacher_variables()
  if "batch_stats" in variables:
    outputs, _ = state.apply_fn(variables, batch, train=True, teacher=True,
                                rngs={"dropout": rng}, mutable=["batch_stats"])
  else:
    outputs = state.apply_fn(variables, batch, train=True, teacher=True, rngs={"dropout": rng})
  return jax.lax.stop_gradient(outputs)


def _check_teacher(config: Any) -> tuple[bool, bool]:
  """(EMA enabled, method reads the teacher); a teacher without an EMA is a ConfigError."""
  enabled = ema_lib.ema_config(config)["enabled"]
  uses_teacher = get_method(config.method).uses_teacher()
  if uses_teacher and not enabled:
    raise ConfigError(f"config.method ({config.method.name!r}) has an objective with "
                      "target='teacher', which reads the EMA teacher; set "
                      "config.train.ema.enabled=True or the objective's target='online'")
  return enabled, uses_teacher


def make_train_step(config: Any, mesh: Mesh, state_shardings: TrainState
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """`step(state, batch) -> (state, metrics)`, jitted with shardings and `donate_argnums=0`.

  Metrics (replicated scalars): 'loss', each objective's '<name>/...', 'grad_norm', 'lr',
  'nonfinite' (bool), and 'ema_decay' when the EMA is enabled.

  Raises:
    ConfigError: when config.train.batch_size does not split over the mesh, or an objective
      reads the EMA teacher while config.train.ema.enabled is False.
  """
  check_batch_size(int(config.train.batch_size), mesh)
  schedule = make_schedule(config)
  ema_enabled, uses_teacher = _check_teacher(config)
  ema_decay = ema_lib.decay_schedule(config) if ema_enabled else None

  def step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    dropout_rng, loss_rng = jax.random.split(rng)
    teacher = _teacher(state, batch, jax.random.fold_in(rng, 2)) if uses_teacher else None

    def loss_fn(params):
      outputs, new_stats = _apply(state, params, batch, train=True, rng=dropout_rng)
      if teacher is not None:
        outputs = dict(outputs, teacher=teacher)
      loss, metrics = total_loss(outputs, batch, config, loss_rng)
      return loss, (metrics, new_stats)

    (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Over trainable leaves only: frozen gradients then feed nothing, and XLA drops their
    # backward pass (a frozen tower costs only its forward).
    labels = param_labels(state.params, config)
    grad_norm = optax.tree.norm(jax.tree.map(
        lambda g, label: jnp.zeros((), g.dtype) if label == "frozen" else g, grads, labels))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    if ema_enabled:  # before the finite guard: a non-finite step keeps the old EMA too
      new_state = new_state.replace(ema=ema_lib.ema_update(
          state.ema, {"params": params, "batch_stats": new_stats}, ema_decay(state.step)))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(metrics)
    if ema_enabled:
      metrics["ema_decay"] = ema_decay(state.step)
    metrics.update(grad_norm=grad_norm, lr=jnp.asarray(schedule(state.step), jnp.float32),
                   nonfinite=jnp.logical_not(finite))
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


def make_eval_step(config: Any, mesh: Mesh, state_shardings: TrainState
                   ) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
  """`eval_step(state, batch) -> {'image_embed', 'text_embed'}`: L2-normalised float32 [B,d],
  sharded along the batch like the input (train=False: BatchNorm running stats, no dropout)."""
  del config

  def eval_step(state: TrainState, batch: dict[str, jax.Array]):
    outputs, _ = _apply(state, state.params, batch, train=False, rng=state.rng)
    return {"image_embed": l2_normalize(outputs["image_embed"]),
            "text_embed": l2_normalize(outputs["text_embed"])}

  bs = batch_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(state_shardings, bs), out_shardings=bs)
