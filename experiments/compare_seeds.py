"""Paired per-seed comparison of two `experiments.evaluate` JSON outputs (A vs B).

python -m experiments.compare_seeds --a=runs/det/synth_pretrained.json \
    --b=runs/det/synth_random.json [--metrics=map,map@0.5,froc,macro_auroc]
Prints mean ± sample std (n seeds) of A and B, the mean paired difference A - B, the paired
t-test's t and two-sided p, and whether the difference exceeds the larger seed spread.
"""
from __future__ import annotations

import json

from absl import app
from absl import flags

_A = flags.DEFINE_string("a", None, "Evaluation JSON of A (e.g. pretrained).")
_B = flags.DEFINE_string("b", None, "Evaluation JSON of B (e.g. random init).")
_METRICS = flags.DEFINE_list("metrics", ["map", "map@0.5", "froc", "macro_auroc"],
                             "Metric names (last part of the key) to compare.")
flags.mark_flags_as_required(["a", "b"])


def main(argv):
  del argv
  from mmrl.evaluation.metrics import seed_comparison  # pylint: disable=g-import-not-at-top
  load = lambda p: json.load(open(p))["metrics"]
  rows = [r for r in seed_comparison.compare(load(_A.value), load(_B.value))
          if r["metric"] in _METRICS.value]
  print(f"A = {_A.value}\nB = {_B.value}\n")
  print("| tag | metric | A mean ± std | B mean ± std | n | A - B | t | p | A vs B | > spread |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['tag']} | {r['metric']} | {r['mean_a']:.4f} ± {r['std_a']:.4f} | "
          f"{r['mean_b']:.4f} ± {r['std_b']:.4f} | {int(r['n'])} | {r['mean_diff']:+.4f} | "
          f"{r['t']:.2f} | {r['p']:.3g} | {r['verdict']} | "
          f"{'yes' if r['beyond_spread'] else 'no'} |")


if __name__ == "__main__":
  app.run(main)
