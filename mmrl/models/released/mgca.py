"""MGCA (HKU-MedAI/MGCA) Lightning checkpoints -> mmrl's `mgca` method.

Source (`models/mgca/mgca_module.py` MGCA, `models/backbones/encoder.py`): a Lightning `.ckpt`
whose `state_dict` holds
  img_encoder_q.model.*                    BLIP/timm ViT (patch_embed.proj, cls_token, pos_embed,
                                           blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
                                           mlp.fc2}, norm) for img_encoder='vit_base', or a
                                           torchvision ResNet-50 (fc = Identity) for 'resnet_50'
  img_encoder_q.{global_embed,local_embed}.head.{0,1,3,4}   Linear/Conv1d(k=1) -> BN -> ReLU ->
                                           Linear/Conv1d -> BN(affine=False)
  text_encoder_q.model.*                   BLIP med.py BertModel (bert_config.json: 6 layers,
                                           add_cross_attention, no pooler)
  text_encoder_q.{global_embed,local_embed}.head.*   as the image side
  {patch,word}_local_atten_layer.*         nn.MultiheadAttention (used only with use_local_atten)
  prototype_layer.weight                   [K, d] prototypes
Target (experiments/configs/mgca.py with `Converted.overrides`): the ViT (`vit_b16` or another
named ViT whose sizes match; [CLS] attention on, as the config) or resnet50 with local_stage=3
and resize_to=299; the four heads as `MLPProjection(norm='batch', output_norm='batch' without
affine)` (the Linear bias before BatchNorm folded into the running mean); `prototypes/weight`;
the text tower with the checkpoint's sizes and [CLS] global; data mean/std 0.5.
Text positions (`positions=`): MGCA's `BertEncoder.forward` calls `self.model(ids, attn_mask,
token_type, ...)` and med.py's `BertModel.forward` takes `(input_ids, attention_mask,
position_ids, ...)`, so the all-zero token types arrive as position ids: every token gets row 0 of
the position table, and the released weights were trained that way. `positions='authors'` (the
default) reproduces it by importing a position table whose every row is the source's row 0 (the
weights themselves carry it, so evaluate, export and init_from compute what MGCA computed);
`positions='arange'` imports the table as stored (positions 0..L-1). med.py's BERT has no
token-type table: a zero table is imported.
Dropped: the cross-attention weights (never run in mode='text'), the local attention layers
(use_local_atten=False in the released model; a checkpoint with True is refused), position_ids,
BatchNorm counters, optimiser moments, Lightning bookkeeping.
"""
from __future__ import annotations

import pathlib

import numpy as np

from mmrl.models.released import common
from mmrl.models.released import vision
from mmrl.models.released.gloria import _get, read_lightning
from mmrl.models.released.source import SourceError

IMAGE = "img_encoder_q."
TEXT = "text_encoder_q."
EXPECTED = [IMAGE + "global_embed.head.0.weight", TEXT + "global_embed.head.0.weight",
            "prototype_layer.weight"]
HINT = ("Pass an MGCA checkpoint (e.g. vit_base.ckpt or resnet_50.ckpt from HKU-MedAI/MGCA's "
        "README), or choose the --format that matches the file")
CROSS = "cross-attention of BLIP's med.py BertModel: never run in mode='text'"


POSITIONS = ("authors", "arange")


def convert(path: str | pathlib.Path, *, text_num_heads: int | None = None,
            positions: str = "authors") -> common.Converted:
  """Reads an MGCA checkpoint; see the module docstring."""
  path = pathlib.Path(path)
  if positions not in POSITIONS:
    raise SourceError(f"--positions={positions!r} is not known; use 'authors' (every token at "
                      "position 0, as MGCA's released forward) or 'arange' (0..L-1)")
  state, hparams, ledger = read_lightning(path, "MGCA", EXPECTED, HINT)
  notes: list[str] = []
  params: common.Flat = {}
  stats: common.Flat = {}
  if _get(hparams, "use_local_atten", default=False):
    raise SourceError(f"{path}: hyper_parameters use_local_atten=True (MultiheadAttention "
                      "token alignment); mmrl's MGCA reproduces the released "
                      "use_local_atten=False only")

  if IMAGE + "model.patch_embed.proj.weight" in state:
    image_name, image_size = vision.convert_vit(state, IMAGE + "model.", ledger, params,
                                                source=str(path))
    image = {"model.image.name": image_name, "model.image.cls_attention": True,
             "model.image.local_stage": 0, "model.image.resize_to": 0,
             "data.image_size": image_size}  # the checkpoint's position grid
  else:
    image_name = vision.convert_resnet(state, IMAGE + "model.", ledger, params, stats,
                                       source=str(path))
    image = {"model.image.name": image_name, "model.image.norm": "batch",
             "model.image.cls_attention": False, "model.image.local_stage": 3,
             "model.image.resize_to": 299}
    notes.append("ResNet image encoder: patch weights are uniform (MGCA's ResNet path)")

  dims = set()
  for side, ours in (("img", "image"), ("text", "text")):
    for kind, suffix in (("global", "projection"), ("local", "local_projection")):
      dims.add(common.mlp_bn_head(state, f"{side}_encoder_q.{kind}_embed.head",
                                  f"{ours}_{suffix}", ledger, params, stats, first_bias=True,
                                  output_norm=True))
  if len(dims) != 1:
    raise SourceError(f"{path}: the four MGCA heads have different (hidden, out) sizes {dims}; "
                      "mmrl's mgca shares config.method.{projection_hidden, embed_dim}")
  hidden, embed = dims.pop()
  protos = state["prototype_layer.weight"]
  params[("prototypes", "weight")] = protos
  ledger.take("prototype_layer.weight", "params/prototypes/weight")

  token_types = TEXT + "model.embeddings.token_type_embeddings.weight" in state
  sizes = common.bert_sizes(state, TEXT + "model.", num_heads=text_num_heads, source=str(path),
                            token_types=token_types)
  common.convert_bert(state, TEXT + "model.", ledger, params, token_types=token_types, unused={
      r"\.crossattention\.": CROSS,
      r"^embeddings\.position_ids$": "constant position-id buffer (arange)",
      r"^pooler\.": "BERT pooler: MGCA builds the BERT with add_pooling_layer=False"})
  if not token_types:
    notes.append("med.py's BERT has no token-type table: imported zeros "
                 "(params/text_tower/embeddings/token_type_embeddings)")
  position_name = TEXT + "model.embeddings.position_embeddings.weight"
  if positions == "authors":
    table = np.asarray(state[position_name], np.float32)
    params[common.POSITION_PATH] = np.repeat(table[:1], table.shape[0], axis=0)
    ledger.imported[position_name] = [
        "params/" + "/".join(common.POSITION_PATH) + " (every row = source row 0)"]
    notes.append("text positions='authors': every token uses row 0 of the position table, as "
                 "MGCA's forward does (BertEncoder passes the all-zero token_type ids "
                 "positionally into med.py's position_ids); the import's position table repeats "
                 "row 0, so evaluate / export / init_from keep this behaviour")
  else:
    notes.append("text positions='arange': positions 0..L-1 (not what the released MGCA model "
                 "computed; see docs/released_checkpoints.md)")
  for name in ("patch_local_atten_layer.", "word_local_atten_layer."):
    ledger.drop_rest(name, "MultiheadAttention used only with use_local_atten=True (released: "
                           "False)")
  ledger.drop_rest(IMAGE + "model.fc.", "ImageNet classifier (replaced by Identity)")
  ledger.drop_rest(IMAGE + "model.head.", "ViT classifier head (unused)")
  ledger.check_complete(str(path))
  notes.append(f"text num_heads={sizes['num_heads']} (hidden / 64 unless --text_num_heads; not "
               "stored in the tensors)")
  overrides = {
      "model.dtype": "float32", **common.bert_overrides(sizes), **image,
      "model.text.global_pool": "cls", "model.text.cls_attention": True,
      "method.embed_dim": embed, "method.projection_hidden": hidden,
      "method.projection_norm": "batch", "method.num_prototypes": int(protos.shape[0]),
      "data.mean": 0.5, "data.std": 0.5,
  }
  overrides.setdefault("data.image_size", 224)
  converted = common.Converted("mgca", str(path), overrides, params, stats, ledger, notes)
  converted.extra["text_positions"] = positions
  return converted
