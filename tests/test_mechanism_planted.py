"""Mechanism test: each method's heads, trained alone on planted features, point with their map.

The towers are replaced by planted outputs (tests/planted_features.py: a finding's cells carry
its class code, the finding word carries a rotation of it, no positional signal, random places);
only the method's heads are trained with its own loss (tests/mechanism_harness.py), and its own
read-out (`alignment_maps.method_maps`, the benchmark's) is scored with the pointing game against
the grid oracle (`localisation.baseline_pointing`). Figures and causes: docs/localisation.md,
"Mechanism test: planted features". One seed per method in CI; the margins come from 3 seeds.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests import mechanism_harness as h
from tests import planted_features as pf

STEPS = 200


def test_planted_grid_oracle_points_at_every_finding():
  world = pf.make_world(0)
  batch, truth = pf.planted_batch(world, np.random.default_rng(0), 8)
  boxes = [t[1] for row in truth for t in row if t is not None]
  from mmrl.evaluation.metrics import localisation  # pylint: disable=g-import-not-at-top
  assert localisation.baseline_pointing(pf.box_masks(boxes, world.grid), 8, 8)[
      "grid_oracle/pointing"] == 1.0
  # the finding cells carry the code of the sentence's finding word (cosine well above chance)
  k = [t[0] for t in truth[0] if t is not None][0]
  r0, c0, r1, c1 = [t[1] for t in truth[0] if t is not None][0]
  cell = batch["image_local"][0].reshape(8, 8, -1)[r0, c0] - batch["image_local"][0].mean(0)
  cos = cell @ world.codes[k] / np.linalg.norm(cell)
  assert cos > 0.5


def test_planted_query_rows_are_one_sentence_reports_of_the_same_images():
  world = pf.make_world(1)
  rng = np.random.default_rng(1)
  batch, truth = pf.planted_batch(world, rng, 4)
  q, items = pf.query_batch(world, rng, batch, truth)
  assert len(items) == sum(t is not None for row in truth for t in row)
  assert q["sentence_mask"].sum(axis=1).tolist() == [1] * len(items)
  assert q["image_local"].shape[0] == len(items)


def test_gloria_heads_point_at_planted_findings_with_their_own_map():
  # 3 seeds: report 0.980 +- 0.024 of the grid oracle (min 0.952); 0.8 leaves > 6 std margin.
  out = h.run("gloria", 0, steps=STEPS)
  assert out["report/ratio"] >= 0.8, out
  assert out["query/ratio"] >= 0.8, out


def test_lovt_one_sentence_queries_point_like_the_report_sentences():
  # The query (a one-sentence report) is not the cause of LoVT's misses: same pointing +- 0.05.
  out = h.run("lovt", 0, steps=STEPS)
  assert abs(out["query/pointing"] - out["report/pointing"]) <= 0.05, out


def test_lovt_misses_whole_finding_classes_its_intra_report_loss_allows_it():
  # LoVT's local losses contrast a sentence only with the other sentences of its own report, so
  # a class may attend any cell that differs from its report-mates': seed 0 points at mass and
  # consolidation (>= 0.9) and at nodule / atelectasis never (docs/localisation.md).
  out = h.run("lovt", 0, steps=STEPS)
  per_class = [v for k, v in out.items() if k.startswith("report/pointing_")]
  assert max(per_class) >= 0.9 and min(per_class) <= 0.1, out


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="below 0.8 of the grid oracle on planted features "
                   "(docs/localisation.md, Mechanism test: planted features)")
@pytest.mark.parametrize("method", ["lovt", "mgca", "lrclr", "place", "local_mi"])
def test_method_heads_point_at_planted_findings_with_their_own_map(method):
  out = h.run(method, 0, steps=STEPS)
  assert out["report/ratio"] >= 0.8, out
