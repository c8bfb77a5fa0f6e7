"""The optimiser from `config.optim`: AdamW, warm-up + cosine schedule, decay mask, clipping,
per-tower learning-rate multipliers and freezing.

Each parameter gets a label from its '/'-joined path:
  'image'  image_tower/...        lr x optim.lr_mult.image
  'text'   text_tower/...         lr x optim.lr_mult.text
  'heads'  everything else        lr x optim.lr_mult.heads   (projections, temperature, ...)
  'frozen' optim.freeze.image / .text / .text_embeddings (text_tower/embeddings/...) /
           .text_first_n_layers (text_tower/layer_{i<n}/...)
Frozen params get a zero update, no weight decay, no Adam state, and their gradients do not enter
the clipping norm. BatchNorm statistics are not params (collection 'batch_stats').

Weight decay applies to rank >= 2 leaves (kernels, embedding tables) except position/cls tokens and
anything under a norm layer; never to biases, norm scales, or scalars (log_tau).

Chain: zero frozen grads -> clip_by_global_norm(optim.clip_norm) -> per label:
scale_by_adam -> add_decayed_weights -> -lr(step) x lr_mult.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import optax

from mmrl.config_errors import ConfigError
from mmrl.parallel.sharding import path_str

LABELS = ("image", "text", "heads", "frozen")

_NO_DECAY = re.compile(
    r"(^|/)([^/]*(norm|Norm|ln|bn|LayerNorm|BatchNorm)[^/]*)/|"
    r"(pos_?emb|position|posemb|cls_?token|(^|/)cls($|/))")


def make_schedule(config: Any) -> optax.Schedule:
  """Linear warm-up from 0 to optim.lr over optim.warmup_steps, then cosine decay to
  optim.lr * optim.end_lr_fraction at train.num_steps."""
  o = config.optim
  total, warmup = int(config.train.num_steps), int(o.warmup_steps)
  if warmup < 0:
    raise ConfigError(f"config.optim.warmup_steps={warmup} must be >= 0")
  if total <= warmup:
    raise ConfigError(f"config.train.num_steps={total} must exceed config.optim.warmup_steps="
                      f"{warmup}; lower warmup_steps or raise num_steps")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(o.lr), warmup_steps=warmup, decay_steps=total,
      end_value=float(o.lr) * float(o.end_lr_fraction))


def _label_fn(config: Any) -> Callable[[str], str]:
  f = config.optim.freeze
  n_frozen = int(f.get("text_first_n_layers", 0))
  layer_re = re.compile(r"(^|/)text_tower/(?:[^/]+/)*?layer_(\d+)(/|$)")
  embeddings_re = re.compile(r"(^|/)text_tower/(?:[^/]+/)*?embeddings(/|$)")

  def label(path: str) -> str:
    if re.search(r"(^|/)image_tower(/|$)", path):
      return "frozen" if f.image else "image"
    if re.search(r"(^|/)text_tower(/|$)", path):
      if f.text:
        return "frozen"
      if f.get("text_embeddings", False) and embeddings_re.search(path):
        return "frozen"
      m = layer_re.search(path)
      if m and int(m.group(2)) < n_frozen:
        return "frozen"
      return "text"
    return "heads"
  return label


def param_labels(params: Any, config: Any) -> Any:
  """The label ('image' | 'text' | 'heads' | 'frozen') of every param leaf."""
  label = _label_fn(config)
  return jax.tree_util.tree_map_with_path(lambda p, _: label(path_str(p)), params)


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay (see module docstring)."""
  def decays(path, x):
    return getattr(x, "ndim", 0) >= 2 and not _NO_DECAY.search(path_str(path))
  return jax.tree_util.tree_map_with_path(decays, params)


def _scale_by_label(mults: dict[str, float], label: Callable[[str], str]
                    ) -> optax.GradientTransformation:
  """Multiplies each update by mults[label(path)] (works on multi_transform's masked trees)."""
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map_with_path(
        lambda p, u: u * mults[label(path_str(p))], updates)
    return updates, state
  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """The optax transformation for `config.optim` (see module docstring)."""
  o = config.optim
  mults = {k: float(o.lr_mult.get(k, 1.0)) for k in ("image", "text", "heads")}
  for k, v in mults.items():
    if v < 0:
      raise ConfigError(f"config.optim.lr_mult.{k}={v} must be >= 0 (0 freezes; prefer "
                        f"config.optim.freeze)")
  label = _label_fn(config)
  labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
      lambda p, _: "frozen" if label(path_str(p)) == "frozen" else "train", params)
  schedule = make_schedule(config)
  train_tx = optax.chain(
      optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=float(o.get("eps", 1e-8))),
      optax.add_decayed_weights(float(o.weight_decay), mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
      _scale_by_label(mults, label),
  )
  parts = [optax.multi_transform({"train": optax.identity(), "frozen": optax.set_to_zero()},
                                 labels)]
  if o.clip_norm and float(o.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(o.clip_norm)))
  parts.append(optax.multi_transform({"train": train_tx, "frozen": optax.set_to_zero()}, labels))
  return optax.chain(*parts)
