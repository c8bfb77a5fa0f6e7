"""Zero-shot evaluator: shipped/replaceable prompt sets; prompts equal to class embeddings."""
import json

import numpy as np
import pytest

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import zero_shot as zs


def test_shipped_prompts_cover_every_chexpert_label_with_both_sides():
  sets = zs.load_prompt_sets()
  assert set(sets) == set(zs.CHEXPERT_LABELS)
  assert all(pos and neg for pos, neg in sets.values())


def test_a_bad_prompt_file_names_the_config_key(tmp_path):
  bad = tmp_path / "p.json"
  bad.write_text(json.dumps({"findings": {"Edema": {"positive": ["edema"]}}}))
  with pytest.raises(ValueError, match="negative"):
    zs.load_prompt_sets(bad)
  with pytest.raises(ValueError, match="config.eval.zero_shot.prompts"):
    zs.load_prompt_sets(tmp_path / "missing.json")


def test_prompts_equal_to_the_class_image_embeddings_give_auroc_and_accuracy_one(tmp_path):
  names = ("Edema", "Cardiomegaly", "Other")
  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps({"findings": {
      "Edema": {"positive": ["edema a", "edema b"], "negative": ["no edema"]},
      "Cardiomegaly": {"positive": ["big heart"], "negative": ["normal heart"]},
      "Unknown": {"positive": ["x"], "negative": ["y"]}}}))  # not in the vocabulary: skipped
  c = base_config()
  c.eval.zero_shot.prompts = str(prompts)
  ev = zs.ZeroShotEvaluator(c, names)
  assert ev.findings == ["Edema", "Cardiomegaly"]

  basis = np.eye(4)
  text = {"edema a": basis[0], "edema b": basis[0], "no edema": -basis[0],
          "big heart": basis[1], "normal heart": -basis[1]}
  rng = np.random.default_rng(0)
  labels = (rng.random((20, 3)) < 0.5).astype(np.float32)
  labels[0, :2], labels[1, :2] = 1, 0
  # Each image embedding points along its positive classes' prompt vectors, away from negatives.
  image = np.where(labels[:, :2] > 0, 1.0, -1.0) @ basis[:2] + 0.01 * rng.normal(size=(20, 4))
  labels[2, 0] = -1  # uncertain: left out, whatever its score
  image[2, 0] = -image[2, 0]  # scored wrong on Edema only
  feats = {"image_embed": image, "labels": labels, "label_mask": np.ones((20, 3), bool)}
  out, images = ev(None, lambda split, n: feats, lambda texts: np.stack([text[t] for t in texts]))
  assert images == {}
  assert out["zero_shot/auc/Edema"] == 1.0 and out["zero_shot/auc/Cardiomegaly"] == 1.0
  assert out["zero_shot/mean_auc"] == 1.0 and out["zero_shot/mean_accuracy"] == 1.0


def test_accuracy_counts_threshold_half_on_known_entries_only():
  scores = np.array([[0.9], [0.4], [0.6], [0.1]])
  pos = np.array([[True], [True], [False], [False]])
  known = np.array([[True], [True], [True], [False]])
  out = zs.zero_shot_accuracy(scores, pos, known, ("a",))
  assert out["zero_shot/accuracy/a"] == pytest.approx(1 / 3)
