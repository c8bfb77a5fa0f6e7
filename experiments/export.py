"""Exports a run's trained encoders: image tower (+ projection) as safetensors, text tower as a
Hugging Face BertModel folder, plus encoder_config.json and preprocessing.json (docs/export.md).

COMMAND: python -m experiments.export --checkpoint=runs/demo --output=exports/demo
         python -m experiments.export --checkpoint=runs/convirt --output=exports/convirt \
           --towers=image --projection=no --step=20000
USE:     import mmrl; encoder = mmrl.load_encoder("exports/demo"); embeddings = encoder(images)
         transformers.BertModel.from_pretrained("exports/demo/text_encoder")
Thin: parses flags and calls mmrl.export.export_run.
"""
from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]); default: the run's own config.json.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Run directory of experiments.pretrain (its --workdir).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the export to.")
_TOWERS = flags.DEFINE_list("towers", ["image", "text"], "Which towers: image, text.")
_PROJECTION = flags.DEFINE_enum(
    "projection", "auto", ["auto", "yes", "no"],
    "Include the image projection head: auto = when the method's image embedding is that head "
    "on the tower's global feature; yes = require it; no = tower only.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  del argv
  # Orbax logs every file it reads (and a harmless metadata warning for raw restores).
  logging.getLogger("absl").setLevel(logging.ERROR)
  from mmrl import export  # pylint: disable=g-import-not-at-top
  try:
    info = export.export_run(_CHECKPOINT.value, _OUTPUT.value, config=_CONFIG.value,
                             towers=tuple(_TOWERS.value), projection=_PROJECTION.value,
                             step=_STEP.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"export: {e}")
  image = info.get("image")
  print(f"exported step {info['source']['step']} of {info['source']['run_dir']} "
        f"({info['source']['method']}) to {_OUTPUT.value}")
  if image:
    head = (f"+ {image['projection']['name']} -> {image['embedding_dim']}-d normalised embedding"
            if image["projection"] else f"tower global feature ({image['embedding_dim']}-d)"
            + (f"; no projection: {image['projection_note']}" if image["projection_note"] else ""))
    print(f"  image: {image['tower']} {head}; local grid {image['grid']}")
    print(f"         mmrl.load_encoder({_OUTPUT.value!r})")
  if "text" in info:
    print(f"  text:  {info['text']['folder']}/ (BertModel, {info['text']['num_layers']} layers, "
          f"{info['text']['hidden_size']}-d; global_pool {info['text']['global_pool']})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "output"])
  app.run(main)
