"""A released checkpoint converted to our parameters and config (`experiments/import_checkpoint.py`).

    converted = convert('gloria', '/ckpts/chexpert_resnet50.ckpt')
    config = build_config(converted, base_config, tokenizer='/models/Bio_ClinicalBERT')

`mmrl.train.released_import` writes the result as a run directory (`write_run`) and does all
of it in one call (`import_checkpoint`). `FORMATS` names the importers (one module per format in this package) and
the method config each starts from (experiments/configs/<method>.py, passed in by the caller so
the library never imports `experiments`).
"""
from __future__ import annotations

import inspect
import pathlib
from typing import Any, Callable

import ml_collections

from mmrl.models.released import biovil
from mmrl.models.released import common
from mmrl.models.released import gloria
from mmrl.models.released import mgca
from mmrl.models.released import open_clip
from mmrl.models.released.source import SourceError

# A set option (not None) that a format's convert() does not take is an error naming both.
FORMATS: dict[str, Callable[..., common.Converted]] = {
    "gloria": gloria.convert, "mgca": mgca.convert, "biovil": biovil.convert,
    "open_clip": open_clip.convert}
METHOD_CONFIG = {"gloria": "gloria", "mgca": "mgca", "biovil": "biovil",
                 "open_clip": "open_clip"}
# Where the formats without a vocabulary of their own get theirs (named in the error).
TOKENIZER_HINT = {
    "gloria": "Bio_ClinicalBERT's vocab.txt (Hugging Face emilyalsentzer/Bio_ClinicalBERT)",
    "mgca": "Bio_ClinicalBERT's vocab.txt (Hugging Face emilyalsentzer/Bio_ClinicalBERT)",
    "open_clip": "the text tower's vocab.txt (BiomedCLIP: PubMedBERT's, Hugging Face "
                 "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract)",
}


def convert(fmt: str, path: str | pathlib.Path, **options: Any) -> common.Converted:
  if fmt not in FORMATS:
    raise SourceError(f"--format={fmt!r} is not known; use one of {', '.join(FORMATS)}")
  options = {k: v for k, v in options.items() if v is not None}
  accepted = [k for k, p in inspect.signature(FORMATS[fmt]).parameters.items()
              if p.kind == inspect.Parameter.KEYWORD_ONLY]
  unknown = [k for k in options if k not in accepted]
  if unknown:
    takes = ", ".join(f"--{k}" for k in accepted) or "no options"
    raise SourceError(f"--{unknown[0]}={options[unknown[0]]!r} is not an option of "
                      f"--format={fmt} (it takes {takes}); leave it out")
  try:
    return FORMATS[fmt](path, **options)
  except SourceError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Any other failure while reading a source is the importer's error, never a traceback.
    where = f" at {e.args[0]!r}" if isinstance(e, KeyError) and e.args else ""
    raise SourceError(f"{path}: reading it as --format={fmt} failed{where} "
                      f"({type(e).__name__}: {str(e).strip()[:300] or repr(e)}); this is not the "
                      f"file layout the {fmt} importer was written for (docs/"
                      "released_checkpoints.md lists it)") from None


def _vocab_size(tokenizer: str) -> int:
  from data_pipeline import tokenization  # pylint: disable=import-outside-toplevel
  return int(tokenization.load_tokenizer(tokenizer).get_vocab_size())


def build_config(converted: common.Converted, base: ml_collections.ConfigDict, *,
                 tokenizer: str | None = None) -> ml_collections.ConfigDict:
  """`base` (the method's config) with the importer's overrides, the tokenizer, no training-time
  text weights; checks that the tokenizer's ids fit the imported word-embedding table."""
  config = ml_collections.ConfigDict(base.to_dict())
  overrides = dict(converted.overrides)
  if tokenizer:
    overrides["data.tokenizer"] = str(pathlib.Path(tokenizer).expanduser().absolute())
  elif "data.tokenizer" not in overrides:
    raise SourceError(
        f"--format={converted.format} checkpoints hold no vocabulary: pass --tokenizer=PATH to "
        f"{TOKENIZER_HINT.get(converted.format, 'the vocabulary the model was trained with')} "
        "(a vocab.txt, tokenizer.json or HF folder)")
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  config.train.init_from = ""
  config.train.ema.enabled = False
  if "weights" in config.model.image:  # the import sets every tower weight: no ImageNet start
    config.model.image.weights = "none"
  vocab = int(config.model.text.vocab_size)
  try:
    n = _vocab_size(str(config.data.tokenizer))
  except Exception as e:  # pylint: disable=broad-except
    raise SourceError(f"the tokenizer {config.data.tokenizer!r} cannot be loaded ({e})") from None
  if n > vocab:
    raise SourceError(f"the tokenizer {config.data.tokenizer} has {n} tokens but the imported "
                      f"word-embedding table has {vocab} rows: it is not the model's vocabulary")
  return config
