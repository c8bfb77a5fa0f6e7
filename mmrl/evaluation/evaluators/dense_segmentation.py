"""Dense segmentation protocols: a U-Net (ResNet) or SETR-PUP (ViT) decoder on the image tower.

The papers' `unet_seg` (METHODS.md §10.1; MGCA `mgca_segmenter.py`, LoVT's ResUNet): the decoder
(`mmrl.heads.unet_decoder` on conv2..conv5, `mmrl.heads.setr_decoder` on the ViT patch grid)
trained on a subset of a train split with BCE + soft Dice, the encoder frozen (its stage features
are computed once) or fine-tuned from the checkpoint (Adam at its own, smaller learning rate;
BatchNorm keeps its running statistics). Minibatches of `batch_size` rows follow a seeded order
(rows repeat when a subset is smaller than a batch: fixed shapes). Scored with
`segmentation.dice` of (sigmoid >= 0.5) per test image.

- `bce_dice_loss`: the loss (fp32), shared with the linear head.
- `make_encoder`: (fn(encoder_params, images) -> features, encoder_params) from a TrainState.
- `make_decoder`: the decoder module for config.eval.segmentation and the tower.
- `fit_predict_dense`: trains one decoder per subset and returns the test probabilities.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.evaluation.evaluators.protocol import minibatch_order
from mmrl.heads.setr_decoder import SETRPUPDecoder
from mmrl.heads.unet_decoder import UNetDecoder
from mmrl.models import stage_features

DENSE_HEADS = ("unet", "setr", "dense")  # 'dense' = unet for a ResNet, setr for a ViT


def bce_dice_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean BCE + mean over examples of (1 - soft Dice), smooth 1; logits/target f[N, H, W]."""
  logits = logits.astype(jnp.float32)
  target = target.astype(jnp.float32)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  prob = jax.nn.sigmoid(logits)
  inter = jnp.sum(prob * target, axis=(1, 2))
  soft = (2 * inter + 1.0) / (jnp.sum(prob, axis=(1, 2)) + jnp.sum(target, axis=(1, 2)) + 1.0)
  return bce + jnp.mean(1.0 - soft)


def resolve_head(head: str, model_cfg: Any) -> str:
  """'dense' -> 'unet' (ResNet) or 'setr' (ViT); checks that the decoder fits the tower."""
  vit = stage_features.is_vit(model_cfg)
  if head == "dense":
    return "setr" if vit else "unet"
  if head == "unet" and vit:
    raise ValueError("config.eval.segmentation.head='unet' needs a ResNet tower (conv2..conv5 "
                     f"skips); config.model.image.name={model_cfg.image.name!r} is a ViT: use "
                     "'setr' or 'dense'")
  return head


def make_encoder(model_cfg: Any, state: Any, head: str
                 ) -> tuple[Callable[[Any, jax.Array], list[jax.Array]], Any]:
  """(encode(encoder_params, images) -> features fine to coarse, encoder_params).

  encoder_params is the 'image_tower' parameter subtree of `state`; its BatchNorm statistics
  (if any) are closed over. 'setr' reads the last grid only (a ViT's patch grid, or a ResNet's
  conv5 when asked for explicitly)."""
  stages = (1, 2, 3, 4) if head == "unet" else (4,)
  fn = stage_features.stage_features_fn(model_cfg, stages)  # a ViT ignores `stages`
  stats = (state.batch_stats or {}).get("image_tower") if state.batch_stats else None

  def encode(params, images):
    variables = {"params": {"image_tower": params}}
    if stats:
      variables["batch_stats"] = {"image_tower": stats}
    return fn(state.apply_fn, variables, images)
  return encode, state.params["image_tower"]


def make_decoder(head: str, cfg: Any) -> nn.Module:
  """UNetDecoder(cfg.unet_channels) or SETRPUPDecoder(cfg.setr_channels)."""
  if head == "unet":
    return UNetDecoder(channels=tuple(int(c) for c in cfg.unet_channels))
  if head == "setr":
    return SETRPUPDecoder(channels=tuple(int(c) for c in cfg.setr_channels))
  raise ValueError(f"config.eval.segmentation.head={head!r} is not one of {DENSE_HEADS}")


def _decode(decoder: nn.Module, head: str, params, feats: Sequence[jax.Array],
            out_hw: tuple[int, int]) -> jax.Array:
  x = list(feats) if head == "unet" else feats[-1]
  return decoder.apply({"params": params}, x, out_hw)[..., 0]


def fit_predict_dense(encode: Callable, encoder_params: Any, decoder: nn.Module, head: str,
                      train_images: np.ndarray, train_targets: np.ndarray,
                      test_images: np.ndarray, runs: Sequence[tuple[np.ndarray, int]], *,
                      finetune: bool = False, steps: int = 200, batch_size: int = 16,
                      lr: float = 1e-3, finetune_lr: float = 1e-4) -> list[np.ndarray]:
  """Test probabilities f32[N_test, H, W] of a decoder trained for each (train rows, seed) run.

  Args:
    encode, encoder_params: from `make_encoder`.
    decoder, head: from `make_decoder` / `resolve_head`.
    train_images, test_images: f32[N, H, W, 1]; train_targets: bool[N, H, W].
    runs: (sorted train row indices, seed); the seed draws the decoder init and the batch order.
    finetune: also train encoder_params (at finetune_lr); else the encoder is frozen and its
      features are computed once for all runs.
  """
  out_hw = tuple(train_targets.shape[1:])
  if tuple(train_images.shape[1:3]) != out_hw or tuple(test_images.shape[1:3]) != out_hw:
    raise ValueError(f"segmentation: images {train_images.shape[1:3]} / {test_images.shape[1:3]} "
                     f"and masks {out_hw} differ in size; masks must be at the image size")
  bs = int(batch_size)
  encode_j = jax.jit(encode)

  def features(images):
    parts = [encode_j(encoder_params, jnp.asarray(images[i:i + bs]))
             for i in range(0, len(images), bs)]
    return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0]))]

  if finetune:
    train_in, test_in = [train_images], [test_images]
    feats_of = lambda p, x: encode(p["encoder"], x[0])
  else:
    train_in, test_in = features(train_images), features(test_images)
    feats_of = lambda p, x: x

  def logits_fn(p, x):
    return _decode(decoder, head, p["decoder"], feats_of(p, x), out_hw)

  def labels(p):
    return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in p.items()}
  tx = optax.multi_transform({"decoder": optax.adam(lr), "encoder": optax.adam(finetune_lr)},
                             labels)

  @jax.jit
  def update(p, opt, x, y):
    grads = jax.grad(lambda q: bce_dice_loss(logits_fn(q, x), y))(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  predict = jax.jit(lambda p, x: jax.nn.sigmoid(logits_fn(p, x)))
  sample = [jnp.asarray(a[:1]) for a in train_in]
  results = []
  for rows, seed in runs:
    init = decoder.init(jax.random.key(int(seed)), list(feats_of(
        {"encoder": encoder_params}, sample)) if head == "unet" else feats_of(
        {"encoder": encoder_params}, sample)[-1], out_hw)["params"]
    params = {"decoder": init}
    if finetune:
      params["encoder"] = encoder_params
    opt = tx.init(params)
    for idx in minibatch_order(np.asarray(rows), int(steps), bs, int(seed)):
      params, opt = update(params, opt, [jnp.asarray(a[idx]) for a in train_in],
                           jnp.asarray(train_targets[idx], jnp.float32))
    prob = [np.asarray(predict(params, [jnp.asarray(a[i:i + bs]) for a in test_in]))
            for i in range(0, len(test_images), bs)]
    results.append(np.concatenate(prob).astype(np.float32))
  return results


__all__ = ["bce_dice_loss", "resolve_head", "make_encoder", "make_decoder", "fit_predict_dense",
           "DENSE_HEADS"]
