"""The grounding evaluator pairs report / templated sentences with their boxes and scores the
method's own maps (a tiny LoVT), with every number finite and the pairs counted."""
from __future__ import annotations

import importlib

import jax
import numpy as np

from data_pipeline import tokenization
from data_pipeline.record_spec import CHEXPERT_LABELS
from mmrl.evaluation.evaluators import grounding
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import state as state_lib

REPORTS = [["There is a nodule in the right upper zone.", "No pneumothorax."],
           ["The lungs are clear."]] * 4


def _batch(config):
  c = config.data
  tok = tokenization.ReportTokenizer(str(c.tokenizer))
  enc = tok.encode_batch(REPORTS, int(c.max_tokens), int(c.max_sentences))
  b, s = len(REPORTS), int(c.max_sentences)
  batch = {k: v.astype(np.int32) for k, v in enc.items()}
  sentence_mask = np.zeros((b, s), bool)
  for i, r in enumerate(REPORTS):
    sentence_mask[i, :len(r)] = True
  boxes = np.zeros((b, 2, 4), np.float32)
  box_mask = np.zeros((b, 2), bool)
  boxes[0::2, 0] = [0.1, 0.1, 0.4, 0.3]     # the nodule's box on the rows that report it
  box_mask[0::2, 0] = True
  batch.update(image=np.random.default_rng(0).normal(
      size=(b, c.image_size, c.image_size, 1)).astype(np.float32),
               sentence_mask=sentence_mask, valid=np.ones(b, bool), boxes=boxes,
               box_labels=np.full((b, 2), CHEXPERT_LABELS.index("Lung Lesion"), np.int32),
               box_mask=box_mask)
  return batch


def test_grounding_scores_each_finding_sentence_and_each_templated_box():
  config = importlib.import_module("experiments.configs.lovt").get_config("tiny")
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  ev = grounding.GroundingEvaluator(config, mesh, shardings, label_names=CHEXPERT_LABELS)
  out, _ = ev(state, lambda: [_batch(config)])
  assert out["grounding/synthetic/pairs"] == 4            # 'nodule' sentences; 'no ...' skipped
  assert out["grounding/synthetic_templated/pairs"] == 4  # one templated sentence per box
  for key in ("cnr", "miou", "pointing", "gt_area"):
    assert np.isfinite(out[f"grounding/synthetic/{key}"])
  assert 0.0 <= out["grounding/synthetic/miou"] <= 1.0
