"""Retrieval metrics against a brute-force reference, with one or several images per study."""
import math

import numpy as np
import pytest

from mmrl.evaluation.evaluators.retrieval import retrieval_metrics


def _reference_recall(img, txt, k):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  hits = 0
  for i in range(len(img)):
    scores = [float(img[i] @ txt[j]) for j in range(len(txt))]
    better = sum(1 for j, s in enumerate(scores) if j != i and s >= scores[i])
    hits += better < k
  return hits / len(img)


def test_recall_at_k_matches_a_brute_force_reference():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(40, 8))
  txt = img + rng.normal(scale=1.5, size=(40, 8))
  m = retrieval_metrics(img, txt)
  for k in (1, 5, 10):
    assert m[f"retrieval/i2t_R@{k}"] == pytest.approx(_reference_recall(img, txt, k))
    assert m[f"retrieval/t2i_R@{k}"] == pytest.approx(_reference_recall(txt, img, k))


def test_identical_embeddings_retrieve_perfectly():
  x = np.random.default_rng(1).normal(size=(16, 4))
  m = retrieval_metrics(x, x)
  assert m["retrieval/i2t_R@1"] == 1.0 and m["retrieval/t2i_median_rank"] == 1.0


def test_constant_embeddings_score_zero_recall_at_1_not_perfect():
  x = np.ones((10, 3))
  m = retrieval_metrics(x, x)
  assert m["retrieval/i2t_R@1"] == 0.0
  assert m["retrieval/chance_R@1"] == pytest.approx(0.1)


def test_metrics_on_the_valid_rows_of_padded_batches():
  # The evaluators score the valid rows of padded batches (features.extract_features drops the
  # rest); padding rows carry a copy of row 0: if they were kept, row 0 would tie and lose R@1.
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(6, 4))
  batches = [{"valid": np.array([True, True, True, True]), "idx": np.arange(4)},
             {"valid": np.array([True, True, False, False]), "idx": np.array([4, 5, 0, 0])}]
  rows = np.concatenate([b["idx"][b["valid"]] for b in batches])
  m = retrieval_metrics(emb[rows], emb[rows])
  assert m["retrieval/num_pairs"] == 6.0
  assert m["retrieval/i2t_R@1"] == 1.0
  padded = np.concatenate([b["idx"] for b in batches])
  assert retrieval_metrics(emb[padded], emb[padded])["retrieval/i2t_R@1"] < 1.0


def _reference_label_p1(scores, labels):
  hits = 0
  n = len(scores)
  for i in range(n):
    best = max((j for j in range(n) if j != i), key=lambda j: scores[i][j])
    hits += all(labels[i] == labels[best])
  return hits / n


def test_label_precision_at_1_matches_a_loop_reference_and_its_chance_level():
  rng = np.random.default_rng(3)
  labels = rng.random((30, 3)) < 0.4
  img = labels + rng.normal(scale=0.8, size=(30, 3))
  txt = labels + rng.normal(scale=0.8, size=(30, 3))
  m = retrieval_metrics(img, txt, labels=labels)
  imgn = img / np.linalg.norm(img, axis=1, keepdims=True)
  txtn = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  assert m["retrieval/i2t_label_P@1"] == pytest.approx(_reference_label_p1(imgn @ txtn.T, labels))
  assert m["retrieval/t2i_label_P@1"] == pytest.approx(_reference_label_p1(txtn @ imgn.T, labels))
  same = sum(all(labels[i] == labels[j]) for i in range(30) for j in range(30) if i != j)
  assert m["retrieval/chance_label_P@1"] == pytest.approx(same / (30 * 29))


def test_label_precision_from_the_positive_findings_of_labels_and_mask():
  labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
  emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
  label_mask = np.ones((4, 2), bool)
  # The positive findings, as the retrieval evaluator derives them from labels/label_mask.
  m = retrieval_metrics(emb, emb, labels=(labels == 1) & label_mask)
  assert m["retrieval/i2t_label_P@1"] == 1.0
  assert m["retrieval/chance_label_P@1"] == pytest.approx(4 / 12)


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_grouped(scores, groups, k):
  """Per query: sort every item by score (best first), negatives ahead of positives on a tie;
  a hit when the first positive sits in the first k places."""
  hits, ranks = 0, []
  for i in range(len(scores)):
    order = sorted(range(len(groups)), key=lambda j: (-scores[i][j], groups[j] == groups[i]))
    first = next(p for p, j in enumerate(order) if groups[j] == groups[i])
    hits += first < k
    ranks.append(first + 1)
  return hits / len(scores), float(np.median(ranks))


def test_two_images_of_one_study_both_retrieve_their_shared_report_at_rank_1():
  # 4 pairs; images 0 and 1 come from one study, so they carry the same report (texts 0 == 1).
  report = np.eye(3)[[0, 0, 1, 2]]
  image = report.copy()  # perfect embeddings: every image equals its report
  studies = np.array([7, 7, 8, 9])
  m = retrieval_metrics(image, report, groups=studies)
  assert m["retrieval/i2t_R@1"] == 1.0 and m["retrieval/t2i_R@1"] == 1.0
  assert m["retrieval/num_studies"] == 3.0
  # Without the study ids the tie with the other image's identical report counts as a miss.
  assert retrieval_metrics(image, report)["retrieval/i2t_R@1"] == 0.5


def test_grouped_recall_and_median_rank_match_a_sorting_reference():
  rng = np.random.default_rng(4)
  groups = np.repeat(np.arange(14), rng.integers(1, 4, size=14))
  n = len(groups)
  report = rng.normal(size=(14, 6))[groups]  # a study's images share its report
  image = report + rng.normal(scale=1.2, size=(n, 6))
  m = retrieval_metrics(image, report, groups=groups)
  scores = _unit(image) @ _unit(report).T
  for k in (1, 5, 10):
    for name, s in (("i2t", scores), ("t2i", scores.T)):
      recall, median = _reference_grouped(s.tolist(), groups.tolist(), k)
      assert m[f"retrieval/{name}_R@{k}"] == pytest.approx(recall), (name, k)
      assert m[f"retrieval/{name}_median_rank"] == pytest.approx(median)
    m_sizes = [int(np.sum(groups == g)) for g in groups]
    chance = np.mean([1 - math.comb(n - s_, k) / math.comb(n, k) for s_ in m_sizes])
    assert m[f"retrieval/chance_R@{k}"] == pytest.approx(chance)


def test_a_constant_score_is_still_a_miss_when_studies_have_several_images():
  m = retrieval_metrics(np.ones((6, 3)), np.ones((6, 3)), groups=np.array([0, 0, 1, 1, 2, 2]))
  assert m["retrieval/i2t_R@1"] == 0.0 and m["retrieval/t2i_R@1"] == 0.0


def test_label_precision_at_1_skips_the_whole_study_of_the_query():
  # Image 0's best other item is text 1, the same study's (identical) report: not a finding match.
  report = np.array([[1.0, 0, 0], [1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])
  labels = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], bool)
  m = retrieval_metrics(report, report, groups=np.array([3, 3, 4, 5]), labels=labels)
  scores = _unit(report) @ _unit(report).T
  groups = [3, 3, 4, 5]
  expected = np.mean([all(labels[i] == labels[max((j for j in range(4) if groups[j] != groups[i]),
                                                  key=lambda j: scores[i][j])])
                      for i in range(4)])
  assert m["retrieval/i2t_label_P@1"] == pytest.approx(expected)
  assert m["retrieval/i2t_label_P@1"] < 1.0


def test_positives_are_grouped_by_study_ids():
  emb = np.eye(3)[[0, 0, 1, 2]]
  m = retrieval_metrics(emb, emb, groups=np.array([5, 5, 6, 7], np.int32))
  assert m["retrieval/i2t_R@1"] == 1.0 and m["retrieval/t2i_R@1"] == 1.0
