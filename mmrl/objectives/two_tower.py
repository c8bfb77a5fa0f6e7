"""The two-tower model: image tower + text tower + the method's heads -> one outputs dict.

    outputs = TwoTowerModel(...).apply(variables, batch, train=...)
    outputs['image']  ImageFeatures      outputs['text']  TextFeatures
    + the method's head outputs, e.g. 'image_embed' [B,d], 'text_embed' [B,d], 'log_tau' []

Cached text features: when the batch holds 'text_features/...' entries
(mmrl.models.features.text_features_to_batch, filled by mmrl.train.text_feature_cache for a frozen
text tower), the online forward uses them instead of running the text tower; the heads see the
same TextFeatures. The teacher forward and the method's own calls through `model` ignore them.

`apply(variables, batch, train=..., teacher=True)` is the EMA teacher's forward (the step passes
the EMA variables): only the method's `teacher_towers`, then `method.teacher_heads`; it returns
that dict alone.

Param tree: 'image_tower/...', 'text_tower/...', then the heads by name ('image_projection/...',
'text_projection/...', 'temperature/log_tau'). Parameters are float32; compute runs in
`config.model.dtype` (the towers and heads take it). No device code here.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmrl.models import towers
from mmrl.models.features import text_features_from_batch
from mmrl.objectives.methods import Method, get_method


class TwoTowerModel(nn.Module):
  """`__call__(batch, *, train) -> outputs` (see module docstring).

  Attributes:
    image_tower: module(images f32[B,H,W,1], *, train) -> ImageFeatures.
    text_tower: module(input_ids, attention_mask, token_to_sentence, *, num_sentences, train)
      -> TextFeatures.
    method: the `Method` whose heads run on the features.
    dtype: compute dtype of the heads.
  """
  image_tower: nn.Module
  text_tower: nn.Module
  method: Method
  dtype: Any = jnp.float32

  def encode_image(self, images, *, train: bool):
    return self.image_tower(images, train=train)

  def encode_text(self, batch: Mapping[str, Any], *, train: bool):
    return self.text_tower(batch["input_ids"], batch["attention_mask"],
                           batch["token_to_sentence"],
                           num_sentences=batch["sentence_mask"].shape[-1], train=train)

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], *, train: bool,
               teacher: bool = False) -> dict[str, Any]:
    extra = {"model": self} if self.method.uses_model else {}
    if teacher:
      towers_used = self.method.teacher_towers
      image = self.encode_image(batch["image"], train=train) if "image" in towers_used else None
      text = self.encode_text(batch, train=train) if "text" in towers_used else None
      return self.method.teacher_heads(image, text, batch, train=train, dtype=self.dtype,
                                       **extra)
    image = self.encode_image(batch["image"], train=train)
    text = text_features_from_batch(batch)
    if text is None or self.is_initializing():  # init still creates the text tower's params
      text = self.encode_text(batch, train=train)
    outputs = {"image": image, "text": text}
    outputs.update(self.method.apply_heads(image, text, batch, train=train, dtype=self.dtype,
                                           **extra))
    return outputs


def build_model(config: Any, *, image_tower: nn.Module | None = None,
                text_tower: nn.Module | None = None) -> TwoTowerModel:
  """The model for `config` (towers from `mmrl.models.towers` unless given)."""
  if image_tower is None or text_tower is None:
    image_tower = towers.build_image_tower(config.model) if image_tower is None else image_tower
    text_tower = towers.build_text_tower(config.model) if text_tower is None else text_tower
  return TwoTowerModel(image_tower=image_tower, text_tower=text_tower,
                       method=get_method(config.method), dtype=towers.compute_dtype(config.model))
