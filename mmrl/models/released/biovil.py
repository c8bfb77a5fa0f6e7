"""BioViL (microsoft/hi-ml, hi-ml-multimodal) -> mmrl's `biovil` method.

Source: the Hugging Face folder of `microsoft/BiomedVLP-CXR-BERT-specialized` (the same repository
holds both towers):
  config.json                 model_type 'cxr-bert' (BertConfig + projection_size)
  pytorch_model.bin | model.safetensors   CXRBertModel = BertForMaskedLM (bert.*, cls.predictions.*
                              MLM head) + cls_projection_head.{dense_to_hidden, LayerNorm,
                              dense_to_output}
  vocab.txt (+ tokenizer files)
  biovil_image_resnet50_proj_size_128.pt  the image model's state dict (`ImageModel`):
                              encoder.encoder.* torchvision ResNet-50 (with its unused fc),
                              projector.model.{0: 1x1 conv no bias, 1: BatchNorm, 3: 1x1 conv}
The image file may also be given on its own (`image_weights=`).
Target (experiments/configs/biovil.py + `Converted.overrides`): resnet50 tower, image_projection
= MLPProjection(norm='batch') on the last grid (the projector), text tower with the checkpoint's
sizes ([CLS] global), text_projection = BertProjectionHead; data mean 0, std 1 (hi-ml feeds [0, 1]
pixels), image_size 480, tokenizer = the folder's vocabulary.
Dropped: the ResNet's fc (ImageNet classifier, never run), the MLM head cls.predictions.*
(including the decoder tied to the word embeddings), position_ids, BatchNorm counters.
"""
from __future__ import annotations

import json
import pathlib

from mmrl.models.released import common
from mmrl.models.released import source as source_lib
from mmrl.models.released import vision
from mmrl.models.released.source import Ledger, SourceError

IMAGE_FILE = "biovil_image_resnet50_proj_size_128.pt"
IMAGE_EXPECTED = ["encoder.encoder.conv1.weight", "projector.model.0.weight",
                  "projector.model.3.weight"]
TEXT_EXPECTED = ["bert.embeddings.word_embeddings.weight",
                 "cls_projection_head.dense_to_hidden.weight"]
HINT = ("Pass the folder of microsoft/BiomedVLP-CXR-BERT-specialized (config.json, "
        "pytorch_model.bin or model.safetensors, vocab.txt and "
        f"{IMAGE_FILE}), or choose the --format that matches")


def convert(path: str | pathlib.Path, *, image_weights: str | pathlib.Path | None = None
            ) -> common.Converted:
  """Reads a BioViL release folder; see the module docstring (config.json has the head count,
  so --text_num_heads is not an option of this format)."""
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise SourceError(f"{folder} is not a folder; --format=biovil reads the Hugging Face folder "
                      f"of the release. {HINT}")
  cfg_path = folder / "config.json"
  if not cfg_path.is_file():
    raise SourceError(f"{folder} has no config.json. {HINT}")
  try:
    hf = json.loads(cfg_path.read_text())
  except ValueError as e:
    raise SourceError(f"{cfg_path} is not valid JSON ({e}); download it again") from None
  if hf.get("model_type") not in ("cxr-bert", "bert"):
    raise SourceError(f"{cfg_path}: model_type={hf.get('model_type')!r}, expected 'cxr-bert'. "
                      f"{HINT}")
  text_state, text_file = source_lib.read_safetensors_or_bin(folder)
  common.require(text_state, TEXT_EXPECTED, fmt="BioViL (CXR-BERT)", source=str(text_file),
                 hint=HINT)
  image_path = pathlib.Path(image_weights) if image_weights else folder / IMAGE_FILE
  if not image_path.is_file():
    raise SourceError(f"{image_path} does not exist: BioViL's image weights are the file "
                      f"{IMAGE_FILE} of the same Hugging Face repository; put it in the folder "
                      "or pass --image_weights")
  image_obj = source_lib.load_torch_file(image_path)
  if not isinstance(image_obj, dict):
    raise SourceError(f"{image_path} does not hold a state dict (found "
                      f"{type(image_obj).__name__}). {HINT}")
  image_state = {k: source_lib.to_numpy(v) for k, v in image_obj.items()
                 if source_lib.is_tensor(v)}
  common.require(image_state, IMAGE_EXPECTED, fmt="BioViL image", source=str(image_path),
                 hint=HINT)

  ledger = Ledger()
  state = {}
  for name, value in image_state.items():
    state["image:" + name] = value
  for name, value in text_state.items():
    state["text:" + name] = value
  for name, value in state.items():
    ledger.add(name, value)
  params: common.Flat = {}
  stats: common.Flat = {}
  image_name = vision.convert_resnet(state, "image:encoder.encoder.", ledger, params, stats,
                                     source=str(image_path))
  ledger.drop_rest("image:encoder.encoder.fc.", "ImageNet classifier of the ResNet (BioViL's "
                   "encoder returns layer4; the fc is never run)")
  hidden, joint = common.mlp_bn_head(state, "image:projector.model", "image_projection", ledger,
                                     params, stats, first_bias=False, output_norm=False)

  heads = int(hf.get("num_attention_heads", 0)) or None
  sizes = common.bert_sizes(state, "text:bert.", num_heads=heads, source=str(text_file))
  common.convert_bert(state, "text:bert.", ledger, params, unused={
      r"^embeddings\.position_ids$": "constant position-id buffer (arange)",
      r"^pooler\.": "BERT pooler (CXR-BERT uses the projection head on [CLS])"})
  ledger.drop_rest("text:cls.predictions.", "masked-language-model head (pre-training only; its "
                   "decoder is tied to the word embeddings)")
  for leaf in ("dense_to_hidden", "dense_to_output"):
    common.linear(state, f"text:cls_projection_head.{leaf}", ("text_projection", leaf), ledger,
                  params)
  for src, dst in (("weight", "scale"), ("bias", "bias")):
    name = f"text:cls_projection_head.LayerNorm.{src}"
    params[("text_projection", "LayerNorm", dst)] = state[name]
    ledger.take(name, f"params/text_projection/LayerNorm/{dst}")
  ledger.check_complete(str(folder))
  projection = int(hf.get("projection_size", joint))
  if projection != joint or hidden != joint:
    raise SourceError(f"{folder}: projection_size={projection}, but the image projector maps to "
                      f"{hidden} -> {joint}; mmrl's biovil method shares one width")
  if hf.get("hidden_act", "gelu") != "gelu" or float(hf.get("layer_norm_eps", 1e-12)) != 1e-12:
    raise SourceError(f"{cfg_path}: hidden_act={hf.get('hidden_act')!r}, layer_norm_eps="
                      f"{hf.get('layer_norm_eps')}; mmrl's text tower with weights='' uses gelu "
                      "and 1e-12")
  overrides = {
      "model.dtype": "float32", "model.image.name": image_name, "model.image.norm": "batch",
      **common.bert_overrides(sizes), "model.text.global_pool": "cls",
      "method.embed_dim": joint, "method.projection_hidden": hidden,
      "data.mean": 0.0, "data.std": 1.0, "data.image_size": 480,
      "data.tokenizer": str(folder.absolute()),
  }
  notes = [f"text from {text_file.name}, image from {image_path.name}",
           "hi-ml resizes the short side to 512 and centre-crops 480; mmrl's evaluation view "
           "pads to a square and resizes to data.image_size"]
  return common.Converted("biovil", str(folder), overrides, params, stats, ledger, notes)
