"""BiomedCLIP-layout release folders built with `open-clip-torch` itself (parity references).

`write_release(folder, seed, ...)` writes what `microsoft/BiomedCLIP-PubMedBERT_256-vit_base_
patch16_224` holds: `open_clip_config.json` ({model_cfg, preprocess_cfg}: a timm ViT image tower
with `timm_pool=""` (timm's default token pool: [CLS] after the final norm) and a bias-free
`timm_proj="linear"`; an HF BERT text tower with `hf_proj_type="mlp"` and `hf_pooler_type=
"cls_last_hidden_state_pooler"`, context length 256) beside `open_clip_pytorch_model.bin` (the
`CustomTextCLIP` state dict), plus the vocabulary. The model is built by open_clip's own classes
from that config, filled with seeded random weights, saved, and read back with
`open_clip.create_model('local-dir:FOLDER')` (open_clip's loader, strict), which is the reference.

Offline: open_clip's `HFTextEncoder` calls `AutoConfig.from_pretrained(hf_model_name)`; a local
folder holding a BERT `config.json` is a valid name, and `hf_model_pretrained=False` builds the
BERT from that config (no weights downloaded). The tiny image tower is a timm `VisionTransformer`
registered under a name of its own (`timm.create_model` is how open_clip builds it), with the
sizes of mmrl's `vit_tiny`; `full=True` uses timm's `vit_base_patch16_224` and PubMedBERT's sizes.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import torch

from benchmarks.released_references import reference_torch as R

TINY_VIT = "mmrl_test_vit_p8_d64_32"
# CLIP's mean / std (open_clip.constants OPENAI_DATASET_MEAN / STD), BiomedCLIP's preprocess_cfg.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _register_tiny_vit() -> None:
  import timm  # pylint: disable=import-outside-toplevel
  from timm.models import register_model  # pylint: disable=import-outside-toplevel
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel
  if timm.is_model(TINY_VIT):
    return

  def build(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    del pretrained
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
      kwargs.pop(key, None)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                              mlp_ratio=2.0, **kwargs)
    model.pretrained_cfg = model.default_cfg = {}  # what timm's build_model_with_cfg sets
    return model
  build.__name__ = TINY_VIT
  build.__module__ = "timm.models.vision_transformer"
  register_model(build)


def write_release(folder: pathlib.Path, seed: int = 0, *, full: bool = False,
                  logit_scale: float = float(np.log(1 / 0.05))) -> pathlib.Path:
  """The release folder (module docstring); returns it."""
  from open_clip.model import CustomTextCLIP  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(folder)
  bert_dir = folder / "text_config"
  bert_dir.mkdir(parents=True, exist_ok=True)
  if full:
    vit, image_size, embed = "vit_base_patch16_224", 224, 512
    bert = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072)
  else:
    _register_tiny_vit()
    vit, image_size, embed = TINY_VIT, 32, 32
    bert = dict(vocab_size=len(R.VOCAB) + 8, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=128)
  (bert_dir / "config.json").write_text(json.dumps({
      "model_type": "bert", "architectures": ["BertForMaskedLM"], "max_position_embeddings": 512,
      "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, **bert}, indent=1))
  model_cfg = {
      "embed_dim": embed,
      "vision_cfg": {"timm_model_name": vit, "timm_model_pretrained": False, "timm_pool": "",
                     "timm_proj": "linear", "image_size": image_size},
      "text_cfg": {"hf_model_name": str(bert_dir.absolute()),
                   "hf_tokenizer_name": str(bert_dir.absolute()), "hf_model_pretrained": False,
                   "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                   "context_length": 256},
  }
  (folder / "open_clip_config.json").write_text(json.dumps(
      {"model_cfg": model_cfg, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}, indent=1))
  model = CustomTextCLIP(**model_cfg)
  R.randomize_(model, seed)
  with torch.no_grad():
    model.logit_scale.fill_(logit_scale)
  torch.save(model.state_dict(), str(folder / "open_clip_pytorch_model.bin"))
  R.write_vocab(folder, bert["vocab_size"])
  return folder


def load_reference(folder: pathlib.Path) -> torch.nn.Module:
  """open_clip's own loader on the folder (strict load of the saved state dict), eval mode."""
  import open_clip  # pylint: disable=import-outside-toplevel
  _register_tiny_vit()
  model = open_clip.create_model(f"local-dir:{pathlib.Path(folder).absolute()}")
  return model.eval()


def forward(model: torch.nn.Module, images: torch.Tensor, ids: torch.Tensor
            ) -> dict[str, torch.Tensor]:
  """The embeddings open_clip computes (un-normalised) and the towers' pooled features."""
  mask = (ids != model.text.config.pad_token_id).long()
  hidden = model.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
  return {"image_pooled": model.visual.trunk(images), "image_embed": model.encode_image(images),
          "text_tokens": hidden, "text_pooled": hidden[:, 0],
          "text_embed": model.encode_text(ids)}
