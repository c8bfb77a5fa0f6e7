"""PyTorch references of the released models, written by us from the authors' code as called.

Each reference has the authors' module tree, so its `state_dict()` has their tensor names; its
forward calls the inner models as the authors do, positional arguments included (GLoRIA:
`self.model(ids, attn_mask, token_type, output_hidden_states=True)` into a transformers BertModel;
MGCA: `self.model(ids, attn_mask, token_type, return_dict=True, mode="text")` into `MedBertModel`,
BLIP's med.py BERT, whose third positional parameter is `position_ids` and which has no token-type
table -- `MgcaTextEncoder.positions = 'arange'` calls it with 0..L-1 instead). GLoRIA and MGCA are
saved by Lightning itself (`lightning_files.save_with_trainer`: GLoRIA's hyper-parameters the
OmegaConf DictConfig of its config, MGCA's its keyword arguments). The file structures:

  GLoRIA  (marshuang80/gloria: models/vision_model.py ImageEncoder, models/text_model.py
          BertEncoder, lightning/pretrain_model.py): a Lightning checkpoint whose state_dict keys are
          gloria.img_encoder.model.* (torchvision ResNet, fc replaced by Identity),
          gloria.img_encoder.{global_embedder (Linear), local_embedder (1x1 conv, no bias)},
          gloria.text_encoder.model.* (transformers BertModel with pooler).
          Forward: upsample to 299 (bilinear, align_corners) -> layer3 = local, pooled layer4 =
          global; text = sum of the last 4 hidden states, word-pieces summed per word ([CLS] and
          [SEP] are words), zero pads; sentence = mean over all L word slots.
  MGCA    (HKU-MedAI/MGCA: models/backbones/encoder.py, models/mgca/mgca_module.py):
          img_encoder_q.model.* (BLIP/timm ViT or torchvision ResNet-50), {img,text}_encoder_q.
          {global_embed,local_embed}.head.{0,1,3,4} (Linear/Conv1d -> BN -> ReLU -> Linear/Conv1d
          -> BN(affine=False)), text_encoder_q.model.* (BLIP med.py BertModel, 6 layers, with unused
          cross-attention tensors, no pooler, no token-type table), {patch,word}_local_atten_layer.* (unused with
          use_local_atten=False), prototype_layer.weight.
  BioViL  (microsoft/hi-ml, hi-ml-multimodal: image/model/model.py ImageModel, modules.py MLP,
          text/model/modelling_cxrbert.py CXRBertModel): the image model's state dict
          (encoder.encoder.* torchvision ResNet-50 incl. its unused fc, projector.model.{0,1,3})
          as a torch.save .pt, and CXR-BERT as an HF folder (config.json model_type 'cxr-bert',
          bert.*, cls.predictions.* MLM head, cls_projection_head.*).

Sizes are parameters so that tests use tiny text towers; weights are filled from a seed
(`randomize_`). Imports torch, torchvision, timm and transformers: a test / benchmark dependency
only (the `torch` extra), never imported by the importers themselves.

Over 400 lines on purpose: one job, parity references that must follow the authors' code line by
line (module trees, tensor names, call signatures), so it is kept as one file to compare against
theirs rather than split along our own seams.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import transformers
from torch import nn

from benchmarks.released_references import lightning_files

# ----------------------------------------------------------------------------------------------
# Shared pieces.

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "heart", "size", "is", "normal", "no", "pleural", "effusion", "lung", "left",
         "right", "opacity", "base", "mild", "edema", "stable"]
PIECES = ["card", "##io", "##me", "##gal", "##y", "atel", "##ect", "##asis", "pneu", "##mo",
          "##thorax"]
VOCAB = SPECIALS + WORDS + PIECES


def write_vocab(folder: pathlib.Path, vocab_size: int) -> pathlib.Path:
  """A WordPiece vocab.txt with VOCAB first, filled with unused tokens up to vocab_size."""
  folder.mkdir(parents=True, exist_ok=True)
  tokens = VOCAB + [f"[unused{i}]" for i in range(vocab_size - len(VOCAB))]
  path = folder / "vocab.txt"
  path.write_text("".join(t + "\n" for t in tokens[:vocab_size]))
  return path


def example_text(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Right-padded [CLS] words-and-pieces [SEP] [PAD]... ids, mask, and token_to_word (words
  numbered from 0 after [CLS]; -1 on specials and pads), as the data pipeline makes them."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, length), np.int64)
  mask = np.zeros((batch, length), np.int64)
  to_word = np.full((batch, length), -1, np.int64)
  for b in range(batch):
    n_tokens = int(rng.integers(length // 3, length - 2))
    toks, words = [VOCAB.index("[CLS]")], [-1]
    w = -1
    while len(toks) < n_tokens + 1:
      if rng.random() < 0.3:  # a word split into pieces
        head = VOCAB.index(str(rng.choice(["card", "atel", "pneu"])))
        w += 1
        toks.append(head)
        words.append(w)
        for _ in range(int(rng.integers(1, 3))):
          toks.append(VOCAB.index(str(rng.choice(["##io", "##me", "##gal", "##y", "##mo"]))))
          words.append(w)
      else:
        w += 1
        toks.append(VOCAB.index(str(rng.choice(WORDS))))
        words.append(w)
    toks, words = toks[:n_tokens + 1], words[:n_tokens + 1]
    toks.append(VOCAB.index("[SEP]"))
    words.append(-1)
    ids[b, :len(toks)] = toks
    mask[b, :len(toks)] = 1
    to_word[b, :len(words)] = words
  return {"input_ids": ids, "attention_mask": mask, "token_to_word": to_word}


def example_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """Grey images f32[B, size, size, 1] in [0, 1] (smooth blobs + noise)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = []
  for _ in range(batch):
    cx, cy, r = rng.uniform(0.3, 0.7, 3)
    img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.1 * r)) + 0.1 * rng.random((size, size))
    out.append(img / img.max())
  return np.stack(out)[..., None].astype(np.float32)


def to_rgb_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
  """[B,H,W,1] in [0, 1] -> the authors' input: grey repeated to 3 channels, normalised."""
  x = torch.from_numpy((images - mean) / std).permute(0, 3, 1, 2)
  return x.repeat(1, 3, 1, 1).float()


def randomize_(module: nn.Module, seed: int) -> nn.Module:
  """Seeded random weights; BatchNorm affine and running statistics too (so that eval-mode
  BatchNorm is not the identity), kept in ranges where a deep ResNet stays finite."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    for m in module.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.affine:
          m.weight.copy_(0.5 + 0.3 * torch.rand(m.weight.shape, generator=gen))
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        m.num_batches_tracked.fill_(1000)
      if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
  return module


def aggregate_words(embeddings: torch.Tensor, ids: torch.Tensor, id_to_word: Sequence[str]
                    ) -> torch.Tensor:
  """GLoRIA's / MGCA's `aggregate_tokens`: [B, nl, L, D] -> [B, nl, L, D] word slots: a piece
  starting with '##' is added to the word before it; [CLS] and [SEP] are words of their own;
  after [SEP] the slots are zeros."""
  b, nl, length, d = embeddings.shape
  out = torch.zeros_like(embeddings)
  for i in range(b):
    slots, bank = [], []
    for t in range(length):
      word = id_to_word[int(ids[i, t])]
      emb = embeddings[i, :, t]
      if word == "[SEP]":
        slots.append(torch.stack(bank).sum(0))
        slots.append(emb)
        break
      if not word.startswith("##"):
        if bank:
          slots.append(torch.stack(bank).sum(0))
        bank = [emb]
      else:
        bank.append(emb)
    for j, s in enumerate(slots):
      out[i, :, j] = s
  return out


class Identity(nn.Module):
  def forward(self, x):
    return x


def _tiny_bert_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                      **extra: Any) -> transformers.BertConfig:
  return transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden,
                                 num_hidden_layers=layers, num_attention_heads=heads,
                                 intermediate_size=intermediate, max_position_embeddings=512,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 **extra)


def _resnet_trunk(x: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
  """(layer3, layer4) of a torchvision ResNet."""
  x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  x = model.layer2(model.layer1(x))
  local = model.layer3(x)
  return local, model.layer4(local)


# ----------------------------------------------------------------------------------------------
# GLoRIA.

class GloriaImageEncoder(nn.Module):
  def __init__(self, embed_dim: int, resnet: str = "resnet50"):
    super().__init__()
    self.model = getattr(torchvision.models, resnet)(weights=None)
    feature_dim = self.model.fc.in_features
    self.model.fc = Identity()
    self.global_embedder = nn.Linear(feature_dim, embed_dim)
    self.local_embedder = nn.Conv2d(feature_dim // 2, embed_dim, 1, bias=False)

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    local, x = _resnet_trunk(x, self.model)
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pooled, self.global_embedder(pooled), self.local_embedder(local)


class GloriaTextEncoder(nn.Module):
  def __init__(self, config: transformers.BertConfig, id_to_word: Sequence[str],
               last_n_layers: int = 4):
    super().__init__()
    self.model = transformers.BertModel(config)  # with the (unused) pooler, as AutoModel
    self.id_to_word = list(id_to_word)
    self.last_n_layers = last_n_layers

  def forward(self, ids, mask):
    # gloria_model.py passes token_type_ids (zeros); text_model.py calls the HF BertModel
    # positionally: (input_ids, attention_mask, token_type_ids), hidden states = outputs[2].
    out = self.model(ids, mask, torch.zeros_like(ids), output_hidden_states=True)
    emb = torch.stack(out[2][-self.last_n_layers:]).permute(1, 0, 2, 3)
    emb = aggregate_words(emb, ids, self.id_to_word)
    sent = emb.mean(dim=2).sum(dim=1)              # mean over all L word slots, sum over layers
    words = emb.sum(dim=1).permute(0, 2, 1)         # [B, D, L]
    return words, sent


class GloriaModel(nn.Module):
  def __init__(self, bert: transformers.BertConfig, resnet: str = "resnet50"):
    super().__init__()
    self.text_encoder = GloriaTextEncoder(bert, VOCAB + [""] * (bert.vocab_size - len(VOCAB)))
    self.img_encoder = GloriaImageEncoder(bert.hidden_size, resnet)

  def forward(self, images, ids, mask):
    pooled, g, l = self.img_encoder(images)
    words, sent = self.text_encoder(ids, mask)
    return {"image_pooled": pooled, "image_embed": g,
            "image_regions": l.flatten(2).transpose(1, 2),    # [B, R, D] row-major
            "text_words": words.transpose(1, 2), "text_embed": sent}


class GloriaLightning(nn.Module):
  """`PretrainModel`: the GLoRIA model under the attribute `gloria`."""

  def __init__(self, bert: transformers.BertConfig, resnet: str = "resnet50"):
    super().__init__()
    self.gloria = GloriaModel(bert, resnet)


def gloria_reference(seed: int = 0, *, hidden: int = 64, layers: int = 4, heads: int = 1,
                     intermediate: int = 128, vocab_size: int = 64) -> GloriaLightning:
  torch.manual_seed(seed)
  cfg = _tiny_bert_config(vocab_size, hidden, layers, heads, intermediate)
  return randomize_(GloriaLightning(cfg), seed).eval()


def gloria_hparams(model: GloriaLightning, **text: Any):
  """GLoRIA's `configs/chexpert_pretrain_config.yaml` fields the loader and forward read, as the
  OmegaConf `DictConfig` that `PretrainModel` hands to `save_hyperparameters`. A tower that is
  not Bio_ClinicalBERT-wide names a made-up bert_type (the importer checks known names' widths)."""
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  width = model.gloria.text_encoder.model.config.hidden_size
  bert_type = ("emilyalsentzer/Bio_ClinicalBERT" if width == 768 else f"tests/tiny-bert-{width}")
  cfg = {"experiment_name": "gloria_pretrain_v1", "phase": "pretrain",
         "lightning": {"trainer": {"gpus": "1", "max_epochs": 50, "precision": 16,
                                   "gradient_clip_val": 0.25, "distributed_backend": "dp"}},
         "model": {"vision": {"model_name": "resnet_50", "freeze_cnn": False,
                              "pretrained": True},
                   "text": {"bert_type": bert_type,
                            "last_n_layers": model.gloria.text_encoder.last_n_layers,
                            "aggregate_method": "sum", "norm": False,
                            "embedding_dim": model.gloria.img_encoder.global_embedder.out_features,
                            "freeze_bert": False, "agg_tokens": True},
                   "gloria": {"local_loss_weight": 1.0, "global_loss_weight": 1.0,
                              "temp1": 4.0, "temp2": 5.0, "temp3": 10.0}},
         "data": {"dataset": "chexpert", "text": {"word_num": 97, "captions_per_image": 5,
                                                  "full_report": True},
                  "image": {"imsize": 256}},
         "transforms": {"norm": "half", "random_crop": {"crop_size": 224}},
         "train": {"batch_size": 48, "num_workers": 18,
                   "optimizer": {"name": "Adam", "learning_rate": 5e-5, "weight_decay": 1e-6},
                   "scheduler": {"name": "plateau", "monitor": "val_loss"}}}
  for k, v in text.items():
    cfg["model"]["text"][k] = v
  return OmegaConf.create(cfg)


def save_gloria(model: GloriaLightning, path: pathlib.Path, hparams: Any = None
                ) -> pathlib.Path:
  """The released `.ckpt`: Lightning's own `save_checkpoint` with the DictConfig hparams, plus
  the 1.1.x extras (AMP scaler state, callbacks keyed by class)."""
  return lightning_files.save_with_trainer(
      model, path, gloria_hparams(model) if hparams is None else hparams, pl1_extras=True,
      version="1.1.4")


# ----------------------------------------------------------------------------------------------
# MGCA.

class GlobalEmbedding(nn.Module):
  def __init__(self, input_dim, hidden_dim, output_dim):
    super().__init__()
    self.head = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                              nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim),
                              nn.BatchNorm1d(output_dim, affine=False))

  def forward(self, x):
    return self.head(x)


class LocalEmbedding(nn.Module):
  def __init__(self, input_dim, hidden_dim, output_dim):
    super().__init__()
    self.head = nn.Sequential(nn.Conv1d(input_dim, hidden_dim, 1), nn.BatchNorm1d(hidden_dim),
                              nn.ReLU(inplace=True), nn.Conv1d(hidden_dim, output_dim, 1),
                              nn.BatchNorm1d(output_dim, affine=False))

  def forward(self, x):
    return self.head(x.permute(0, 2, 1)).permute(0, 2, 1)


class MgcaImageEncoder(nn.Module):
  def __init__(self, kind: str, embed_dim: int, hidden_dim: int, *, image_size: int = 224,
               patch: int = 16, width: int = 768, depth: int = 12, heads: int = 12,
               mlp_ratio: float = 4.0):
    super().__init__()
    self.kind = kind
    if kind == "vit":
      import timm  # pylint: disable=import-outside-toplevel
      self.model = timm.models.vision_transformer.VisionTransformer(
          img_size=image_size, patch_size=patch, in_chans=3, num_classes=0, embed_dim=width,
          depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True, global_pool="")
      feature_dim = local_dim = width
    else:
      self.model = torchvision.models.resnet50(weights=None)
      feature_dim = self.model.fc.in_features
      self.model.fc = Identity()
      local_dim = 1024
    self.global_embed = GlobalEmbedding(feature_dim, hidden_dim, embed_dim)
    self.local_embed = LocalEmbedding(local_dim, hidden_dim, embed_dim)

  def forward(self, x):
    if self.kind == "vit":
      feats = self.model.forward_features(x)
      return feats[:, 0], feats[:, 1:]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    local, x = _resnet_trunk(x, self.model)
    return F.adaptive_avg_pool2d(x, 1).flatten(1), local.flatten(2).transpose(1, 2)


class MedEmbeddings(nn.Module):
  """BLIP `med.py` BertEmbeddings: word + absolute position embeddings, LayerNorm, dropout; no
  token-type table. `position_ids` default to 0..L-1 (the registered buffer)."""

  def __init__(self, config: transformers.BertConfig):
    super().__init__()
    self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                        padding_idx=config.pad_token_id)
    self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
    self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    self.dropout = nn.Dropout(config.hidden_dropout_prob)
    self.register_buffer("position_ids",
                         torch.arange(config.max_position_embeddings).expand((1, -1)))

  def forward(self, input_ids, position_ids=None):
    if position_ids is None:
      position_ids = self.position_ids[:, :input_ids.shape[1]]
    x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
    return self.dropout(self.LayerNorm(x))


class MedSelfAttention(nn.Module):
  def __init__(self, config: transformers.BertConfig):
    super().__init__()
    d = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

  def forward(self, x, extended_mask):
    b, length, d = x.shape
    h = self.num_heads

    def split(t):
      return t.view(b, length, h, d // h).permute(0, 2, 1, 3)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5 + extended_mask
    probs = scores.softmax(dim=-1)
    return (probs @ v).permute(0, 2, 1, 3).reshape(b, length, d), probs


class MedSelfOutput(nn.Module):
  def __init__(self, config: transformers.BertConfig, inner: int | None = None):
    super().__init__()
    self.dense = nn.Linear(inner or config.hidden_size, config.hidden_size)
    self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

  def forward(self, h, residual):
    return self.LayerNorm(self.dense(h) + residual)


class MedAttention(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.self = MedSelfAttention(config)
    self.output = MedSelfOutput(config)

  def forward(self, x, extended_mask):
    context, probs = self.self(x, extended_mask)
    return self.output(context, x), probs


class MedIntermediate(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

  def forward(self, x):
    return F.gelu(self.dense(x))


class MedLayer(nn.Module):
  """med.py BertLayer with add_cross_attention: `crossattention` exists, run only in
  mode='multimodal' (MGCA's text encoder runs mode='text')."""

  def __init__(self, config):
    super().__init__()
    self.attention = MedAttention(config)
    self.crossattention = MedAttention(config)
    self.intermediate = MedIntermediate(config)
    self.output = MedSelfOutput(config, config.intermediate_size)

  def forward(self, x, extended_mask):
    x, probs = self.attention(x, extended_mask)
    return self.output(self.intermediate(x), x), probs


class MedEncoder(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.layer = nn.ModuleList(MedLayer(config) for _ in range(config.num_hidden_layers))


class MedBertModel(nn.Module):
  """BLIP `med.py` BertModel(add_pooling_layer=False). Its forward's positional order is
  (input_ids, attention_mask, position_ids, ...) -- not transformers' (..., token_type_ids)."""

  def __init__(self, config: transformers.BertConfig):
    super().__init__()
    self.config = config
    self.embeddings = MedEmbeddings(config)
    self.encoder = MedEncoder(config)

  def forward(self, input_ids, attention_mask=None, position_ids=None, return_dict=True,
              mode="multimodal"):
    assert mode == "text", "MGCA's text encoder runs mode='text'"
    if attention_mask is None:
      attention_mask = torch.ones_like(input_ids)
    extended = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    x = self.embeddings(input_ids, position_ids)
    attentions = []
    for layer in self.encoder.layer:
      x, probs = layer(x, extended)
      attentions.append(probs)
    return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=x,
                                                         attentions=tuple(attentions))


class MgcaTextEncoder(nn.Module):
  """MGCA's `BertEncoder` (models/backbones/encoder.py)."""

  def __init__(self, config: transformers.BertConfig, embed_dim: int, hidden_dim: int):
    super().__init__()
    self.model = MedBertModel(config)
    self.id_to_word = VOCAB + [""] * (config.vocab_size - len(VOCAB))
    d = config.hidden_size
    self.global_embed = GlobalEmbedding(d, hidden_dim, embed_dim)
    self.local_embed = LocalEmbedding(d, hidden_dim, embed_dim)
    self.positions = "authors"

  def forward(self, ids, attn_mask, token_type):
    if self.positions == "authors":  # the call as written: token_type lands on position_ids
      outputs = self.model(ids, attn_mask, token_type, return_dict=True, mode="text")
    else:  # positions 0..L-1 (what the call was presumably meant to do)
      outputs = self.model(ids, attn_mask, return_dict=True, mode="text")
    feats = aggregate_words(outputs.last_hidden_state.unsqueeze(1), ids, self.id_to_word)[:, 0]
    return feats[:, 0], feats[:, 1:]


class MgcaLightning(nn.Module):
  def __init__(self, image_kind: str, bert: transformers.BertConfig, *, embed_dim: int = 16,
               hidden_dim: int = 32, num_prototypes: int = 12, **vit: Any):
    super().__init__()
    self.img_encoder_q = MgcaImageEncoder(image_kind, embed_dim, hidden_dim, **vit)
    self.text_encoder_q = MgcaTextEncoder(bert, embed_dim, hidden_dim)
    self.patch_local_atten_layer = nn.MultiheadAttention(embed_dim, 1, batch_first=True)
    self.word_local_atten_layer = nn.MultiheadAttention(embed_dim, 1, batch_first=True)
    self.prototype_layer = nn.Linear(embed_dim, num_prototypes, bias=False)

  def forward(self, images, ids, mask):
    g, patches = self.img_encoder_q(images)
    # mgca_module.py: self.text_encoder_q(batch["caption_ids"], batch["attention_mask"],
    # batch["token_type_ids"]); the tokenizer's token types are all 0 for one segment.
    report, words = self.text_encoder_q(ids, mask, torch.zeros_like(ids))
    return {"image_pooled": g, "image_embed": self.img_encoder_q.global_embed(g),
            "image_regions_local": self.img_encoder_q.local_embed(patches),
            "text_embed": self.text_encoder_q.global_embed(report),
            "text_words_local": self.text_encoder_q.local_embed(words)}


def mgca_reference(image_kind: str = "vit", seed: int = 0, *, hidden: int = 64, layers: int = 2,
                   heads: int = 1, intermediate: int = 128, vocab_size: int = 64,
                   vit: dict | None = None) -> MgcaLightning:
  """vit: MgcaImageEncoder's ViT sizes (image_size, patch, width, depth, heads, mlp_ratio)."""
  torch.manual_seed(seed)
  cfg = _tiny_bert_config(vocab_size, hidden, layers, heads, intermediate)
  return randomize_(MgcaLightning(image_kind, cfg, **(vit or {})), seed).eval()


def save_mgca(model: MgcaLightning, path: pathlib.Path, **hparams: Any) -> pathlib.Path:
  """The released `.ckpt`: Lightning's `save_checkpoint` with MGCA's keyword hyper-parameters
  (`save_hyperparameters()` of MGCA.__init__'s arguments: an AttributeDict)."""
  values = dict(img_encoder="vit_base" if model.img_encoder_q.kind == "vit" else "resnet_50",
                freeze_bert=False, emb_dim=model.prototype_layer.in_features,
                softmax_temperature=0.07, learning_rate=2e-5, momentum=0.9,
                weight_decay=0.05, batch_size=144, num_workers=8, local_temperature=0.1,
                proto_temperature=0.2, num_prototypes=model.prototype_layer.out_features,
                bidirectional=True, use_local_atten=False, num_heads=1, lamb=0.75,
                lambda_1=1, lambda_2=1, lambda_3=1, freeze_prototypes_epochs=1,
                sinkhorn_iterations=3, epsilon=0.05)
  values.update(hparams)
  return lightning_files.save_with_trainer(model, path, values, version="1.5.10")


# ----------------------------------------------------------------------------------------------
# BioViL.

class BiovilEncoder(nn.Module):
  def __init__(self):
    super().__init__()
    self.encoder = torchvision.models.resnet50(weights=None)  # ResNetHIML keeps its fc

  def forward(self, x):
    return _resnet_trunk(x, self.encoder)[1]


class BiovilImageModel(nn.Module):
  """`ImageModel(img_encoder_type='resnet50', joint_feature_size=J)`."""

  def __init__(self, joint: int = 128):
    super().__init__()
    self.encoder = BiovilEncoder()
    self.projector = nn.Module()
    self.projector.model = nn.Sequential(nn.Conv2d(2048, joint, 1, bias=False),
                                         nn.BatchNorm2d(joint), nn.ReLU(inplace=True),
                                         nn.Conv2d(joint, joint, 1, bias=True))

  def forward(self, x):
    patch = self.encoder(x)
    projected = self.projector.model(patch)
    return {"image_pooled": patch.mean(dim=(2, 3)),
            "image_regions": projected.flatten(2).transpose(1, 2),
            "image_embed": projected.mean(dim=(2, 3))}


class BertProjectionHead(nn.Module):
  def __init__(self, hidden: int, projection: int):
    super().__init__()
    self.dense_to_hidden = nn.Linear(hidden, projection)
    self.LayerNorm = nn.LayerNorm(projection, eps=1e-12)
    self.dense_to_output = nn.Linear(projection, projection)

  def forward(self, x):
    return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


class CxrBert(transformers.BertForMaskedLM):
  """`CXRBertModel`: BertForMaskedLM + `cls_projection_head` on the last [CLS]."""

  def __init__(self, config):
    super().__init__(config)
    self.cls_projection_head = BertProjectionHead(config.hidden_size, config.projection_size)

  def encode(self, ids, mask):
    out = super().forward(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    last = out.hidden_states[-1]
    return {"text_tokens": last, "text_embed": self.cls_projection_head(last[:, 0])}


def biovil_reference(seed: int = 0, *, joint: int = 32, hidden: int = 64, layers: int = 2,
                     heads: int = 2, intermediate: int = 128, vocab_size: int = 64
                     ) -> tuple[BiovilImageModel, CxrBert]:
  torch.manual_seed(seed)
  image = randomize_(BiovilImageModel(joint), seed).eval()
  cfg = _tiny_bert_config(vocab_size, hidden, layers, heads, intermediate)
  cfg.projection_size = joint
  text = randomize_(CxrBert(cfg), seed + 1).eval()
  return image, text


def save_biovil(image: BiovilImageModel, text: CxrBert, folder: pathlib.Path
                ) -> pathlib.Path:
  """The HF repo's layout: config.json (cxr-bert), pytorch_model.bin, vocab.txt, and the image
  model's state dict biovil_image_resnet50_proj_size_128.pt next to them."""
  folder.mkdir(parents=True, exist_ok=True)
  cfg = text.config.to_dict()
  cfg.update({"model_type": "cxr-bert", "architectures": ["CXRBertModel"],
              "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                           "AutoModel": "modeling_cxrbert.CXRBertModel"}})
  (folder / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
  state = {k: v.contiguous() for k, v in text.state_dict().items()}
  torch.save(state, str(folder / "pytorch_model.bin"))
  write_vocab(folder, text.config.vocab_size)
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512}))
  torch.save(image.state_dict(), str(folder / "biovil_image_resnet50_proj_size_128.pt"))
  return folder
