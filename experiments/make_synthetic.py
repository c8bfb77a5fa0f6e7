"""Writes the synthetic chest-radiograph data set (the project's default data) as a MIMIC-CXR tree.

COMMAND: python -m experiments.make_synthetic --out=/data/synthetic_mimic --num_patients=1000 \
           --seed=0 --image_size=512 --workers=8
         then: python -m experiments.convert --layout=mimic --input=/data/synthetic_mimic ...
SMOKE:   python -m experiments.make_synthetic --out=/tmp/synth --num_patients=10 --image_size=256
Thin: parses flags, calls data_pipeline.synthetic.mimic_tree.write_mimic_tree, prints a summary.
Same flags -> byte-identical files. Layout and file formats: data_pipeline/synthetic/mimic_tree.py.
"""
from __future__ import annotations

import json
import time

from absl import app
from absl import flags

from data_pipeline.synthetic import mimic_tree

_OUT = flags.DEFINE_string("out", None, "Output folder (the MIMIC-CXR root).", required=True)
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", 100, "Number of subjects.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; every file is a function of it.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Approximate long side of each image (px).")
_MIN_STUDIES = flags.DEFINE_integer("min_studies", 1, "Fewest studies per subject.")
_MAX_STUDIES = flags.DEFINE_integer("max_studies", 3, "Most studies per subject.")
_LATERAL = flags.DEFINE_float("lateral_fraction", 0.2,
                              "Probability that a study also has a lateral image.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes (output does not depend on it).")


def main(argv):
  del argv
  start = time.perf_counter()
  summary = mimic_tree.write_mimic_tree(
      _OUT.value, num_patients=_NUM_PATIENTS.value,
      studies_per_patient=(_MIN_STUDIES.value, _MAX_STUDIES.value), seed=_SEED.value,
      image_size=_IMAGE_SIZE.value, lateral_fraction=_LATERAL.value, workers=_WORKERS.value)
  seconds = time.perf_counter() - start
  print(json.dumps(summary, indent=1))
  print(f"wrote {summary['num_images']} DICOMs of {summary['num_studies']} studies in "
        f"{seconds:.1f} s ({summary['num_images'] / max(seconds, 1e-9):.1f} images/s)")


if __name__ == "__main__":
  app.run(main)
