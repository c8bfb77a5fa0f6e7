"""Retrieval through the runner's feature path: known answers and the text->image sheet."""
import numpy as np

from experiments.configs.base import base_config
from mmrl.evaluation.evaluators import retrieval
from mmrl.viz import sheets


def _colour_at(sheet, images_hw, row, column):
  y, x = sheets.retrieval_cell_origin(images_hw, row, column)
  return tuple(sheet[y + 1, x + 10])  # inside the frame's top edge


def test_identical_embeddings_give_r_at_1_of_one_both_ways_and_a_green_sheet():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(10, 5))
  labels = (rng.random((10, 3)) < 0.5).astype(np.float32)
  f = {"image_embed": emb, "text_embed": emb.copy(), "labels": labels,
       "label_mask": np.ones((10, 3), bool), "image": rng.normal(size=(10, 8, 8, 1)),
       "study_id": np.arange(10, dtype=np.int32)}
  c = base_config()
  c.eval.retrieval.sheet_queries = 3
  c.eval.retrieval.sheet_k = 2
  out, images = retrieval.FeatureRetrievalEvaluator(c)(None, lambda split, n, **kw: f)
  assert out["retrieval/i2t_R@1"] == 1.0 and out["retrieval/t2i_R@1"] == 1.0
  assert out["retrieval/num_pairs"] == 10.0
  sheet = images["retrieval/text_to_image"]
  for row in range(3):  # every first hit is the true pair: green frame; the own image grey
    assert _colour_at(sheet, (8, 8), row, 1) == sheets.GREEN
    assert _colour_at(sheet, (8, 8), row, 0) == sheets.GREY


def test_the_sheet_shows_each_query_text_and_frames_same_study_images_green():
  rng = np.random.default_rng(3)
  report = np.eye(3)[[0, 0, 1, 2]]  # images 0 and 1: one study, one report
  ids = np.zeros((4, 64), np.int32)
  ids[:, :4] = [101, 2540, 2003, 102]  # [CLS] heart is [SEP] in the default vocabulary
  f = {"image_embed": report + 0.01 * rng.normal(size=(4, 3)), "text_embed": report,
       "labels": np.zeros((4, 2), np.float32), "label_mask": np.ones((4, 2), bool),
       "image": rng.normal(size=(4, 8, 8, 1)), "study_id": np.array([9, 9, 4, 5], np.int32),
       "input_ids": ids}
  c = base_config()
  c.eval.retrieval.sheet_queries = 2
  c.eval.retrieval.sheet_k = 2
  ev = retrieval.FeatureRetrievalEvaluator(c)
  assert ev._query_texts(f, 2) == ["heart is", "heart is"]
  out, images = ev(None, lambda split, n, **kw: f)
  assert out["retrieval/i2t_R@1"] == 1.0 and out["retrieval/t2i_R@1"] == 1.0
  sheet = images["retrieval/text_to_image"]
  for row in range(2):  # both images of study 9 are hits for either copy of its report
    assert _colour_at(sheet, (8, 8), row, 1) == sheets.GREEN
    assert _colour_at(sheet, (8, 8), row, 2) == sheets.GREEN
  y, x = sheets.retrieval_cell_origin((8, 8), 0, 0)
  assert (sheet[y:y + 40, 6:x - 6] < 128).any()  # the query's caption is drawn left of it
  assert (sheet[:y - 20] < 128).any()  # and the legend above the rows


def test_top_k_images_matches_a_brute_force_sort():
  rng = np.random.default_rng(1)
  img, txt = rng.normal(size=(7, 4)), rng.normal(size=(3, 4))
  got = retrieval.top_k_images(img, txt, 4)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  for q in range(3):
    scores = [float(unit(txt)[q] @ unit(img)[j]) for j in range(7)]
    assert got[q].tolist() == sorted(range(7), key=lambda j: -scores[j])[:4]


def test_retrieval_sheet_frames_the_true_pair_green_and_others_red():
  images = np.random.default_rng(0).normal(size=(3, 8, 8, 1))
  sheet = sheets.retrieval_sheet(images, np.array([[0, 1], [2, 1]]))
  assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
  # query 0's first hit is its pair (green frame), query 1's first hit is not (red frame)
  assert _colour_at(sheet, (8, 8), 0, 1) == sheets.GREEN
  assert _colour_at(sheet, (8, 8), 1, 1) == sheets.RED
  assert _colour_at(sheet, (8, 8), 1, 2) == sheets.GREEN


def test_segmentation_sheet_has_a_legend_and_the_three_columns():
  rng = np.random.default_rng(1)
  target = np.zeros((2, 8, 8), bool)
  target[:, 2:5, 2:5] = True
  sheet = sheets.segmentation_sheet(rng.normal(size=(2, 8, 8, 1)), target, target,
                                    dice=[1.0, 1.0])
  assert sheet.dtype == np.uint8
  swatches = [tuple(c) for c in sheet[:80].reshape(-1, 3)]
  assert sheets.GREEN in swatches and sheets.RED in swatches  # the legend's colour keys


def test_a_method_without_global_embeddings_is_skipped_not_an_error():
  # local_mi scores pairs with a critic: its features have no image_embed / text_embed.
  rng = np.random.default_rng(2)
  f = {"image_global": rng.normal(size=(4, 5)), "labels": np.zeros((4, 3), np.float32),
       "label_mask": np.ones((4, 3), bool)}
  out, images = retrieval.FeatureRetrievalEvaluator(base_config())(None, lambda split, n, **kw: f)
  assert out == {} and images == {}
