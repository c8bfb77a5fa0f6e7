"""Grid-oracle calibration of the synthetic localisation benchmark: renders phantoms of each
variant (realistic, calibrated) and prints the model-free pointing references
(`mmrl.evaluation.metrics.localisation.baseline_pointing`: random map, best fixed cell, grid oracle) for
several feature-grid sizes, plus the grid oracle per finding.

COMMAND: python -m experiments.oracle_calibration --studies=150 --image_size=192 --grids=3,6,12
EXPECT:  a few seconds to a minute on one core; the numbers of docs/localisation.md
         ("Calibrating the benchmark").
"""
from __future__ import annotations

from absl import app
from absl import flags
import numpy as np

from data_pipeline.synthetic import phantom
from mmrl.evaluation.metrics import localisation as loc

_STUDIES = flags.DEFINE_integer("studies", 150, "studies rendered per variant")
_SIZE = flags.DEFINE_integer("image_size", 192, "evaluation image size (px)")
_GRIDS = flags.DEFINE_list("grids", ["3", "6", "12"], "feature-grid sizes")


def main(argv):
  del argv
  for variant in phantom.VARIANTS:
    boxes, names = [], []
    for i in range(_STUDIES.value):
      rng = np.random.default_rng([0, i])
      findings = phantom.sample_findings(rng, view="PA", variant=variant)
      if not findings:
        continue
      ph = phantom.render_frontal(rng, 256, 232, findings, pixel_spacing_mm=1.6, variant=variant)
      for r in ph.findings:
        x0, y0, x1, y1 = r.box
        boxes.append([x0 / 232, y0 / 256, x1 / 232, y1 / 256])
        names.append(r.finding.name)
    size = _SIZE.value
    gt = np.stack([loc.boxes_to_mask(b, size, size) for b in boxes])
    names = np.array(names)
    print(f"{variant}: {len(boxes)} boxes, mean area {gt.mean():.3f}")
    for g in (int(x) for x in _GRIDS.value):
      ref = loc.baseline_pointing(gt, g, g)
      hits = loc.pointing_game(loc.grid_oracle_maps(gt, g, g), gt)
      per = ", ".join(f"{n} {hits[names == n].mean():.2f}" for n in sorted(set(names)))
      print(f"  grid {g}x{g}: " + ", ".join(f"{k} {v:.3f}" for k, v in ref.items())
            + f"; grid oracle per finding: {per}")


if __name__ == "__main__":
  app.run(main)
