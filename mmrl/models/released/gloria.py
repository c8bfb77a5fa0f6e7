"""GLoRIA (marshuang80/gloria) Lightning checkpoints -> mmrl's `gloria` method.

Source (`lightning/pretrain_model.py` PretrainModel, `models/gloria_model.py`): a PyTorch
Lightning `.ckpt` whose `state_dict` holds
  gloria.img_encoder.model.*             torchvision ResNet-50 (fc replaced by Identity: no fc)
  gloria.img_encoder.global_embedder.*   Linear(2048 -> 768) on the pooled layer4
  gloria.img_encoder.local_embedder.weight  1x1 Conv2d(1024 -> 768, no bias) on layer3
  gloria.text_encoder.model.*            Bio_ClinicalBERT (transformers BertModel, with pooler)
plus `optimizer_states`, `lr_schedulers`, `callbacks` (Lightning 1.1.x: keyed by the callback
class), `native_amp_scaling_state` (precision 16), `hyper_parameters` -- the OmegaConf
`DictConfig` object itself (`save_hyperparameters(cfg)`; `load_gloria` reads
`ckpt["hyper_parameters"].model.text.bert_type`) -- and `hparams_type`. The restricted unpickler
reads the DictConfig as inert data (`source.plain`); hyper-parameters that disagree with the
tensors (a `bert_type` of another width, an `embedding_dim` that is not the heads') are refused.

Target (experiments/configs/gloria.py with these changes, all in `Converted.overrides`):
  image tower  resnet50, local_stage=3 (layer3 = regions), resize_to=299 (the encoder's
               bilinear align_corners upsampling), BatchNorm statistics from the checkpoint
  heads        image_global_projection/dense (Linear with bias), image_local_projection/dense
               (no bias) -- mmrl's GLoRIA heads have exactly these
  text tower   the BERT (sizes from the tensors; heads = hidden / 64 unless given),
               sum_last_layers=4 (`last_n_layers: 4, aggregate_method: sum`; read from
               hyper_parameters when present), global_pool='mean_positions' (the mean over all L
               word slots, pads as zeros)
  data         mean 0.5, std 0.5 (`transforms.norm: half`), image_size 224; the tokenizer is the
               Bio_ClinicalBERT vocabulary the user names (the checkpoint holds none)
Dropped: the BERT pooler (GLoRIA never reads `outputs[1]` with last_n_layers > 1),
embeddings.position_ids (a constant arange buffer), BatchNorm counters, optimiser moments and
everything outside the model.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from mmrl.models.released import common
from mmrl.models.released import source as source_lib
from mmrl.models.released import vision
from mmrl.models.released.source import Ledger, SourceError

PREFIX = "gloria."
IMAGE = "gloria.img_encoder."
TEXT = "gloria.text_encoder.model."
EXPECTED = [IMAGE + "global_embedder.weight", IMAGE + "local_embedder.weight",
            TEXT + "embeddings.word_embeddings.weight"]
HINT = ("Pass the GLoRIA PretrainModel checkpoint (e.g. chexpert_resnet50.ckpt from the link in "
        "marshuang80/gloria's README), or choose the --format that matches the file")


def read_lightning(path: pathlib.Path, fmt: str, expected: list[str], hint: str
                   ) -> tuple[dict[str, np.ndarray], Any, Ledger]:
  """(state_dict as numpy, hyper_parameters (plain), ledger over every tensor of the file)."""
  ckpt = source_lib.load_torch_file(path)
  if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
    found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise SourceError(f"{path} is not a {fmt} Lightning checkpoint: expected a dict with "
                      f"'state_dict' (keys {', '.join(expected[:3])}, ...), found {found}. {hint}")
  if not isinstance(ckpt["state_dict"], dict):
    raise SourceError(f"{path}: ['state_dict'] is a {type(ckpt['state_dict']).__name__}, not a "
                      f"dict of tensors. {hint}")
  state = {k: source_lib.to_numpy(v) for k, v in ckpt["state_dict"].items()
           if source_lib.is_tensor(v)}
  common.require(state, expected, fmt=fmt, source=str(path), hint=hint)
  ledger = Ledger()
  for key, value in ckpt.items():
    if key == "state_dict":
      for name, tensor in state.items():
        ledger.add(name, tensor)
    else:
      ledger.add_all(value, key)
  for key in ckpt:
    if key == "optimizer_states":
      ledger.drop_rest(key, "optimiser state (Adam moments): the import starts a fresh optimiser")
    elif key == "lr_schedulers":
      ledger.drop_rest(key, "learning-rate scheduler state")
    elif key != "state_dict":
      ledger.drop_rest(key, f"Lightning bookkeeping ({key}), not part of the model")
  return state, source_lib.plain(ckpt.get("hyper_parameters")), ledger


def _get(tree: Any, *keys: str, default: Any = None) -> Any:
  for k in keys:
    if not isinstance(tree, dict) or k not in tree:
      return default
    tree = tree[k]
  return tree


# Hidden widths of the BERTs GLoRIA's configs name (model.text.bert_type); others are not checked.
BERT_WIDTHS = {"emilyalsentzer/Bio_ClinicalBERT": 768, "emilyalsentzer/Bio_Discharge_Summary_BERT":
               768, "bert-base-uncased": 768, "bert-base-cased": 768, "bert-large-uncased": 1024,
               "bert-large-cased": 1024, "microsoft/BiomedVLP-CXR-BERT-general": 768,
               "prajjwal1/bert-tiny": 128, "prajjwal1/bert-mini": 256}


def _check_hparams(hparams: Any, state, sizes, path: pathlib.Path) -> None:
  """hyper_parameters that disagree with the tensors: the file is not what it says it is."""
  bert_type = _get(hparams, "model", "text", "bert_type")
  if bert_type in BERT_WIDTHS and BERT_WIDTHS[bert_type] != sizes["hidden_size"]:
    raise SourceError(f"{path}: hyper_parameters model.text.bert_type={bert_type!r} is "
                      f"{BERT_WIDTHS[bert_type]} wide, but the tensors under {TEXT!r} are "
                      f"{sizes['hidden_size']} wide; the config and the weights disagree - "
                      "the file was edited or is not a GLoRIA release")
  embed = _get(hparams, "model", "text", "embedding_dim")
  out = int(np.shape(state[IMAGE + "global_embedder.weight"])[0])
  if embed is not None and int(embed) != out:
    raise SourceError(f"{path}: hyper_parameters model.text.embedding_dim={embed}, but "
                      f"{IMAGE}global_embedder maps to {out}; the config and the weights "
                      "disagree")


def convert(path: str | pathlib.Path, *, text_num_heads: int | None = None) -> common.Converted:
  """Reads a GLoRIA checkpoint; see the module docstring."""
  path = pathlib.Path(path)
  state, hparams, ledger = read_lightning(path, "GLoRIA", EXPECTED, HINT)
  notes: list[str] = []
  params: common.Flat = {}
  stats: common.Flat = {}

  image_name = vision.convert_resnet(state, IMAGE + "model.", ledger, params, stats,
                                     source=str(path))
  common.linear(state, IMAGE + "global_embedder", ("image_global_projection", "dense"), ledger,
                params)
  common.linear(state, IMAGE + "local_embedder", ("image_local_projection", "dense"), ledger,
                params, bias=False)

  sizes = common.bert_sizes(state, TEXT, num_heads=text_num_heads, source=str(path))
  common.convert_bert(state, TEXT, ledger, params, unused={
      r"^pooler\.": "BERT pooler: GLoRIA's text encoder reads hidden states only "
                    "(last_n_layers > 1)",
      r"^embeddings\.position_ids$": "constant position-id buffer (arange)"})
  last_n = int(_get(hparams, "model", "text", "last_n_layers", default=4) or 4)
  aggregate = str(_get(hparams, "model", "text", "aggregate_method", default="sum"))
  if aggregate != "sum" or last_n < 1:
    raise SourceError(f"{path}: hyper_parameters model.text.aggregate_method={aggregate!r}, "
                      f"last_n_layers={last_n}; the importer reproduces aggregate_method='sum' "
                      "only (the released configuration)")
  if _get(hparams, "model", "text", "norm", default=False):
    notes.append("hyper_parameters model.text.norm=true: GLoRIA normalised the text embeddings; "
                 "mmrl's objectives and evaluators normalise them anyway (cosines)")
  if hparams is None:
    notes.append("hyper_parameters not readable; assumed the released configuration "
                 "(last_n_layers 4, aggregate sum, norm half)")
  _check_hparams(hparams, state, sizes, path)
  if last_n > sizes["num_layers"] + 1:
    raise SourceError(f"{path}: last_n_layers={last_n} exceeds the BERT's {sizes['num_layers']} "
                      "layers + embeddings")
  ledger.drop_rest(PREFIX + "img_encoder.model.fc.", "ImageNet classifier (replaced by Identity)")
  ledger.check_complete(str(path))
  notes.append(f"text num_heads={sizes['num_heads']} (hidden / 64 unless --text_num_heads; not "
               "stored in the tensors)")

  overrides = {
      "model.dtype": "float32",
      "model.image.name": image_name, "model.image.norm": "batch",
      "model.image.local_stage": 3, "model.image.resize_to": 299,
      **common.bert_overrides(sizes),
      "model.text.sum_last_layers": last_n, "model.text.global_pool": "mean_positions",
      "data.mean": 0.5, "data.std": 0.5, "data.image_size": 224,
  }
  norm = _get(hparams, "transforms", "norm", default="half")
  if norm == "imagenet":
    raise SourceError(f"{path}: transforms.norm='imagenet' (per-channel statistics) cannot be "
                      "expressed as mmrl's single data.mean / data.std on grey images")
  return common.Converted("gloria", str(path), overrides, params, stats, ledger, notes)
