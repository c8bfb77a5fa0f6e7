"""open_clip releases with a timm ViT and a Hugging Face BERT (BiomedCLIP) -> mmrl's `open_clip`
method.

Source: the Hugging Face folder of `microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`, as
open_clip's `create_model('hf-hub:...' | 'local-dir:...')` reads it (src/open_clip/factory.py):
  open_clip_config.json   {model_cfg: {embed_dim, vision_cfg: {timm_model_name, timm_pool,
                          timm_proj, [timm_proj_bias], image_size}, text_cfg: {hf_model_name,
                          hf_tokenizer_name, hf_proj_type, hf_pooler_type, context_length}},
                          preprocess_cfg: {mean, std, ...}}
  open_clip_pytorch_model.bin | open_clip_pytorch_model.safetensors | open_clip_model.safetensors
                          the `CustomTextCLIP` state dict:
    visual.trunk.*        timm VisionTransformer (cls_token, pos_embed, patch_embed.proj,
                          blocks.N.*, norm); reset_classifier(0): no head tensors
    visual.head.proj.weight   TimmModel's Linear(width -> embed_dim, bias=timm_proj_bias)
    text.transformer.*    transformers BertModel (no pooler: add_pooling_layer is only for
                          hf_pooler_type='cls_pooler')
    text.proj.{0,2}.weight    HFTextEncoder's mlp: Linear(D -> (D + E) // 2, no bias) -> GELU ->
                          Linear(-> E, no bias)
    logit_scale           logits = exp(logit_scale) * cos
Target (experiments/configs/open_clip.py + `Converted.overrides`): the named mmrl ViT whose sizes
match (vit_b16 for the release), global = [CLS] after the final norm, the position grid's image
size; `image_projection` = LinearProjection(use_bias=False); text tower with the checkpoint's sizes,
[CLS] global; `text_projection` = MLPProjection(activation='gelu', use_bias=False);
`temperature/log_tau` = -logit_scale; data.mean 0 / std 1 with preprocess_cfg's per-channel
mean / std folded into the 1-channel patch kernel (exact); data.max_tokens = context_length.
What is refused (the error names the field): a timm_pool other than ''/'token' (timm's [CLS]
pool), a timm_proj other than 'linear' or with a bias, an hf_proj_type other than 'mlp', an
hf_pooler_type other than 'cls_last_hidden_state_pooler', a logit_bias (SigLIP), a context length
that is not a multiple of 64.
BERT head count: from `hf_model_name`'s config.json when that is a local folder, else
`text_num_heads=`, else hidden / 64 (PubMedBERT: 12). Vocabulary: `--tokenizer` (PubMedBERT's
vocab.txt), or a vocab.txt in the folder. Dropped: text `position_ids` (a buffer), the BERT
pooler if the file has one (never read by cls_last_hidden_state_pooler).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from mmrl.models.released import common
from mmrl.models.released import source as source_lib
from mmrl.models.released import vision
from mmrl.models.released.source import Ledger, SourceError

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin")  # open_clip's preference order (factory.py)
EXPECTED = ["visual.trunk.patch_embed.proj.weight", "visual.head.proj.weight",
            "text.transformer.embeddings.word_embeddings.weight", "text.proj.0.weight",
            "text.proj.2.weight", "logit_scale"]
# open_clip.constants OPENAI_DATASET_MEAN / STD: the default when preprocess_cfg has none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HINT = ("Pass the folder of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
        f"({CONFIG_FILE} and open_clip_pytorch_model.bin), or choose the --format that matches")


def _config(folder: pathlib.Path) -> dict[str, Any]:
  path = folder / CONFIG_FILE
  if not path.is_file():
    raise SourceError(f"{folder} has no {CONFIG_FILE}. {HINT}")
  try:
    cfg = json.loads(path.read_text())
  except ValueError as e:
    raise SourceError(f"{path} is not valid JSON ({e}); download it again") from None
  if not isinstance(cfg, dict) or "model_cfg" not in cfg:
    raise SourceError(f"{path} has no 'model_cfg' (open_clip's layout is {{model_cfg, "
                      f"preprocess_cfg}}). {HINT}")
  return cfg


def _check(cfg: dict[str, Any], path: pathlib.Path) -> tuple[dict, dict]:
  """(vision_cfg, text_cfg) after refusing what mmrl's open_clip method does not compute."""
  model_cfg = cfg["model_cfg"]
  vis, txt = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
  if "timm_model_name" not in vis or "hf_model_name" not in txt:
    raise SourceError(f"{path}: model_cfg needs a timm image tower (vision_cfg.timm_model_name) "
                      "and a Hugging Face text tower (text_cfg.hf_model_name); open_clip's own "
                      "CLIP towers are not read by --format=open_clip")
  checks = [
      ("vision_cfg.timm_pool", vis.get("timm_pool", "avg"), ("", "token"),
       "timm's default [CLS] pool of a ViT"),
      ("vision_cfg.timm_proj", vis.get("timm_proj", "linear"), ("linear",),
       "a Linear image projection"),
      ("vision_cfg.timm_proj_bias", bool(vis.get("timm_proj_bias", False)), (False,),
       "a bias-free image projection"),
      ("text_cfg.hf_proj_type", txt.get("hf_proj_type", "mlp"), ("mlp",),
       "Linear -> GELU -> Linear"),
      ("text_cfg.hf_pooler_type", txt.get("hf_pooler_type", "mean_pooler"),
       ("cls_last_hidden_state_pooler",), "the last layer's [CLS]"),
  ]
  for key, value, allowed, what in checks:
    if value not in allowed:
      raise SourceError(f"{path}: {key}={value!r}; mmrl's open_clip method computes {what} "
                        f"({key} in {list(allowed)})")
  if model_cfg.get("init_logit_bias") is not None:
    raise SourceError(f"{path}: init_logit_bias is set (a SigLIP logit bias); mmrl's open_clip "
                      "method has only the logit scale")
  return vis, txt


def _num_heads(txt: dict[str, Any], text_num_heads: int | None) -> tuple[int | None, str]:
  """The BERT head count and where it came from."""
  name = pathlib.Path(str(txt["hf_model_name"]))
  local = name / "config.json"
  if local.is_file():
    try:
      heads = int(json.loads(local.read_text())["num_attention_heads"])
    except (ValueError, KeyError, TypeError) as e:
      raise SourceError(f"{local}: no readable num_attention_heads ({e})") from None
    if text_num_heads and int(text_num_heads) != heads:
      raise SourceError(f"--text_num_heads={text_num_heads} but {local} says "
                        f"num_attention_heads={heads}")
    return heads, str(local)
  if text_num_heads:
    return int(text_num_heads), "--text_num_heads"
  return None, f"hidden / 64 ({txt['hf_model_name']} is not a local folder)"


def _weights(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  for name in WEIGHT_FILES:
    path = folder / name
    if not path.is_file():
      continue
    if path.suffix == ".safetensors":
      try:
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
        return dict(load_file(str(path))), path
      except Exception as e:  # pylint: disable=broad-except
        raise SourceError(f"{path} cannot be read as safetensors ({type(e).__name__}); the file "
                          "is truncated or damaged - download it again") from None
    obj = source_lib.load_torch_file(path)
    if isinstance(obj, dict) and "state_dict" in obj:
      obj = obj["state_dict"]  # open_clip's load_state_dict accepts both
    if not isinstance(obj, dict):
      raise SourceError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    return {k: source_lib.to_numpy(v) for k, v in state.items() if source_lib.is_tensor(v)}, path
  raise SourceError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}. {HINT}")


def convert(path: str | pathlib.Path, *, text_num_heads: int | None = None) -> common.Converted:
  """Reads an open_clip release folder; see the module docstring."""
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise SourceError(f"{folder} is not a folder; --format=open_clip reads the release folder. "
                      f"{HINT}")
  cfg = _config(folder)
  cfg_path = folder / CONFIG_FILE
  vis, txt = _check(cfg, cfg_path)
  state, weight_file = _weights(folder)
  common.require(state, EXPECTED, fmt="open_clip (timm + HF text)", source=str(weight_file),
                 hint=HINT)
  if "logit_bias" in state:
    raise SourceError(f"{weight_file} holds a logit_bias (SigLIP); mmrl's open_clip method has "
                      "only the logit scale")
  pre = cfg.get("preprocess_cfg", {}) or {}
  mean = [float(v) for v in pre.get("mean", CLIP_MEAN)]
  std = [float(v) for v in pre.get("std", CLIP_STD)]
  mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)

  ledger = Ledger()
  for name, value in state.items():
    ledger.add(name, value)
  params: common.Flat = {}
  image_name, image_size = vision.convert_vit(
      state, "visual.trunk.", ledger, params, source=str(weight_file),
      source_norm=(mean, std), input_norm=(0.0, 1.0))
  common.linear(state, "visual.head.proj", ("image_projection", "dense"), ledger, params,
                bias=False)
  heads, heads_from = _num_heads(txt, text_num_heads)
  sizes = common.bert_sizes(state, "text.transformer.", num_heads=heads, source=str(weight_file))
  common.convert_bert(state, "text.transformer.", ledger, params, unused={
      r"^embeddings\.position_ids$": "constant position-id buffer (arange)",
      r"^pooler\.": "BERT pooler (cls_last_hidden_state_pooler reads last_hidden_state[:, 0])"})
  for src, dst in (("text.proj.0", "dense_0"), ("text.proj.2", "dense_1")):
    common.linear(state, src, ("text_projection", dst), ledger, params, bias=False)
  logit_scale = np.asarray(state["logit_scale"], np.float32).reshape(())
  params[("temperature", "log_tau")] = -logit_scale
  ledger.take("logit_scale", "params/temperature/log_tau (= -logit_scale)")
  ledger.check_complete(str(folder))

  hidden = int(np.shape(state["text.proj.0.weight"])[0])
  embed = int(np.shape(state["text.proj.2.weight"])[0])
  image_out = int(np.shape(state["visual.head.proj.weight"])[0])
  declared = int(cfg["model_cfg"].get("embed_dim", embed))
  if not embed == image_out == declared:
    raise SourceError(f"{weight_file}: image projection to {image_out}, text projection to "
                      f"{embed}, model_cfg.embed_dim={declared}; they must agree")
  context = int(txt.get("context_length", 77))
  if context % 64:
    raise SourceError(f"{cfg_path}: text_cfg.context_length={context} is not a multiple of 64 "
                      "(mmrl's batches pad tokens to a multiple of 64)")
  declared_size = vis.get("image_size", image_size)
  declared_size = declared_size[0] if isinstance(declared_size, (list, tuple)) else declared_size
  if int(declared_size) != image_size:
    raise SourceError(f"{cfg_path}: vision_cfg.image_size={declared_size} but the position grid "
                      f"is for {image_size} px")
  tau = float(np.exp(-logit_scale))
  overrides = {
      "model.dtype": "float32", "model.image.name": image_name,
      "model.image.layer_norm_eps": 1e-6, "model.image.cls_attention": False,
      **common.bert_overrides(sizes), "model.text.global_pool": "cls",
      "model.text.sum_last_layers": 1,
      "method.embed_dim": embed, "method.projection_hidden": hidden,
      "data.mean": 0.0, "data.std": 1.0, "data.image_size": image_size,
      "data.max_tokens": context,
  }
  vocab = folder / "vocab.txt"
  if vocab.is_file():
    overrides["data.tokenizer"] = str(vocab.absolute())
  notes = [f"weights from {weight_file.name}; image tower {vis['timm_model_name']} -> {image_name}"
           f", text tower {txt['hf_model_name']}",
           f"preprocess_cfg mean {mean} / std {std} folded into the 1-channel patch kernel "
           "(data.mean 0, data.std 1: [0, 1] pixels)",
           f"text num_heads={sizes['num_heads']} from {heads_from}",
           f"logit_scale {float(logit_scale):.4f} -> temperature/log_tau (tau {tau:.4g})",
           "open_clip resizes the short side (bicubic) and centre-crops; mmrl's evaluation view "
           "pads to a square and resizes (bilinear)"]
  converted = common.Converted("open_clip", str(folder), overrides, params, {}, ledger, notes)
  converted.extra["logit_scale"] = float(logit_scale)
  return converted
