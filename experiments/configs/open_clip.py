"""BiomedCLIP (open_clip: ViT-B/16 + PubMedBERT) as an mmrl two-tower config, method `open_clip`.

Zhang et al., 2023; microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: open_clip's heads,
CLIP's symmetric InfoNCE with a learned temperature.

COMMAND: python -m experiments.import_checkpoint --format=open_clip \
           --input=/path/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 \
           --tokenizer=/path/BiomedNLP-BiomedBERT-base-uncased-abstract/vocab.txt \
           --output=runs/biomedclip
         (the released weights; docs/released_checkpoints.md), then evaluate or fine-tune it:
         python -m experiments.evaluate --config=experiments/configs/from_run.py:runs/biomedclip \
           --config.data.dataset_dir=/data/shards --checkpoint=runs/biomedclip
SMOKE:   python -m experiments.pretrain --config=experiments/configs/open_clip.py:tiny \
           --workdir=runs/tiny
EXPECT:  not measured: this config exists to hold the released model; training from scratch with
         it is not the BiomedCLIP recipe (PMC-15M figure-caption pairs).
Paper / code choices and what we changed:
- Image: timm vit_base_patch16_224, [CLS] after the final norm (timm_pool "" = timm's token pool),
  bias-free Linear(768 -> 512) (timm_proj "linear"). One grey channel: the RGB patch kernel is
  summed with preprocess_cfg's per-channel CLIP mean / std folded in (exact), so data.mean 0 /
  std 1 ([0, 1] pixels). open_clip resizes the short side to 224 (bicubic) and centre-crops;
  our evaluation view pads to a square and resizes (bilinear).
- Text: PubMedBERT (uncased, vocabulary 30522), [CLS] of the last layer
  (cls_last_hidden_state_pooler, no BERT pooler) -> Linear(768 -> 640, no bias) -> GELU ->
  Linear(640 -> 512, no bias); context length 256 (data.max_tokens).
- Loss: clip_nce (both directions, equal weights, learnable tau from 0.07 = open_clip's
  init_logit_scale log(1/0.07); our tau is clipped to [0.01, 1], open_clip clamps the logit scale
  at 100, the same bound).
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "vit_b16"
  c.model.image.weights = "none"
  c.model.text.weights = ""
  c.model.text.global_pool = "cls"
  c.method.name = "open_clip"
  c.method.embed_dim = 512
  c.method.projection_hidden = 640
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.07, learnable_tau=True,
                                     image_to_text_weight=0.5)),
  ]
  c.data.image_size = 224
  c.data.mean = 0.0
  c.data.std = 1.0
  c.data.max_tokens = 256
  c.optim.lr = 1e-5
  c.train.batch_size = 32
  c.train.num_steps = 10_000
  if arg == "tiny":
    make_tiny(c, image_tower="vit_tiny")
    c.method.embed_dim = 16
    c.method.projection_hidden = 24
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for open_clip.py; use '' or 'tiny'")
  return c
