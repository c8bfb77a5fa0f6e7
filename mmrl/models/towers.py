"""Tower construction from `config.model`: image towers (ResNet, ViT) and the BERT text tower.

Public API:
  build_image_tower(model_cfg) -> module(images f32[B,H,W,1], *, train) -> ImageFeatures
  build_text_tower(model_cfg)  -> module(input_ids, attention_mask, token_to_sentence, *,
                                         num_sentences, train) -> TextFeatures
  load_text_weights(model_cfg, params) -> params (HF checkpoint in the text tower's subtree)
  (image weights, config.model.image.weights: mmrl.models.pretrained.init, at train-state init)
  image_tower_dims(model_cfg) -> (global_dim, local_dim);  text_tower_dim(model_cfg) -> int
Keys read: model.dtype, model.image.{name, norm, remat, cls_attention, layer_norm_eps,
local_stage, resize_to}, model.text.{weights, num_layers, hidden_size, num_heads,
intermediate_size, global_pool, sentence_pool, remat, attention_impl, cls_attention,
sum_last_layers} and, optional, model.text.dropout (default 0.0; > 0 needs
rngs={'dropout': key} in train mode).

Parameter-tree conventions (paths inside each tower's own subtree; the optimiser's freeze and
weight-decay rules are regexes over '/'-joined paths, so these names are a contract):
  Text (BERT)   embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
                embeddings/norm/{scale,bias}
                layer_{i}/attention/{query,key,value,out}/{kernel,bias}     i = 0 .. N-1
                layer_{i}/attention_norm/{scale,bias}
                layer_{i}/intermediate/{kernel,bias}   layer_{i}/output/{kernel,bias}
                layer_{i}/output_norm/{scale,bias}
                e.g. freeze embeddings + first 6 layers: r'^embeddings/|^layer_[0-5]/'
  ResNet        stem_conv/kernel, stem_norm/..., stage{s}_block{b}/conv{k}/kernel,
                stage{s}_block{b}/norm{k}/..., stage{s}_block{b}/proj_{conv,norm}/...
                (s = 1..4, b from 0; 'group' norm nests one level: norm1/GroupNorm/scale)
                BatchNorm statistics live in the separate `batch_stats` collection (same paths).
  ViT           patch_embedding/{kernel,bias}, cls, pos_embedding [1,gh,gw,D],
                block_{i}/norm{1,2}/..., block_{i}/attention/{query,key,value,out}/...,
                block_{i}/mlp/{fc1,fc2}/..., final_norm/...
  Every normalisation layer's module name contains 'norm', and all norm params are 'scale' /
  'bias', so r'(norm|ln|bn|LayerNorm|BatchNorm|scale|bias)' selects exactly the norm params
  and the biases (the usual no-weight-decay set); no other param name matches it.
  nn.remat does not change any path.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from mmrl.config_errors import ConfigError
from mmrl.models import hf_weights
from mmrl.models.bert import BertConfig, BertTextTower
from mmrl.models.resnet import RESNETS, resnet, stage_dim
from mmrl.models.vit import VITS, vit
from mmrl.registry import Registry

IMAGE_TOWERS: Registry[Callable[..., nn.Module]] = Registry("image tower")
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}

# cls_attention: ViTs return their last block's [CLS] attention; ResNets have no [CLS] and
# ignore it (MGCA then uses uniform patch weights, mmrl/objectives/mgca.py).
for _name in RESNETS:
  IMAGE_TOWERS.register(_name)(
      lambda *, norm, dtype, remat, cls_attention=False, norm_eps=None, local_stage=0,
      resize_to=0, remat_policy="nothing", _n=_name: resnet(
          _n, norm=norm, dtype=dtype, remat=remat, local_stage=local_stage, resize_to=resize_to,
          remat_policy=remat_policy))


def _vit_tower(name, *, norm, dtype, remat, cls_attention=False, norm_eps=1e-6, local_stage=0,
               resize_to=0, remat_policy="nothing"):
  del norm
  if local_stage or resize_to:
    raise ConfigError(f"config.model.image.local_stage / resize_to are ResNet options; "
                      f"{name!r} is a ViT: leave them 0")
  return vit(name, dtype=dtype, remat=remat, cls_attention=cls_attention, norm_eps=norm_eps,
             remat_policy=remat_policy)


for _name in VITS:
  IMAGE_TOWERS.register(_name)(lambda _n=_name, **kw: _vit_tower(_n, **kw))
del _name


def compute_dtype(model_cfg) -> Any:
  """config.model.dtype as a jnp dtype."""
  name = str(model_cfg.dtype)
  if name not in DTYPES:
    raise ConfigError(f"config.model.dtype={name!r} is not supported; use one of "
                     f"{', '.join(DTYPES)}")
  return DTYPES[name]


def _image_name(model_cfg) -> str:
  name = str(model_cfg.image.name)
  if name not in IMAGE_TOWERS:
    raise ConfigError(f"config.model.image.name={name!r} is not an image tower; known: "
                     f"{', '.join(IMAGE_TOWERS.names())}")
  return name


def build_image_tower(model_cfg) -> nn.Module:
  """The image tower named by config.model.image.name (resnet18 | resnet50 | vit_s16 | ...)."""
  name = _image_name(model_cfg)
  return IMAGE_TOWERS.get(name)(norm=str(model_cfg.image.get("norm", "batch")),
                                dtype=compute_dtype(model_cfg),
                                remat=bool(model_cfg.image.get("remat", False)),
                                remat_policy=str(model_cfg.image.get("remat_policy", "nothing")),
                                cls_attention=bool(model_cfg.image.get("cls_attention", False)),
                                norm_eps=float(model_cfg.image.get("layer_norm_eps", 1e-6)),
                                local_stage=int(model_cfg.image.get("local_stage", 0)),
                                resize_to=int(model_cfg.image.get("resize_to", 0)))


def image_tower_dims(model_cfg) -> tuple[int, int]:
  """(global_dim, local_dim) of the configured image tower's features."""
  name = _image_name(model_cfg)
  if name in RESNETS:
    return RESNETS[name].out_dim, stage_dim(RESNETS[name], int(model_cfg.image.get("local_stage", 0)))
  d = VITS[name].dim
  return d, d


def text_config(model_cfg) -> BertConfig:
  """The BERT sizes: the checkpoint's config.json (num_layers > 0 truncates), or, with
  text.weights == '', config.model.text.{num_layers, hidden_size, num_heads, intermediate_size}."""
  t = model_cfg.text
  if str(t.get("name", "bert")) != "bert":
    raise ConfigError(f"config.model.text.name={t.name!r} is not supported; use 'bert'")
  num_layers = int(t.get("num_layers", -1))
  dropout = float(t.get("dropout", 0.0))
  weights = str(t.get("weights", ""))
  if weights:
    folder = hf_weights.resolve_weights_dir(weights)
    cfg = hf_weights.read_bert_config(folder)
    if num_layers > cfg.num_layers:
      raise ConfigError(f"config.model.text.num_layers={num_layers} exceeds the "
                       f"{cfg.num_layers} layers of {folder}; use <= {cfg.num_layers} or -1")
    changes = {"dropout_rate": dropout}
    if num_layers > 0:
      changes["num_layers"] = num_layers
    return BertConfig(**{**cfg.__dict__, **changes})
  if num_layers <= 0:
    raise ConfigError("config.model.text.num_layers=-1 means 'from the checkpoint', but "
                     "config.model.text.weights='' (random init); set text.num_layers > 0")
  return BertConfig(vocab_size=int(t.get("vocab_size", 30522)),
                    hidden_size=int(t.hidden_size), num_layers=num_layers,
                    num_heads=int(t.num_heads), intermediate_size=int(t.intermediate_size),
                    dropout_rate=dropout)


def build_text_tower(model_cfg) -> nn.Module:
  """The BERT text tower (bert.BertTextTower) for config.model."""
  t = model_cfg.text
  impl = t.get("attention_impl", None)
  return BertTextTower(config=text_config(model_cfg),
                       global_pool=str(t.get("global_pool", "cls")),
                       sentence_pool=str(t.get("sentence_pool", "max")),
                       dtype=compute_dtype(model_cfg), remat=bool(t.get("remat", False)),
                       remat_policy=str(t.get("remat_policy", "nothing")),
                       attention_impl=None if impl in (None, "") else str(impl),
                       cls_attention=bool(t.get("cls_attention", False)),
                       sum_last_layers=int(t.get("sum_last_layers", 1)))


def text_tower_dim(model_cfg) -> int:
  """Hidden size of the configured text tower (= its token, sentence and global dims)."""
  return text_config(model_cfg).hidden_size


def load_text_weights(model_cfg, params: Any) -> Any:
  """`params` with the text tower's subtree replaced by config.model.text.weights' checkpoint.

  `params` may be the tower's own subtree or any tree holding exactly one BERT tower subtree.
  A no-op when text.weights == ''.
  """
  weights = str(model_cfg.text.get("weights", ""))
  if not weights:
    return params
  return hf_weights.load_bert_weights(weights, params)
