"""Imports a released GLoRIA / MGCA / BioViL / open_clip (BiomedCLIP) checkpoint as an mmrl run
directory.

python -m experiments.import_checkpoint --format=gloria --input=chexpert_resnet50.ckpt \
    --tokenizer=/models/Bio_ClinicalBERT --output=runs/gloria_released
python -m experiments.import_checkpoint --format=mgca --input=vit_base.ckpt \
    --tokenizer=/models/Bio_ClinicalBERT --output=runs/mgca_vit_released
python -m experiments.import_checkpoint --format=biovil \
    --input=/models/BiomedVLP-CXR-BERT-specialized --output=runs/biovil_released
python -m experiments.import_checkpoint --format=open_clip \
    --input=/models/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 \
    --tokenizer=/models/BiomedNLP-BiomedBERT-base-uncased-abstract/vocab.txt \
    --output=runs/biomedclip_released
Then: python -m experiments.evaluate --config=experiments/configs/from_run.py:runs/gloria_released \
    --config.data.dataset_dir=/data/shards --checkpoint=runs/gloria_released
MGCA runs as its released forward by default (every text token at position 0; --positions=arange
for 0..L-1). Writes <output>/{config.json, checkpoints/0, import_report.json}; nothing on failure; an --output
that holds anything is refused unless --overwrite; an option the format does not take is an
error. Formats, sources and what is kept / dropped:
docs/released_checkpoints.md. Thin: mmrl.train.released_import does the work.
"""
from __future__ import annotations

import importlib
import logging
import sys

from absl import app
from absl import flags

_FORMAT = flags.DEFINE_enum("format", None, ["gloria", "mgca", "biovil", "open_clip"],
                             "Source layout.")
_INPUT = flags.DEFINE_string("input", None, "The checkpoint file (gloria, mgca) or the Hugging "
                             "Face folder (biovil, open_clip).")
_OUTPUT = flags.DEFINE_string("output", None, "Run directory to write (runs/NAME).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Vocabulary the model was trained with "
                                 "(vocab.txt / tokenizer.json / HF folder). Required for gloria "
                                 "and mgca (Bio_ClinicalBERT) and open_clip (BiomedCLIP: "
                                 "PubMedBERT) unless --input holds a vocab.txt; biovil uses "
                                 "--input's.")
_IMAGE_WEIGHTS = flags.DEFINE_string("image_weights", None, "biovil: the image model's .pt if "
                                     "it is not in --input.")
_TEXT_HEADS = flags.DEFINE_integer("text_num_heads", None, "gloria/mgca/open_clip: BERT attention "
                                   "heads (not stored in the tensors; default hidden / 64; "
                                   "open_clip reads hf_model_name's config.json when local).")
_POSITIONS = flags.DEFINE_enum("positions", None, ["authors", "arange"], "mgca: text positions. "
                               "'authors' (default): every token at position 0, as MGCA's "
                               "released forward computes; 'arange': 0..L-1.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  from mmrl.models.released import importer  # pylint: disable=g-import-not-at-top
  from mmrl.train import released_import  # pylint: disable=g-import-not-at-top
  from mmrl.models.released.source import SourceError  # pylint: disable=g-import-not-at-top
  fmt = _FORMAT.value
  base = importlib.import_module(f"experiments.configs.{importer.METHOD_CONFIG[fmt]}").get_config()
  try:
    out, report = released_import.import_checkpoint(
        fmt, _INPUT.value, _OUTPUT.value, base, tokenizer=_TOKENIZER.value,
        overwrite=_OVERWRITE.value, image_weights=_IMAGE_WEIGHTS.value,
        text_num_heads=_TEXT_HEADS.value, positions=_POSITIONS.value)
  except (SourceError, released_import.OutputExistsError) as e:
    sys.exit(f"import_checkpoint: {e}")
  c = report["counts"]
  print(f"imported {fmt} {_INPUT.value} -> {out}")
  print(f"  tensors: {c['tensors']} in the source, {c['imported']} imported "
        f"({c['imported_values']:,} values), {c['dropped']} dropped:")
  for reason, n in report["dropped_by_reason"].items():
    print(f"    {n:5d}  {reason}")
  for note in report["notes"]:
    print(f"  note: {note}")
  print(f"  report: {out / 'import_report.json'}")
  print(f"  evaluate: python -m experiments.evaluate --config=experiments/configs/from_run.py:{out}"
        f" --config.data.dataset_dir=DATA --checkpoint={out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["format", "input", "output"])
  app.run(main)
