"""Retrieval through the runner's feature path: known answers and the text->image sheet."""
import numpy as np

from experiments.configs.base import base_config
from mmrl.evaluation import retrieval
from mmrl.evaluation import sheets


def test_identical_embeddings_give_r_at_1_of_one_both_ways_and_a_green_sheet():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(10, 5))
  labels = (rng.random((10, 3)) < 0.5).astype(np.float32)
  f = {"image_embed": emb, "text_embed": emb.copy(), "labels": labels,
       "label_mask": np.ones((10, 3), bool), "image": rng.normal(size=(10, 8, 8, 1))}
  c = base_config()
  c.eval.retrieval.sheet_queries = 3
  c.eval.retrieval.sheet_k = 2
  out, images = retrieval.FeatureRetrievalEvaluator(c)(None, lambda split, n, **kw: f)
  assert out["retrieval/i2t_R@1"] == 1.0 and out["retrieval/t2i_R@1"] == 1.0
  assert out["retrieval/num_pairs"] == 10.0
  sheet = images["retrieval/text_to_image"]
  assert sheet.shape == (3 * 12 + 4, 3 * 12 + 8, 3)
  for row in range(3):  # every first hit is the true pair: green frame
    assert tuple(sheet[4 + 12 * row, 20 + 4]) == sheets.GREEN


def test_top_k_images_matches_a_brute_force_sort():
  rng = np.random.default_rng(1)
  img, txt = rng.normal(size=(7, 4)), rng.normal(size=(3, 4))
  got = retrieval.top_k_images(img, txt, 4)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  for q in range(3):
    scores = [float(unit(txt)[q] @ unit(img)[j]) for j in range(7)]
    assert got[q].tolist() == sorted(range(7), key=lambda j: -scores[j])[:4]


def test_retrieval_sheet_frames_the_true_pair_green():
  images = np.random.default_rng(0).normal(size=(3, 8, 8, 1))
  sheet = sheets.retrieval_sheet(images, np.array([[0, 1], [2, 1]]))
  assert sheet.dtype == np.uint8 and sheet.shape == (2 * 12 + 4, 3 * 12 + 8, 3)
  # query 0's first hit is its pair (green frame), query 1's first hit is not (red frame)
  assert tuple(sheet[4, 20 + 4]) == sheets.GREEN and tuple(sheet[16, 20 + 4]) == sheets.RED


def test_a_method_without_global_embeddings_is_skipped_not_an_error():
  # local_mi scores pairs with a critic: its features have no image_embed / text_embed.
  rng = np.random.default_rng(2)
  f = {"image_global": rng.normal(size=(4, 5)), "labels": np.zeros((4, 3), np.float32),
       "label_mask": np.ones((4, 3), bool)}
  out, images = retrieval.FeatureRetrievalEvaluator(base_config())(None, lambda split, n, **kw: f)
  assert out == {} and images == {}
